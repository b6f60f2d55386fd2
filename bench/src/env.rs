//! What a benchmark runs in: a database, a NATS prefix and a master key of
//! its own, tenants made through the manifest path, and the platform as
//! child processes of the built `alphadome` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_core::bus::{Bus, StreamKind};
use alphadome_core::crypto::Keyring;
use alphadome_testkit::fixtures::{keyring, nats_url, TestDb, TestNats};
use alphadome_testkit::graph::GraphStandIn;
use alphadome_testkit::load::{self, LoadTenant};
use alphadome_testkit::proc::{platform_env, Proc};
use anyhow::{bail, Context as _};
use tokio_util::sync::CancellationToken;

/// A database, a NATS prefix and a key of the run's own.
pub(crate) struct Env {
    pub(crate) db: TestDb,
    pub(crate) nats: TestNats,
    pub(crate) key: String,
    pub(crate) keyring: Arc<Keyring>,
}

impl Env {
    pub(crate) async fn new() -> Self {
        let (key, keyring) = keyring();
        Self {
            db: TestDb::migrated().await,
            nats: TestNats::new(),
            key,
            keyring,
        }
    }

    /// The platform's environment with the production defaults for sending
    /// (the tests shorten the Graph time-out to 1 s to run quickly; on two
    /// cores shared by everything a benchmark saturates, the stand-in can
    /// stall that long, and a timed-out send that went through is sent
    /// again when no status webhook shows it: a benchmark artefact, not
    /// what a deployment does).
    pub(crate) fn env(&self, graph_url: &str) -> Vec<(String, String)> {
        platform_env(
            &self.db.url,
            &nats_url(),
            &self.nats.prefix,
            &self.key,
            graph_url,
        )
        .into_iter()
        .filter(|(k, _)| {
            k != "ALPHADOME_SEND_TIMEOUT_MS" && k != "ALPHADOME_SEND_RECONCILE_WAIT_MS"
        })
        .collect()
    }

    pub(crate) async fn tenants(&self, n: usize, faq: usize) -> anyhow::Result<Vec<LoadTenant>> {
        let t0 = Instant::now();
        let t = load::create_tenants(&self.db.pool, &self.keyring, n, faq, 4)
            .await
            .map_err(anyhow::Error::msg)?;
        eprintln!(
            "  ({n} tenants with {faq} FAQ entries each created in {:.1?})",
            t0.elapsed()
        );
        Ok(t)
    }
}

pub(crate) fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("no directory for the executable")?
        .to_owned())
}

pub(crate) fn alphadome_bin() -> anyhow::Result<PathBuf> {
    let p = bin_dir()?.join("alphadome");
    if !p.exists() {
        bail!(
            "{} is missing: build it with `cargo build --bins` (add --release for real numbers)",
            p.display()
        );
    }
    Ok(p)
}

pub(crate) async fn start(args: &[&str], env: Vec<(String, String)>) -> anyhow::Result<Proc> {
    Proc::start(&alphadome_bin()?, args, env)
        .await
        .map_err(anyhow::Error::msg)
}

pub(crate) fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

pub(crate) async fn count_logs(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_message_logs")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until `bot_message_logs` holds at least `want` rows or `deadline`
/// passes, and returns the count. The table is counted only when the
/// logger's consumer has nothing pending and nothing unacknowledged (the
/// logger acks after its commit): a `count(*)` every 100 ms would scan the
/// growing table ten times a second and take the database's time from the
/// logger being measured.
pub(crate) async fn wait_for_logs(
    pool: &sqlx::PgPool,
    bus: &Bus,
    want: i64,
    deadline: Instant,
) -> anyhow::Result<i64> {
    let stream = bus.js.get_stream(bus.stream_name(StreamKind::Log)).await?;
    // The logger creates its consumer when it starts.
    let mut consumer = None;
    loop {
        if consumer.is_none() {
            consumer = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("logger")
                .await
                .ok();
        }
        let drained = match consumer.as_mut() {
            Some(c) => {
                let info = c.info().await?;
                info.num_pending == 0 && info.num_ack_pending == 0
            }
            None => false,
        };
        if drained || Instant::now() >= deadline {
            let n = count_logs(pool).await?;
            if n >= want || Instant::now() >= deadline {
                return Ok(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples a process's resident memory every 50 ms; returns the peak (KiB).
pub(crate) fn sample_rss(
    pid: Option<u32>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        let Some(pid) = pid else { return 0 };
        while !stop.is_cancelled() {
            if let Ok(s) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await {
                if let Some(v) = s
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak = peak.max(v);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

/// Starts the Graph API stand-in on a thread and runtime of its own, so
/// that the load generator, which shares this process, never delays its
/// answers: a stand-in answering late makes the sender time out, and a
/// send that timed out is sent again unless a status webhook shows it went
/// out (at 50,000 messages flat out, that happened to dozens of replies).
pub(crate) async fn graph_on_own_thread(
    stop: CancellationToken,
) -> anyhow::Result<(Arc<GraphStandIn>, String)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("graph-stand-in".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("stand-in runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let started =
                    GraphStandIn::start(SocketAddr::from(([127, 0, 0, 1], 0)), stop.clone())
                        .await
                        .map_err(anyhow::Error::from);
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    stop.cancelled().await;
                }
            });
        })
        .context("starting the stand-in's thread")?;
    rx.await.context("the stand-in's thread ended")?
}
