//! The fault-injection suite: the real services as separate processes
//! (`alphadome run ingress|responder|sender|logger`), a NATS server and a
//! PostgreSQL cluster of the test's own (so they can be stopped), a Graph
//! API stand-in, and a scripted "Meta" that delivers signed webhooks over
//! three tenants and retries each until it gets a 200, as Meta does.
//!
//! For each fault a fresh stream of distinct messages flows while the
//! fault strikes; afterwards a checker compares what went in with what came
//! out: every accepted message must have exactly one reply at the stand-in
//! and exactly one incoming and one outgoing row in `bot_message_logs`. It
//! prints sent / accepted / replied / logged / lost / duplicated per fault.
//! The one window no design can close (Meta's send API has no idempotency
//! key): a send in flight when the sender is SIGKILLed may be repeated;
//! those are counted apart and may never exceed the sends in flight at the
//! kill.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_testkit::graph::{Behaviour, GraphStandIn};
use alphadome_tests::load::{self, LoadTenant, Shot};
use alphadome_tests::proc::{platform_env, Proc};

use alphadome_tests::*;
use sqlx::PgPool;

/// Messages per fault, and the gap between them.
const PER_FAULT: usize = 60;
const GAP: Duration = Duration::from_millis(40);

struct World {
    pg: OwnPostgres,
    nats: OwnNats,
    pool: PgPool,
    graph: Arc<GraphStandIn>,
    tenants: Vec<LoadTenant>,
    ingress: Proc,
    responder: Proc,
    sender: Proc,
    logger: Proc,
    /// Every webhook delivered so far (for the late re-deliveries).
    history: Vec<Shot>,
}

#[derive(Debug, Default)]
struct Counts {
    sent: usize,
    accepted: usize,
    replied: usize,
    logged_in: usize,
    logged_out: usize,
    lost: usize,
    duplicated: usize,
    /// Repeats allowed by the in-flight window (sender kill only).
    in_flight_repeats: usize,
    in_flight_at_kill: usize,
}

/// Delivers `shots` the way Meta does: each until it is answered 200
/// (retrying every 250 ms for up to three minutes), `copies` times each
/// (extra copies a moment later, concurrently), one new message every GAP.
async fn deliver(url: String, shots: Vec<Shot>, copies: usize) -> Vec<bool> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for (i, shot) in shots.into_iter().enumerate() {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(GAP * i as u32).await;
            let mut copies_ok = Vec::new();
            for c in 0..copies.max(1) {
                let (client, url, shot) = (client.clone(), url.clone(), shot.clone());
                copies_ok.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(150 * c as u64)).await;
                    let deadline = Instant::now() + Duration::from_secs(180);
                    while Instant::now() < deadline {
                        let r = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-hub-signature-256", &shot.signature)
                            .body(shot.body.clone())
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status() == 200) {
                            return true;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    false
                }));
            }
            let mut any = false;
            for c in copies_ok {
                any |= c.await.unwrap_or(false);
            }
            any
        }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        accepted.push(t.await.unwrap_or(false));
    }
    accepted
}

impl World {
    async fn start() -> Self {
        init_logs();
        let pg = OwnPostgres::start().await;
        let admin = PgPool::connect(&pg.url("postgres")).await.unwrap();
        sqlx::query("CREATE DATABASE alphadome")
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db_url = pg.url("alphadome");
        let pool = alphadome_core::db::connect(&secrecy::SecretString::from(db_url.clone()), 4)
            .await
            .unwrap();
        alphadome_core::db::migrate(&pool).await.unwrap();
        let (key, ring) = keyring();
        let tenants = load::create_tenants(&pool, &ring, 3, 5, 1).await.unwrap();
        let nats = OwnNats::start().await;
        let (graph, graph_url) = GraphStandIn::start(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            alphadome_core::CancellationToken::new(),
        )
        .await
        .unwrap();
        let env = platform_env(&db_url, &nats.url(), "faults", &key, &graph_url);
        let bin = alphadome_bin();
        let run = |s: &'static str| {
            let (bin, env) = (bin.clone(), env.clone());
            async move { Proc::start(&bin, &["run", s], env).await.unwrap() }
        };
        // The ingress first: it creates the streams.
        let ingress = run("ingress").await;
        let responder = run("responder").await;
        let sender = run("sender").await;
        let logger = run("logger").await;
        Self {
            pg,
            nats,
            pool,
            graph,
            tenants,
            ingress,
            responder,
            sender,
            logger,
            history: Vec::new(),
        }
    }

    fn webhook_url(&self) -> String {
        format!("http://{}/webhook", self.ingress.addr)
    }

    fn shots(&mut self, run: &str) -> Vec<Shot> {
        let shots = load::text_shots(run, &self.tenants, 40, PER_FAULT);
        self.history.extend(shots.iter().cloned());
        shots
    }

    /// Rows of `bot_message_logs` per direction for run `run`.
    async fn logged(&self, run: &str) -> (usize, usize) {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT direction, count(*) FROM alphadome.bot_message_logs \
             WHERE dedup_key LIKE 'in:wamid.load.' || $1 || '.%' OR dedup_key LIKE 'out:wamid.load.' || $1 || '.%' \
             GROUP BY direction",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let get = |d: &str| {
            rows.iter()
                .find(|(k, _)| k == d)
                .map_or(0, |(_, n)| *n as usize)
        };
        (get("incoming"), get("outgoing"))
    }

    fn replies(&self, run: &str) -> HashMap<usize, usize> {
        let mut by_seq = HashMap::new();
        for r in self.graph.received() {
            if let Some(seq) = load::seq_of(run, &r.in_reply_to()) {
                *by_seq.entry(seq).or_default() += 1;
            }
        }
        by_seq
    }

    /// Waits until every accepted message of `run` is answered and logged
    /// (or three minutes), then counts.
    async fn check(
        &self,
        fault: &str,
        run: &str,
        accepted: &[bool],
        in_flight_at_kill: usize,
    ) -> Counts {
        let want = accepted.iter().filter(|a| **a).count();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let replied = self.replies(run).len();
            let (i, o) = self.logged(run).await;
            if (replied >= want && i >= want && o >= want) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Late duplicates would show up now if they were coming.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let replies = self.replies(run);
        let (logged_in, logged_out) = self.logged(run).await;
        let extra: usize = replies.values().map(|n| n - 1).sum();
        let lost = accepted
            .iter()
            .enumerate()
            .filter(|(seq, a)| **a && !replies.contains_key(seq))
            .count()
            + want.saturating_sub(logged_in)
            + want.saturating_sub(logged_out);
        let in_flight_repeats = extra.min(in_flight_at_kill);
        let c = Counts {
            sent: accepted.len(),
            accepted: want,
            replied: replies.len(),
            logged_in,
            logged_out,
            lost,
            duplicated: extra - in_flight_repeats,
            in_flight_repeats,
            in_flight_at_kill,
        };
        println!(
            "{fault:<34} sent {:>3}  accepted {:>3}  replied {:>3}  logged {:>3}/{:>3}  lost {}  duplicated {}  in-flight repeats {} (of {} in flight at the kill)",
            c.sent, c.accepted, c.replied, c.logged_in, c.logged_out, c.lost, c.duplicated, c.in_flight_repeats, c.in_flight_at_kill
        );
        c
    }

    /// Sends claimed but not recorded: in flight towards Meta right now.
    async fn sends_in_flight(&self) -> usize {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM alphadome.outbound_messages WHERE state = 'sending' AND claimed_until > now()",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap_or(0) as usize
    }

    /// Strikes `f`; returns the sends in flight at a sender kill.
    async fn strike(&mut self, f: &Fault) -> usize {
        match f {
            Fault::None | Fault::Copies(_) => 0,
            Fault::Kill(which) => {
                let before = if *which == "sender" {
                    self.sends_in_flight().await
                } else {
                    0
                };
                let p = match *which {
                    "ingress" => &mut self.ingress,
                    "responder" => &mut self.responder,
                    "sender" => &mut self.sender,
                    _ => &mut self.logger,
                };
                p.kill();
                let after = if *which == "sender" {
                    // Frozen now: every claim still open was in flight.
                    self.sends_in_flight().await
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(500)).await;
                let p = match *which {
                    "ingress" => &mut self.ingress,
                    "responder" => &mut self.responder,
                    "sender" => &mut self.sender,
                    _ => &mut self.logger,
                };
                p.restart().await.unwrap();
                before.max(after)
            }
            Fault::NatsRestart => {
                self.nats.stop();
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.nats.resume().await;
                0
            }
            Fault::PostgresDown(d) => {
                self.pg.stop();
                tokio::time::sleep(*d).await;
                self.pg.resume().await;
                0
            }
            Fault::Graph(b) => {
                self.graph.fail_for(Duration::from_secs(3), b.clone());
                0
            }
        }
    }
}

enum Fault {
    None,
    Kill(&'static str),
    NatsRestart,
    PostgresDown(Duration),
    Graph(Behaviour),
    /// Every webhook delivered this many times.
    Copies(usize),
}

/// Runs one fault: a stream of messages, the fault striking halfway.
async fn fault(w: &mut World, name: &str, f: Fault) -> Counts {
    let run = format!(
        "f{}",
        uuid::Uuid::new_v4().simple().to_string().get(..6).unwrap()
    );
    let shots = w.shots(&run);
    let copies = if let Fault::Copies(n) = f { n } else { 1 };
    let flow = tokio::spawn(deliver(w.webhook_url(), shots, copies));
    tokio::time::sleep(GAP * (PER_FAULT as u32 / 2)).await;
    let in_flight = w.strike(&f).await;
    let accepted = flow.await.unwrap();
    w.check(name, &run, &accepted, in_flight).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_loses_nothing_and_doubles_nothing() {
    let mut w = World::start().await;
    let faults = [
        ("none (baseline)", Fault::None),
        ("SIGKILL ingress", Fault::Kill("ingress")),
        ("SIGKILL responder", Fault::Kill("responder")),
        ("SIGKILL logger", Fault::Kill("logger")),
        ("SIGKILL sender", Fault::Kill("sender")),
        ("NATS restart", Fault::NatsRestart),
        (
            "Postgres stopped for 30 s",
            Fault::PostgresDown(Duration::from_secs(30)),
        ),
        (
            "Graph 429 (130429) for 3 s",
            Fault::Graph(Behaviour::Error {
                status: 429,
                code: 130429,
            }),
        ),
        (
            "Graph 131056 (pair limit) for 3 s",
            Fault::Graph(Behaviour::Error {
                status: 400,
                code: 131056,
            }),
        ),
        (
            "Graph 500 for 3 s",
            Fault::Graph(Behaviour::Error {
                status: 500,
                code: 131000,
            }),
        ),
        (
            "Graph timing out for 3 s",
            Fault::Graph(Behaviour::Hang(Duration::from_secs(3))),
        ),
        ("every webhook 3 times", Fault::Copies(3)),
    ];
    let mut results = Vec::new();
    for (name, f) in faults {
        let c = fault(&mut w, name, f).await;
        results.push((name, c));
    }

    // Much later, after a restart of everything: Meta delivers every
    // earlier webhook once more. Nothing new may be sent or logged.
    let replies_before = w.graph.accepted();
    let logs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_message_logs")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    for p in [
        &mut w.ingress,
        &mut w.responder,
        &mut w.sender,
        &mut w.logger,
    ] {
        p.kill();
        p.restart().await.unwrap();
    }
    let history = w.history.clone();
    let n = history.len();
    let accepted = deliver(w.webhook_url(), history, 1).await;
    assert!(accepted.iter().all(|a| *a), "late re-deliveries refused");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let replies_after = w.graph.accepted();
    let logs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_message_logs")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    println!(
        "{:<34} sent {n:>3}  accepted {:>3}  new replies {}  new log rows {}",
        "late re-delivery after restart",
        accepted.len(),
        replies_after - replies_before,
        logs_after - logs_before
    );
    assert_eq!(
        replies_after, replies_before,
        "a late re-delivery was answered again"
    );
    assert_eq!(
        logs_after, logs_before,
        "a late re-delivery was logged again"
    );

    for (name, c) in &results {
        assert_eq!(
            c.accepted, c.sent,
            "{name}: Meta's retries were not all accepted: {c:?}"
        );
        assert_eq!(c.lost, 0, "{name}: messages lost: {c:?}");
        assert_eq!(c.duplicated, 0, "{name}: replies doubled: {c:?}");
        assert!(c.in_flight_repeats <= c.in_flight_at_kill, "{name}: {c:?}");
        assert_eq!(c.logged_in, c.accepted, "{name}: incoming rows: {c:?}");
        assert_eq!(c.logged_out, c.accepted, "{name}: outgoing rows: {c:?}");
    }
}
