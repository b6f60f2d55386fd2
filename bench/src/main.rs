//! `alphadome-bench`: the platform's benchmarks, each against the real
//! services (child processes of the built `alphadome` binary), the real
//! Postgres and the real NATS, with the load generator and a Graph API
//! stand-in in this process. `all` runs every benchmark and the ceilings
//! (bare HTTP handler, acknowledged JetStream publishes, COPY, the
//! database's and the broker's work per message, and the pipeline's floor:
//! those three kinds of work at once) in one go, so the ratios hold on a
//! noisy machine. `--smoke` runs each one small and fails on any lost or
//! doubled reply: CI runs that.
//!
//! Build with `cargo build --release --bins` and run
//! `target/release/alphadome-bench all`; see docs/benchmarks.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_core::bus::{Bus, StreamKind};
use alphadome_core::crypto::Keyring;
use alphadome_core::events::v1::{Direction, InboundMessage, LogEvent};
use alphadome_core::events::Message as _;
use alphadome_testkit::fixtures::{keyring, nats_url, TestDb, TestNats};
use alphadome_testkit::graph::GraphStandIn;
use alphadome_testkit::load::{self, LoadTenant, Pace, Percentiles};
use alphadome_testkit::proc::{platform_env, Proc};
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "alphadome-bench",
    about = "Alphadome's benchmarks (see docs/benchmarks.md)"
)]
struct Cli {
    /// Small runs that only check the benchmarks work (CI).
    #[arg(long, global = true)]
    smoke: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything below, in one run, with the ratios to the ceilings.
    All,
    /// The pipeline's floor alone: the database's work, the broker's
    /// traffic and the HTTP requests of `messages` messages, all at once.
    Floor {
        #[arg(long, default_value_t = 30_000)]
        messages: usize,
    },
    /// The ceilings: bare HTTP handler, acked JetStream publishes and the
    /// two added, COPY, the database's and the broker's work per message,
    /// the floor.
    Ceilings {
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Ingress alone: signed webhooks per second, each acked by JetStream.
    Ingress {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        tenants: usize,
    },
    /// The whole pipeline on the FAQ path: webhook to reply and log rows.
    Pipeline {
        /// Messages per second; omit for as fast as it goes (sustained rate).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 30_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Status webhooks sent back for every reply (0 to 3).
        #[arg(long, default_value_t = 0)]
        statuses: usize,
        #[arg(long, default_value_t = 256)]
        connections: usize,
    },
    /// The logger alone: rows per second into bot_message_logs.
    Logger {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
    },
    /// Peak RSS of `alphadome up` serving many tenants.
    Memory {
        #[arg(long, default_value_t = 1_000)]
        tenants: usize,
        #[arg(long, default_value_t = 100)]
        faq: usize,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
    },
    /// Noisy neighbour: the quiet tenants' latency with and without one
    /// tenant flooding at `factor` times their rate.
    Neighbour {
        /// Messages per second of each quiet tenant.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        factor: f64,
        #[arg(long, default_value_t = 9)]
        quiet: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The flooding tenant's messages go to its LLM, which takes this
        /// long to answer (a slow model) instead of to its FAQ.
        #[arg(long)]
        slow_llm_ms: Option<u64>,
    },
    /// A bare axum handler answering 200 (the HTTP ceiling's server).
    #[command(hide = true)]
    BareHttp,
}

/// One measured number.
#[derive(Clone)]
struct Line {
    name: String,
    value: f64,
    unit: &'static str,
    detail: String,
}

impl Line {
    fn new(name: impl Into<String>, value: f64, unit: &'static str, detail: String) -> Self {
        let l = Self {
            name: name.into(),
            value,
            unit,
            detail,
        };
        println!(
            "{:<34} {:>12.1} {:<8} {}",
            l.name, l.value, l.unit, l.detail
        );
        l
    }
}

/// A database, a NATS prefix and a key of the run's own.
struct Env {
    db: TestDb,
    nats: TestNats,
    key: String,
    keyring: Arc<Keyring>,
}

impl Env {
    async fn new() -> Self {
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
    fn env(&self, graph_url: &str) -> Vec<(String, String)> {
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

    async fn tenants(&self, n: usize, faq: usize) -> anyhow::Result<Vec<LoadTenant>> {
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

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("no directory for the executable")?
        .to_owned())
}

fn alphadome_bin() -> anyhow::Result<PathBuf> {
    let p = bin_dir()?.join("alphadome");
    if !p.exists() {
        bail!(
            "{} is missing: build it with `cargo build --bins` (add --release for real numbers)",
            p.display()
        );
    }
    Ok(p)
}

async fn start(args: &[&str], env: Vec<(String, String)>) -> anyhow::Result<Proc> {
    Proc::start(&alphadome_bin()?, args, env)
        .await
        .map_err(anyhow::Error::msg)
}

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn check(smoke: bool, ok: bool, what: &str) -> anyhow::Result<()> {
    if !ok {
        if smoke {
            bail!("smoke check failed: {what}");
        }
        eprintln!("  WARNING: {what}");
    }
    Ok(())
}

// ---------------------------------------------------------------- ceilings

async fn bare_http() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("ALPHADOME_HTTP_ADDR")
        .context("ALPHADOME_HTTP_ADDR")?
        .parse()?;
    let app = axum::Router::new().fallback(|_body: bytes::Bytes| async { "ok" });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// `requests` webhooks to a bare axum handler that answers 200, over
/// `connections` keep-alive connections (the HTTP ceiling). With `part`,
/// it waits at that barrier once its server is up and its requests are
/// made, and runs as one part of the pipeline's floor.
async fn ceiling_http(
    requests: usize,
    connections: usize,
    part: Option<&Barrier>,
) -> anyhow::Result<Line> {
    let exe = std::env::current_exe()?;
    let server = Proc::start(&exe, &["bare-http"], Vec::new())
        .await
        .map_err(anyhow::Error::msg)?;
    let tenants: Vec<LoadTenant> = (0..100).map(load::load_tenant).collect();
    let shots = Arc::new(load::text_shots(&run_id(), &tenants, 1000, requests));
    if let Some(start) = part {
        start.wait().await;
    }
    let sent = load::send(
        server.addr,
        "/webhook",
        shots,
        Pace {
            rate: None,
            connections,
        },
    )
    .await;
    check(
        false,
        sent.accepted() == requests,
        "bare handler refused requests",
    )?;
    Ok(Line::new(
        named(part, "bare axum handler"),
        sent.per_sec(),
        "req/s",
        format!(
            "{} requests, {connections} connections; {}",
            requests,
            Percentiles::of(&sent.post_us)
        ),
    ))
}

fn inbound_payload(seq: usize) -> bytes::Bytes {
    InboundMessage {
        tenant_id: uuid::Uuid::new_v4().to_string(),
        wamid: format!("wamid.ceiling.{seq}"),
        phone_number_id: "900000000000001".into(),
        from: "254700000001".into(),
        profile_name: "Load User".into(),
        kind: 1,
        type_name: "text".into(),
        text: load::customer_text(seq),
        sent_at: 1_700_000_000,
        received_at_ms: 1_700_000_000_000,
        raw_json: load::customer_text(seq),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// Publishes `messages` inbound messages to `key`'s inbound subject, each
/// with its own `Nats-Msg-Id` and acknowledged, `concurrency` at a time.
async fn publish_inbound(
    bus: &Bus,
    key: &str,
    messages: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (bus, next, key) = (bus.clone(), next.clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= messages {
                    return Ok::<(), alphadome_core::bus::BusError>(());
                }
                let subject = bus.subject(StreamKind::Inbound, &key);
                bus.publish(subject, &format!("wamid.{key}.{i}"), inbound_payload(i))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn ceiling_broker(publishes: usize, concurrency: usize) -> anyhow::Result<Line> {
    let nats = TestNats::new();
    let bus = Bus::connect(&nats_url(), &nats.prefix).await?;
    bus.ensure_streams(Duration::from_secs(120)).await?;
    let t0 = Instant::now();
    publish_inbound(&bus, "ceiling", publishes, concurrency).await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Line::new(
        "ceiling: acked JetStream publish",
        publishes as f64 / secs,
        "msg/s",
        format!("{publishes} publishes with Nats-Msg-Id, {concurrency} in flight, async-nats"),
    ))
}

/// Sends `data` (COPY text format) through `sql` (a `COPY ... FROM STDIN`)
/// in 1 MiB chunks; the rows written.
async fn copy_in(conn: &mut sqlx::PgConnection, sql: &str, data: &str) -> anyhow::Result<u64> {
    let mut copy = conn.copy_in_raw(sql).await?;
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    Ok(copy.finish().await?)
}

async fn ceiling_copy(rows: usize) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(10, 0).await?;
    let conns = copy_connections();
    let mut data: Vec<String> = (0..conns)
        .map(|_| String::with_capacity(rows * 200 / conns))
        .collect();
    for i in 0..rows {
        let t = &tenants[i % tenants.len()];
        data[i % conns].push_str(&format!(
            "{}\t2547{:08}\t{}\t{}\twamid.copy.{i}\tf\t{{\"reason\": \"faq_match\"}}\t2026-11-28 12:00:00+00\tin:wamid.copy.{i}\n",
            t.id,
            i % 1000,
            if i % 2 == 0 { "incoming" } else { "outgoing" },
            load::customer_text(i),
        ));
    }
    let t0 = Instant::now();
    let n = copy_at_once(
        &env.db.pool,
        data.into_iter()
            .map(|d| {
                vec![(
                    "COPY alphadome.bot_message_logs (bot_tenant_id, user_phone, direction, message_text, \
                     whatsapp_message_id, ai_processed, metadata, created_at, dedup_key) FROM STDIN",
                    d,
                )]
            })
            .collect(),
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    if n as usize != rows {
        bail!("COPY wrote {n} rows of {rows}");
    }
    Ok(Line::new(
        "ceiling: COPY into bot_message_logs",
        rows as f64 / secs,
        "rows/s",
        format!("{rows} rows, {conns} connections at once, indexes and triggers in place"),
    ))
}

/// Runs each connection's COPYs (statement and data, in order) on a
/// connection of its own, all connections at once; the rows written.
async fn copy_at_once(
    pool: &sqlx::PgPool,
    work: Vec<Vec<(&'static str, String)>>,
) -> anyhow::Result<u64> {
    let tasks: Vec<_> = work
        .into_iter()
        .map(|copies| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut n = 0;
                for (sql, data) in copies {
                    n += copy_in(&mut conn, sql, &data).await?;
                }
                Ok::<u64, anyhow::Error>(n)
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += t.await??;
    }
    Ok(n)
}

/// Connections the COPY ceilings copy on at once: one per core, the most
/// the database can take. One COPY leaves the second core of two idle
/// (session 9: 42-53k rows/s on one connection, 110-115k on two, 75-90k
/// on four or eight, where the copies wait on each other's index pages).
/// `ALPHADOME_BENCH_COPY_CONNECTIONS` sets another number.
fn copy_connections() -> usize {
    std::env::var("ALPHADOME_BENCH_COPY_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// The database's ceiling for the logger's own work: every log row carries
/// its customer's `public.users` id and has its mirror row in
/// `public.conversations` (the live system's table: foreign keys to users
/// and brands), as the logger writes them. One COPY per table on each of
/// `copy_connections()` connections at once, rows split between them.
async fn ceiling_copy_logger(rows: usize) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(10, 0).await?;
    let brands: std::collections::HashMap<uuid::Uuid, Option<uuid::Uuid>> =
        sqlx::query_as("SELECT id, brand_id FROM alphadome.bot_tenants")
            .fetch_all(&env.db.pool)
            .await?
            .into_iter()
            .collect();
    let mut users: Vec<(String, uuid::Uuid)> = sqlx::query_as(
        "INSERT INTO public.users (phone, full_name) \
         SELECT '2547' || lpad(g::text, 8, '0'), 'Unknown User' FROM generate_series(0, 999) g \
         RETURNING phone, id",
    )
    .fetch_all(&env.db.pool)
    .await?;
    users.sort();
    let conns = copy_connections();
    let mut logs = vec![String::new(); conns];
    let mut mirrors = vec![String::new(); conns];
    for i in 0..rows {
        let t = &tenants[i % tenants.len()];
        let (phone, user) = &users[i % users.len()];
        let direction = if i % 2 == 0 { "incoming" } else { "outgoing" };
        let text = load::customer_text(i);
        let k = i % conns;
        logs[k].push_str(&format!(
            "{}\t{phone}\t{user}\t{direction}\t{text}\twamid.copy.{i}\tf\t{{\"reason\": \"faq_match\"}}\t2026-11-28 12:00:00+00\tin:wamid.copy.{i}\n",
            t.id,
        ));
        let brand = brands
            .get(&t.id)
            .copied()
            .flatten()
            .map_or_else(|| "\\N".to_owned(), |b| b.to_string());
        mirrors[k].push_str(&format!(
            "{brand}\t{user}\twamid.copy.{i}\t{direction}\t{{\"from\": \"{phone}\", \"type\": \"text\"}}\t{text}\t2026-11-28 12:00:00+00\t2026-11-28 12:00:00+00\n",
        ));
    }
    let t0 = Instant::now();
    let n = copy_at_once(
        &env.db.pool,
        logs.into_iter()
            .zip(mirrors)
            .map(|(log, mirror)| {
                vec![
                    (
                        "COPY alphadome.bot_message_logs (bot_tenant_id, user_phone, user_id, direction, \
                         message_text, whatsapp_message_id, ai_processed, metadata, created_at, dedup_key) FROM STDIN",
                        log,
                    ),
                    (
                        "COPY public.conversations (brand_id, user_id, whatsapp_message_id, direction, \
                         raw_payload, message_text, created_at, updated_at) FROM STDIN",
                        mirror,
                    ),
                ]
            })
            .collect(),
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    if n as usize != 2 * rows {
        bail!("COPY wrote {n} rows of {}", 2 * rows);
    }
    Ok(Line::new(
        "ceiling: COPY of the logger's rows (log row with user id, and its public.conversations mirror)",
        rows as f64 / secs,
        "rows/s",
        format!(
            "{rows} log rows and {rows} mirror rows, {conns} connections at once, indexes, foreign keys and triggers in place"
        ),
    ))
}

/// Messages per batch call in the database's pipeline ceiling: about the
/// claim batches the sender makes at its sustained rate (admissions run
/// larger, records smaller; docs/benchmarks.md).
const CEILING_DB_BATCH: usize = 64;
/// Batches in flight at once in the database's pipeline ceiling.
const CEILING_DB_WORKERS: usize = 4;

/// The database's ceiling for the whole pipeline: every message's
/// statements as the services make them, each as its service's role
/// (admission as the responder, claim and record as the sender, the
/// customer lookup and both log rows with their mirrors as the logger), in
/// batches of `CEILING_DB_BATCH`, `CEILING_DB_WORKERS` at once with one
/// admission at a time (as the responder does), and nothing else running:
/// no HTTP, no NATS, no platform. The pipeline cannot be faster than this
/// on the same machine. With `part`, it waits at that barrier after its
/// set-up and runs as one part of the pipeline's floor.
async fn ceiling_db_pipeline(messages: usize, part: Option<&Barrier>) -> anyhow::Result<Line> {
    use alphadome_core::db::{connect_as, ServiceRole};
    let env = Env::new().await;
    let tenants = Arc::new(env.tenants(100, 0).await?);
    let url = secrecy::SecretString::from(env.db.url.clone());
    let n = CEILING_DB_WORKERS as u32;
    let responder = connect_as(&url, ServiceRole::Responder, n).await?;
    let sender = connect_as(&url, ServiceRole::Sender, n).await?;
    let logger = connect_as(&url, ServiceRole::Logger, n).await?;
    // The customers, resolved before (as after the first minute of traffic).
    sqlx::query(
        "WITH u AS (INSERT INTO public.users (phone, full_name) \
         SELECT '2547' || lpad(g::text, 8, '0'), 'Unknown User' FROM generate_series(0, 999) g RETURNING phone, id) \
         INSERT INTO alphadome.customer_users (phone, user_id) SELECT phone, id FROM u",
    )
    .execute(&env.db.pool)
    .await?;
    let run = run_id();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let admission = Arc::new(tokio::sync::Mutex::new(()));
    if let Some(start) = part {
        start.wait().await;
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CEILING_DB_WORKERS {
        let (responder, sender, logger) = (responder.clone(), sender.clone(), logger.clone());
        let (tenants, next, admission, run) = (
            tenants.clone(),
            next.clone(),
            admission.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(CEILING_DB_BATCH, std::sync::atomic::Ordering::Relaxed);
                if from >= messages {
                    return Ok::<(), anyhow::Error>(());
                }
                let idx: Vec<usize> = (from..(from + CEILING_DB_BATCH).min(messages)).collect();
                let tenant: Vec<uuid::Uuid> =
                    idx.iter().map(|i| tenants[i % tenants.len()].id).collect();
                let user: Vec<String> =
                    idx.iter().map(|i| format!("2547{:08}", i % 1000)).collect();
                let wamid: Vec<String> =
                    idx.iter().map(|i| format!("wamid.dbc.{run}.{i}")).collect();
                let reply: Vec<String> = wamid.iter().map(|w| format!("reply:{w}")).collect();
                let k = idx.len();
                {
                    let _one_at_a_time = admission.lock().await;
                    let limit = vec![Some(1_000_000i32); k];
                    let admitted: Vec<(i32, Option<String>, Option<String>)> = sqlx::query_as(
                        "SELECT * FROM alphadome.admit_message_batch($1, $2, $3, $4, $5)",
                    )
                    .bind(&tenant)
                    .bind(&user)
                    .bind(&wamid)
                    .bind(&limit)
                    .bind(&limit)
                    .fetch_all(&responder)
                    .await?;
                    anyhow::ensure!(admitted.len() == k, "admitted {} of {k}", admitted.len());
                }
                let claimed: Vec<(i32, bool, String, i32, Option<String>)> =
                    sqlx::query_as("SELECT * FROM alphadome.claim_outbound_batch($1, $2, $3, 60)")
                        .bind(&tenant)
                        .bind(&reply)
                        .bind(&wamid)
                        .fetch_all(&sender)
                        .await?;
                anyhow::ensure!(claimed.iter().all(|c| c.1), "a claim was refused");
                let sent: Vec<String> = wamid.iter().map(|w| format!("{w}.out")).collect();
                sqlx::query("SELECT alphadome.record_outbound_progress_batch($1, $2, $3, $4, $5)")
                    .bind(&tenant)
                    .bind(&reply)
                    .bind(vec![1i32; k])
                    .bind(&sent)
                    .bind(vec![1i32; k])
                    .execute(&sender)
                    .await?;
                // The log batch, through the logger's own write path: the
                // incoming and the outgoing row of each message.
                let now = alphadome_core::events::now_ms();
                let events = idx
                    .iter()
                    .zip(&tenant)
                    .zip(&user)
                    .zip(wamid.iter().zip(&sent))
                    .flat_map(|(((i, t), u), (w, out))| {
                        let row = |direction: Direction,
                                   key: String,
                                   wamid: &str,
                                   text: String,
                                   raw: String| LogEvent {
                            tenant_id: t.to_string(),
                            direction: direction as i32,
                            dedup_key: key,
                            wamid: wamid.to_owned(),
                            user_phone: u.clone(),
                            message_text: text,
                            metadata_json: r#"{"reason":"faq_match","match_score":0.82}"#.into(),
                            occurred_at_ms: now,
                            raw_json: raw,
                            ..Default::default()
                        };
                        [
                            row(
                                Direction::Incoming,
                                format!("in:{w}"),
                                w,
                                load::customer_text(*i),
                                format!(r#"{{"from":"{u}","type":"text"}}"#),
                            ),
                            row(
                                Direction::Outgoing,
                                format!("out:{w}"),
                                out,
                                "About the price of our guitars: ask at the counter.".into(),
                                String::new(),
                            ),
                        ]
                    })
                    .collect();
                alphadome_logger::write_events(&logger, events).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let logged = count_logs(&env.db.pool).await?;
    anyhow::ensure!(
        logged as usize == 2 * messages,
        "logged {logged} of {} rows",
        2 * messages
    );
    Ok(Line::new(
        named(
            part,
            "the database's work per message alone (admission, claim, record, two log rows and their mirrors)",
        ),
        messages as f64 / secs,
        "msg/s",
        format!(
            "{messages} messages, 100 tenants x 1,000 customers, batches of {CEILING_DB_BATCH}, {CEILING_DB_WORKERS} at once, one admission at a time, each as its service's role"
        ),
    ))
}

/// A ceiling's name, or the name of its part in the pipeline's floor.
fn named(part: Option<&Barrier>, what: &str) -> String {
    match part {
        Some(_) => format!("  floor part: {what}"),
        None => format!("ceiling: {what}"),
    }
}

/// The webhooks per second an ingress would take if each cost exactly one
/// request to the bare handler and one acked publish: the two ceilings'
/// costs added (each keeps the whole machine busy on its own). The
/// ingress's distance from it is its own work (signature, JSON, tenant
/// lookup). Not a strict bound: each ceiling also carries its own load
/// generator, and the two are measured minutes apart.
fn http_and_publish(http: &Line, broker: &Line) -> Line {
    let value = 1.0 / (1.0 / http.value + 1.0 / broker.value);
    Line::new(
        "ceiling: HTTP request + acked publish",
        value,
        "req/s",
        format!(
            "1 / (1/{:.0} + 1/{:.0}): the bare handler's and the acked publish's costs added, \
             what an ingress doing nothing else would take",
            http.value, broker.value
        ),
    )
}

/// A floor stand-in's outcome: ack once its publishes are acknowledged,
/// otherwise try again shortly.
fn published(r: Result<bool, alphadome_core::bus::BusError>) -> alphadome_core::bus::Outcome {
    match r {
        Ok(_) => alphadome_core::bus::Outcome::Ack,
        Err(e) => alphadome_core::bus::Outcome::Retry {
            delay: Duration::from_millis(100),
            reason: e.to_string(),
        },
    }
}

/// The broker's traffic of `messages` pipeline messages and nothing else,
/// through the same code the services use: each inbound message is an
/// acked publish (the ingress); a consumer on `bus::run_consumer` takes it,
/// publishes the reply and the incoming log event at once and acks (the
/// responder); another takes the reply, publishes the outgoing log event
/// and acks (the sender); a third pulls the log events in batches of up to
/// 1,000 and acks each (the logger). 64 publishers, as the ingress
/// benchmark's connections.
async fn broker_traffic(messages: usize, part: Option<&Barrier>) -> anyhow::Result<Line> {
    use alphadome_core::bus::{run_consumer, ConsumerSettings};
    use futures_util::StreamExt as _;
    let nats = TestNats::new();
    let bus = Bus::connect(&nats_url(), &nats.prefix).await?;
    bus.ensure_streams(Duration::from_secs(120)).await?;
    let shutdown = CancellationToken::new();
    let log_payload: bytes::Bytes = LogEvent {
        tenant_id: uuid::Uuid::new_v4().to_string(),
        direction: Direction::Incoming as i32,
        dedup_key: "in:wamid.floor".into(),
        wamid: "wamid.floor".into(),
        user_phone: "254700000001".into(),
        message_text: load::customer_text(1),
        metadata_json: r#"{"reason":"faq_match","match_score":0.82}"#.into(),
        occurred_at_ms: 1_700_000_000_000,
        raw_json: r#"{"from":"254700000001","type":"text"}"#.into(),
        ..Default::default()
    }
    .encode_to_vec()
    .into();
    let id = |meta: &alphadome_core::bus::MessageMeta| {
        meta.headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let responder = {
        let (b, log) = (bus.clone(), log_payload.clone());
        tokio::spawn(run_consumer(
            bus.clone(),
            StreamKind::Inbound,
            "floor-responder",
            ConsumerSettings::default(),
            shutdown.clone(),
            move |payload, meta| {
                let (b, log, wamid) = (b.clone(), log.clone(), id(&meta));
                async move {
                    let (reply_id, log_id) = (format!("reply:{wamid}"), format!("in:{wamid}"));
                    let reply =
                        b.publish(b.subject(StreamKind::Outbound, "floor"), &reply_id, payload);
                    let logged = b.publish(b.subject(StreamKind::Log, "floor"), &log_id, log);
                    let (reply, logged) = futures_util::future::join(reply, logged).await;
                    published(reply.and(logged))
                }
            },
        ))
    };
    let sender = {
        let (b, log) = (bus.clone(), log_payload.clone());
        tokio::spawn(run_consumer(
            bus.clone(),
            StreamKind::Outbound,
            "floor-sender",
            ConsumerSettings::default(),
            shutdown.clone(),
            move |_payload, meta| {
                let (b, log, reply) = (b.clone(), log.clone(), id(&meta));
                async move {
                    let wamid = reply.trim_start_matches("reply:");
                    let log_id = format!("out:{wamid}");
                    published(
                        b.publish(b.subject(StreamKind::Log, "floor"), &log_id, log)
                            .await,
                    )
                }
            },
        ))
    };
    let logs = bus
        .consumer(
            StreamKind::Log,
            "floor-logger",
            ConsumerSettings {
                max_ack_pending: 16_000,
                ..ConsumerSettings::default()
            },
        )
        .await?;
    let logger = tokio::spawn(async move {
        let mut acked = 0usize;
        while acked < 2 * messages {
            let pulled = logs
                .stream()
                .max_messages_per_batch(1000)
                .expires(Duration::from_secs(10))
                .messages()
                .await?;
            let mut chunks = std::pin::pin!(pulled.ready_chunks(1000));
            while let Some(chunk) = chunks.next().await {
                let chunk: Vec<_> = chunk.into_iter().collect::<Result<_, _>>()?;
                for r in futures_util::future::join_all(chunk.iter().map(|m| m.ack())).await {
                    r.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                }
                acked += chunk.len();
                if acked >= 2 * messages {
                    break;
                }
            }
        }
        anyhow::Ok(acked)
    });
    if let Some(start) = part {
        start.wait().await;
    }
    let t0 = Instant::now();
    publish_inbound(&bus, "floor", messages, 64).await?;
    // A stand-in that stops early (its consumer could not be made) fails
    // the run at once instead of leaving the log events to time out.
    let (mut responder, mut sender) = (responder, sender);
    let acked = tokio::select! {
        acked = logger => acked??,
        stopped = &mut responder => bail!("the responder's stand-in stopped early: {:?}", stopped?),
        stopped = &mut sender => bail!("the sender's stand-in stopped early: {:?}", stopped?),
        _ = tokio::time::sleep(Duration::from_secs(600)) => {
            bail!("the log events did not all arrive within 10 minutes")
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    shutdown.cancel();
    responder.await??;
    sender.await??;
    anyhow::ensure!(
        acked == 2 * messages,
        "{acked} log events of {}",
        2 * messages
    );
    Ok(Line::new(
        named(part, "the broker's traffic per message alone"),
        messages as f64 / secs,
        "msg/s",
        format!(
            "{messages} messages: 4 acked publishes and 4 deliveries acked each (inbound, reply, two log events), async-nats"
        ),
    ))
}

/// The pipeline's floor: for the same number of messages, the database's
/// work per message (`ceiling_db_pipeline`), the broker's traffic
/// (`broker_traffic`) and two HTTP requests per message to a bare handler
/// (the webhook and the send), all started at once on the same cores and
/// timed until the last of them ends. This is the work every message
/// costs before any platform logic, JSON, signature or FAQ match: no
/// pipeline can carry more messages per second on this machine.
async fn ceiling_floor(messages: usize) -> anyhow::Result<Line> {
    let start = Barrier::new(4);
    let t0 = async {
        start.wait().await;
        anyhow::Ok(Instant::now())
    };
    // try_join: a part that fails before the start ends the others, which
    // would wait at the barrier for it.
    let (_, _, _, t0) = tokio::try_join!(
        ceiling_db_pipeline(messages, Some(&start)),
        broker_traffic(messages, Some(&start)),
        ceiling_http(2 * messages, 64, Some(&start)),
        t0
    )?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Line::new(
        "ceiling: the pipeline's floor (database, broker and HTTP work at once)",
        messages as f64 / secs,
        "msg/s",
        format!(
            "{messages} messages: the database's work per message, the broker's traffic per message and two HTTP requests per message to a bare handler, started together, until the last ends"
        ),
    ))
}

// ---------------------------------------------------------------- services

async fn ingress(
    smoke: bool,
    messages: usize,
    connections: usize,
    tenants: usize,
) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(tenants, 0).await?;
    let (_graph, graph_url, _stop) = GraphStandIn::start_local().await?;
    let p = start(&["run", "ingress"], env.env(&graph_url)).await?;
    let run = run_id();
    let shots = Arc::new(load::text_shots(&run, &tenants, 1000, messages));
    let sent = load::send(
        p.addr,
        "/webhook",
        shots,
        Pace {
            rate: None,
            connections,
        },
    )
    .await;
    let bus = Bus::connect(&nats_url(), &env.nats.prefix).await?;
    let stored = bus
        .js
        .get_stream(bus.stream_name(StreamKind::Inbound))
        .await?
        .info()
        .await?
        .state
        .messages;
    check(
        smoke,
        sent.accepted() == messages,
        &format!(
            "ingress accepted {} of {messages}: {:?}",
            sent.accepted(),
            sent.errors
        ),
    )?;
    check(
        smoke,
        stored as usize == messages,
        &format!("{stored} of {messages} messages are in the stream"),
    )?;
    let rss = p.rss_kib().map(|(_, peak)| peak / 1024).unwrap_or_default();
    Ok(Line::new(
        "ingress: signed webhooks, acked",
        sent.per_sec(),
        "req/s",
        format!(
            "{messages} webhooks, {} tenants, {connections} connections, {stored} stored; POST {}; peak RSS {rss} MiB",
            tenants.len(),
            Percentiles::of(&sent.post_us)
        ),
    ))
}

struct PipelineRun {
    rate: Option<f64>,
    messages: usize,
    tenants: usize,
    users: usize,
    statuses: usize,
    connections: usize,
    faq: usize,
}

async fn count_logs(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
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
async fn wait_for_logs(
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

async fn pipeline(smoke: bool, r: PipelineRun) -> anyhow::Result<Vec<Line>> {
    let env = Env::new().await;
    let tenants = Arc::new(env.tenants(r.tenants, r.faq).await?);
    let stop_graph = CancellationToken::new();
    let (graph, graph_url) = graph_on_own_thread(stop_graph.clone()).await?;
    let mut up = start(&["up"], env.env(&graph_url)).await?;
    // Warm up: every tenant answers once before the clock starts.
    let warm = run_id();
    let shots = Arc::new(load::text_shots(&warm, &tenants, r.users, tenants.len()));
    let sent = load::send(
        up.addr,
        "/webhook",
        shots,
        Pace {
            rate: None,
            connections: 16,
        },
    )
    .await;
    load::wait_for_replies(&warm, &sent, &graph, Duration::from_secs(60)).await;
    let warm_replies = load::replies(&warm, &sent, &graph);
    check(smoke, warm_replies.missing == 0, "warm-up replies missing")?;
    let logs_before = 2 * sent.accepted() as i64;

    let run = run_id();
    let shots = Arc::new(load::text_shots(&run, &tenants, r.users, r.messages));
    let statuses_stop = CancellationToken::new();
    let statuses = (r.statuses > 0).then(|| {
        tokio::spawn(load::follow_with_statuses(
            up.addr,
            graph.clone(),
            tenants.clone(),
            r.statuses,
            statuses_stop.clone(),
        ))
    });
    let rss_stop = CancellationToken::new();
    let rss = sample_rss(up.pid(), rss_stop.clone());
    let sent = load::send(
        up.addr,
        "/webhook",
        shots,
        Pace {
            rate: r.rate,
            connections: r.connections,
        },
    )
    .await;
    load::wait_for_replies(&run, &sent, &graph, Duration::from_secs(300)).await;
    let replies = load::replies(&run, &sent, &graph);
    // The log rows: both directions of every accepted message.
    let want = logs_before + 2 * sent.accepted() as i64;
    let log_bus = Bus::connect(&nats_url(), &env.nats.prefix).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let logged = wait_for_logs(&env.db.pool, &log_bus, want, deadline).await?;
    let logs_done = Instant::now();
    statuses_stop.cancel();
    let status_counts = match statuses {
        Some(t) => Some(t.await?),
        None => None,
    };
    rss_stop.cancel();
    let peak_rss = rss.await?.max(up.rss_kib().map(|(_, p)| p).unwrap_or(0));
    up.terminate(Duration::from_secs(20));
    stop_graph.cancel();

    let accepted = sent.accepted();
    check(
        smoke,
        accepted == r.messages,
        &format!(
            "ingress accepted {accepted} of {}: {:?}",
            r.messages, sent.errors
        ),
    )?;
    check(
        smoke,
        replies.missing == 0,
        &format!("{} replies missing", replies.missing),
    )?;
    check(
        smoke,
        replies.duplicated == 0,
        &format!("{} replies doubled", replies.duplicated),
    )?;
    check(
        smoke,
        logged >= want,
        &format!("{} of {want} log rows written", logged),
    )?;
    let label = match r.rate {
        Some(rate) => format!("pipeline @ {rate:.0} msg/s"),
        None => "pipeline, as fast as it goes".to_owned(),
    };
    let delivered_secs = replies
        .last
        .map_or(f64::NAN, |l| (l - sent.started).as_secs_f64());
    let logged_secs = (logs_done - sent.started).as_secs_f64();
    let mut detail = format!(
        "{} msgs, {} tenants x {} users; sent {}, accepted {accepted}, replied {}, missing {}, duplicated {}, log rows {}/{}; \
         replies done in {delivered_secs:.2} s, logs in {logged_secs:.2} s; webhook->reply {}; peak RSS {} MiB",
        r.messages,
        r.tenants,
        r.users,
        sent.status.len(),
        replies.replied,
        replies.missing,
        replies.duplicated,
        logged - logs_before,
        want - logs_before,
        Percentiles::of(&replies.latency_us),
        peak_rss / 1024,
    );
    if let Some((n, refused)) = status_counts {
        detail.push_str(&format!("; {n} status webhooks ({refused} refused)"));
    }
    let mut lines = vec![Line::new(
        format!("{label}: sustained"),
        accepted as f64 / logged_secs,
        "msg/s",
        detail,
    )];
    let p = Percentiles::of(&replies.latency_us);
    let slowest = replies
        .slowest_seconds(3)
        .iter()
        .map(|(sec, us)| format!("{:.1} ms in second {sec}", *us as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ");
    lines.push(Line::new(
        format!("{label}: p99 webhook->reply"),
        p.p99,
        "ms",
        format!(
            "p50 {:.2} ms, p99.9 {:.2} ms; slowest seconds: {slowest}",
            p.p50, p.p999
        ),
    ));
    Ok(lines)
}

/// Samples a process's resident memory every 50 ms; returns the peak (KiB).
fn sample_rss(pid: Option<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
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

async fn logger(smoke: bool, rows: usize) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(10, 0).await?;
    let bus = Bus::connect(&nats_url(), &env.nats.prefix).await?;
    bus.ensure_streams(Duration::from_secs(120)).await?;
    // The log stream is filled first; then the logger drains it.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tenants = Arc::new(tenants);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (bus, next, tenants) = (bus.clone(), next.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= rows {
                    return Ok::<(), alphadome_core::bus::BusError>(());
                }
                let t = &tenants[i % tenants.len()];
                let incoming = i % 2 == 0;
                let ev = LogEvent {
                    tenant_id: t.id.to_string(),
                    direction: if incoming {
                        Direction::Incoming
                    } else {
                        Direction::Outgoing
                    } as i32,
                    dedup_key: format!(
                        "{}:wamid.log.{}",
                        if incoming { "in" } else { "out" },
                        i / 2
                    ),
                    wamid: format!("wamid.log.{i}"),
                    user_phone: format!("2547{:08}", (i / 2) % 1000),
                    message_text: load::customer_text(i),
                    metadata_json: r#"{"reason":"faq_match","match_score":0.82}"#.into(),
                    occurred_at_ms: alphadome_core::events::now_ms(),
                    raw_json: if incoming {
                        format!(
                            r#"{{"from":"2547{:08}","id":"wamid.log.{i}","type":"text"}}"#,
                            (i / 2) % 1000
                        )
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                let id = ev.dedup_key.clone();
                bus.publish(
                    bus.subject(StreamKind::Log, &ev.tenant_id),
                    &id,
                    ev.encode_to_vec().into(),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (_graph, graph_url, _stop) = GraphStandIn::start_local().await?;
    let t0 = Instant::now();
    let p = start(&["run", "logger"], env.env(&graph_url)).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let n = wait_for_logs(&env.db.pool, &bus, rows as i64, deadline).await?;
    let secs = t0.elapsed().as_secs_f64();
    let conversations: i64 = sqlx::query_scalar("SELECT count(*) FROM public.conversations")
        .fetch_one(&env.db.pool)
        .await?;
    drop(p);
    check(
        smoke,
        n as usize == rows,
        &format!("{n} of {rows} rows written"),
    )?;
    Ok(Line::new(
        "logger: rows into bot_message_logs",
        n as f64 / secs,
        "rows/s",
        format!("{rows} events drained from JetStream in {secs:.2} s (process start included), 10 tenants; {conversations} conversations mirrored"),
    ))
}

async fn memory(
    smoke: bool,
    tenants: usize,
    faq: usize,
    messages: usize,
    rate: f64,
) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(tenants, faq).await?;
    let stop_graph = CancellationToken::new();
    let (graph, graph_url) = graph_on_own_thread(stop_graph.clone()).await?;
    let up = start(&["up"], env.env(&graph_url)).await?;
    let idle = up.rss_kib().map(|(now, _)| now).unwrap_or_default();
    let stop = CancellationToken::new();
    let rss = sample_rss(up.pid(), stop.clone());
    let run = run_id();
    let shots = Arc::new(load::text_shots(&run, &tenants, 100, messages));
    let sent = load::send(
        up.addr,
        "/webhook",
        shots,
        Pace {
            rate: Some(rate),
            connections: 128,
        },
    )
    .await;
    load::wait_for_replies(&run, &sent, &graph, Duration::from_secs(300)).await;
    let replies = load::replies(&run, &sent, &graph);
    stop.cancel();
    let peak = rss.await?.max(up.rss_kib().map(|(_, p)| p).unwrap_or(0));
    check(
        smoke,
        replies.missing == 0 && replies.duplicated == 0,
        &format!(
            "{} missing, {} doubled",
            replies.missing, replies.duplicated
        ),
    )?;
    Ok(Line::new(
        "memory: peak RSS of alphadome up",
        peak as f64 / 1024.0,
        "MiB",
        format!(
            "{} tenants x {faq} FAQ entries; {messages} messages at {rate:.0}/s over all tenants, {} replied; {:.1} MiB after start",
            tenants.len(),
            replies.replied,
            idle as f64 / 1024.0
        ),
    ))
}

/// Starts the Graph API stand-in on a thread and runtime of its own, so
/// that the load generator, which shares this process, never delays its
/// answers: a stand-in answering late makes the sender time out, and a
/// send that timed out is sent again unless a status webhook shows it went
/// out (at 50,000 messages flat out, that happened to dozens of replies).
async fn graph_on_own_thread(
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

/// The quiet tenants' webhook-to-reply latency, alone and next to a
/// tenant flooding at `factor` times their per-tenant rate.
async fn neighbour(
    smoke: bool,
    rate: f64,
    factor: f64,
    quiet: usize,
    seconds: u64,
    slow_llm: Option<Duration>,
) -> anyhow::Result<Vec<Line>> {
    let env = Env::new().await;
    let quiet_tenants = env.tenants(quiet, 20).await?;
    let llm = match slow_llm {
        Some(d) => {
            let (llm, url) = alphadome_testkit::llm::LlmStandIn::start().await;
            llm.set_latency(d);
            Some((llm, url))
        }
        None => None,
    };
    let noisy = load::create_tenants_from(
        &env.db.pool,
        &env.keyring,
        quiet,
        1,
        if llm.is_some() { 0 } else { 20 },
        llm.as_ref().map(|(_, u)| u.as_str()),
        1,
    )
    .await
    .map_err(anyhow::Error::msg)?
    .remove(0);
    let stop_graph = CancellationToken::new();
    let (graph, graph_url) = graph_on_own_thread(stop_graph.clone()).await?;
    let up = start(&["up"], env.env(&graph_url)).await?;
    let quiet_rate = rate * quiet as f64;
    let n_quiet = (quiet_rate * seconds as f64) as usize;
    let n_noisy = (rate * factor * seconds as f64) as usize;
    let mut lines = Vec::new();
    for flood in [false, true] {
        let run = run_id();
        let shots = Arc::new(load::text_shots(&run, &quiet_tenants, 1000, n_quiet));
        let quiet_send = load::send(
            up.addr,
            "/webhook",
            shots,
            Pace {
                rate: Some(quiet_rate),
                connections: 32,
            },
        );
        let noisy_run = run_id();
        let (sent, noisy_sent) = if flood {
            let shots = Arc::new(load::text_shots(
                &noisy_run,
                std::slice::from_ref(&noisy),
                100_000,
                n_noisy,
            ));
            let noisy_send = load::send(
                up.addr,
                "/webhook",
                shots,
                Pace {
                    rate: Some(rate * factor),
                    connections: 64,
                },
            );
            let (q, n) = tokio::join!(quiet_send, noisy_send);
            (q, Some(n))
        } else {
            (quiet_send.await, None)
        };
        load::wait_for_replies(&run, &sent, &graph, Duration::from_secs(300)).await;
        let r = load::replies(&run, &sent, &graph);
        let p = Percentiles::of(&r.latency_us);
        let mut detail = format!(
            "{} quiet tenants at {rate:.0} msg/s each: {}; missing {}, duplicated {}",
            quiet_tenants.len(),
            p,
            r.missing,
            r.duplicated
        );
        if let Some(ns) = noisy_sent {
            load::wait_for_replies(&noisy_run, &ns, &graph, Duration::from_secs(300)).await;
            let nr = load::replies(&noisy_run, &ns, &graph);
            detail.push_str(&format!(
                "; the noisy tenant at {:.0} msg/s{}: {} accepted, {} replied, {}",
                rate * factor,
                slow_llm.map_or(String::new(), |d| format!(" to an LLM taking {d:?}")),
                ns.accepted(),
                nr.replied,
                Percentiles::of(&nr.latency_us)
            ));
        }
        check(
            smoke,
            r.missing == 0 && r.duplicated == 0,
            "quiet tenants' replies missing or doubled",
        )?;
        lines.push(Line::new(
            if flood {
                "neighbour: quiet p99, one tenant flooding"
            } else {
                "neighbour: quiet p99, no flood"
            },
            p.p99,
            "ms",
            detail,
        ));
    }
    drop(up);
    stop_graph.cancel();
    Ok(lines)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    format!("{cores} cores ({cpu}), {mem} GiB, {profile}")
}

/// The versions of the NATS server and PostgreSQL the benchmarks run
/// against: both change the results (docs/benchmarks.md).
async fn services() -> anyhow::Result<String> {
    let nats = async_nats::connect(nats_url()).await?;
    let nats_version = nats.server_info().version;
    let admin = sqlx::PgPool::connect(&alphadome_testkit::fixtures::admin_database_url()).await?;
    let pg: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await?;
    admin.close().await;
    Ok(format!(
        "NATS {nats_version} at {}, PostgreSQL {pg}",
        nats_url()
    ))
}

async fn all(smoke: bool) -> anyhow::Result<()> {
    println!(
        "# alphadome-bench all{} on {}",
        if smoke { " --smoke" } else { "" },
        machine()
    );
    let s = |full: usize, small: usize| if smoke { small } else { full };
    let http = ceiling_http(s(100_000, 500), 64, None).await?;
    let broker = ceiling_broker(s(100_000, 500), 64).await?;
    let http_publish = http_and_publish(&http, &broker);
    let copy = ceiling_copy(s(200_000, 1_000)).await?;
    let copy_logger = ceiling_copy_logger(s(200_000, 1_000)).await?;
    let db_pipeline = ceiling_db_pipeline(s(50_000, 300), None).await?;
    let traffic = broker_traffic(s(30_000, 300), None).await?;
    let floor = ceiling_floor(s(30_000, 300)).await?;
    let ingress_line = ingress(smoke, s(100_000, 500), 64, s(100, 5)).await?;
    let run = |rate: Option<f64>, messages: usize| PipelineRun {
        rate,
        messages,
        tenants: s(100, 5),
        users: s(1000, 20),
        statuses: 0,
        connections: 256,
        faq: s(20, 5),
    };
    let p1000 = pipeline(
        smoke,
        run(Some(if smoke { 200.0 } else { 1000.0 }), s(30_000, 300)),
    )
    .await?;
    let p5000 = pipeline(
        smoke,
        run(Some(if smoke { 400.0 } else { 5000.0 }), s(50_000, 300)),
    )
    .await?;
    let pmax = pipeline(smoke, run(None, s(50_000, 300))).await?;
    let pstatus = pipeline(
        smoke,
        PipelineRun {
            statuses: 3,
            ..run(Some(if smoke { 200.0 } else { 1000.0 }), s(20_000, 200))
        },
    )
    .await?;
    let logger_line = logger(smoke, s(200_000, 2_000)).await?;
    let mem = memory(
        smoke,
        s(1000, 20),
        s(100, 10),
        s(10_000, 200),
        if smoke { 200.0 } else { 1000.0 },
    )
    .await?;
    let mut neighbours = neighbour(smoke, 5.0, 10.0, 9, s(20, 3) as u64, None).await?;
    neighbours.extend(
        neighbour(
            smoke,
            5.0,
            10.0,
            9,
            s(20, 3) as u64,
            Some(Duration::from_millis(s(1000, 200) as u64)),
        )
        .await?,
    );

    println!("\n| benchmark | result | ceiling | ratio |\n|---|---|---|---|");
    let row = |l: &Line, c: Option<&Line>| {
        let (ceiling, ratio) = match c {
            Some(c) => (
                format!(
                    "{:.0} {} ({})",
                    c.value,
                    c.unit,
                    c.name.trim_start_matches("ceiling: ")
                ),
                format!("{:.0} %", 100.0 * l.value / c.value),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} {} | {ceiling} | {ratio} |",
            l.name, l.value, l.unit
        );
    };
    row(&http, None);
    row(&broker, None);
    row(&http_publish, None);
    row(&copy, None);
    row(&copy_logger, None);
    row(&db_pipeline, None);
    row(&traffic, None);
    row(&floor, None);
    row(&ingress_line, Some(&http));
    row(&ingress_line, Some(&broker));
    row(&ingress_line, Some(&http_publish));
    for l in p1000.iter().chain(&p5000).chain(&pmax).chain(&pstatus) {
        if l.unit == "msg/s" {
            row(l, Some(&broker));
            row(l, Some(&db_pipeline));
            row(l, Some(&floor));
        } else {
            row(l, None);
        }
    }
    row(&logger_line, Some(&copy));
    row(&logger_line, Some(&copy_logger));
    row(&mem, None);
    for l in &neighbours {
        row(l, None);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let smoke = cli.smoke;
    if !matches!(cli.cmd, Cmd::BareHttp) {
        println!("# against {}", services().await?);
    }
    match cli.cmd {
        Cmd::BareHttp => bare_http().await?,
        Cmd::All => all(smoke).await?,
        Cmd::Floor { messages } => {
            println!("# on {}", machine());
            broker_traffic(messages, None).await?;
            ceiling_floor(messages).await?;
        }
        Cmd::Ceilings {
            requests,
            connections,
        } => {
            println!("# on {}", machine());
            let http = ceiling_http(requests, connections, None).await?;
            let broker = ceiling_broker(requests, connections).await?;
            http_and_publish(&http, &broker);
            ceiling_copy(requests).await?;
            ceiling_copy_logger(requests).await?;
            ceiling_db_pipeline(requests / 4, None).await?;
            broker_traffic(requests / 4, None).await?;
            ceiling_floor(requests / 4).await?;
        }
        Cmd::Ingress {
            messages,
            connections,
            tenants,
        } => {
            ingress(smoke, messages, connections, tenants).await?;
        }
        Cmd::Pipeline {
            rate,
            messages,
            tenants,
            users,
            statuses,
            connections,
        } => {
            pipeline(
                smoke,
                PipelineRun {
                    rate,
                    messages,
                    tenants,
                    users,
                    statuses,
                    connections,
                    faq: 20,
                },
            )
            .await?;
        }
        Cmd::Logger { rows } => {
            logger(smoke, rows).await?;
        }
        Cmd::Memory {
            tenants,
            faq,
            messages,
            rate,
        } => {
            memory(smoke, tenants, faq, messages, rate).await?;
        }
        Cmd::Neighbour {
            rate,
            factor,
            quiet,
            seconds,
            slow_llm_ms,
        } => {
            neighbour(
                smoke,
                rate,
                factor,
                quiet,
                seconds,
                slow_llm_ms.map(Duration::from_millis),
            )
            .await?;
        }
    }
    Ok(())
}
