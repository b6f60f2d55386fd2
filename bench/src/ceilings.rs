//! The ceilings no implementation can beat on the machine: a bare HTTP
//! handler, acknowledged JetStream publishes, and COPY of the log rows
//! (one connection per core).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_core::bus::{Bus, StreamKind};
use alphadome_core::events::v1::InboundMessage;
use alphadome_core::events::Message as _;
use alphadome_testkit::fixtures::{nats_url, TestNats};
use alphadome_testkit::load::{self, LoadTenant, Pace, Percentiles};
use alphadome_testkit::proc::Proc;
use anyhow::{bail, Context as _};
use tokio::sync::Barrier;

use crate::env::{run_id, Env};
use crate::floor::customers;
use crate::report::{check, named, Line};

pub(crate) async fn bare_http() -> anyhow::Result<()> {
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
pub(crate) async fn ceiling_http(
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

pub(crate) fn inbound_payload(seq: usize) -> bytes::Bytes {
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
pub(crate) async fn publish_inbound(
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

pub(crate) async fn ceiling_broker(publishes: usize, concurrency: usize) -> anyhow::Result<Line> {
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
pub(crate) async fn copy_in(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    data: &str,
) -> anyhow::Result<u64> {
    let mut copy = conn.copy_in_raw(sql).await?;
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    Ok(copy.finish().await?)
}

pub(crate) async fn ceiling_copy(rows: usize) -> anyhow::Result<Line> {
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
pub(crate) async fn copy_at_once(
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
/// (measured: 42-53k rows/s on one connection, 110-115k on two, 75-90k
/// on four or eight, where the copies wait on each other's index pages).
/// `ALPHADOME_BENCH_COPY_CONNECTIONS` sets another number.
pub(crate) fn copy_connections() -> usize {
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
pub(crate) async fn ceiling_copy_logger(rows: usize) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(10, 0).await?;
    let brands: std::collections::HashMap<uuid::Uuid, Option<uuid::Uuid>> =
        sqlx::query_as("SELECT id, brand_id FROM alphadome.bot_tenants")
            .fetch_all(&env.db.pool)
            .await?
            .into_iter()
            .collect();
    let mut users: Vec<(String, uuid::Uuid)> =
        alphadome_logger::store::register_users(&env.db.pool, &customers())
            .await?
            .into_iter()
            .collect();
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
