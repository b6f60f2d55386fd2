//! The pipeline's floor: the database's work per message (each statement
//! through the owning service's store, as its role), the broker's traffic
//! per message (through the services' own consumer code), and both with
//! the HTTP requests of each message at once, with no platform code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_core::bus::{Bus, StreamKind};
use alphadome_core::events::v1::{Direction, LogEvent};
use alphadome_core::events::Message as _;
use alphadome_testkit::fixtures::{nats_url, TestNats};
use alphadome_testkit::load::{self, LoadTenant};
use anyhow::bail;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use crate::ceilings::{ceiling_http, publish_inbound};
use crate::env::{count_logs, run_id, Env};
use crate::report::{named, Line};

/// Messages per batch call in the database's pipeline ceiling: about the
/// claim batches the sender makes at its sustained rate (admissions run
/// larger, records smaller; docs/benchmarks.md).
pub(crate) const CEILING_DB_BATCH: usize = 64;

/// Batches in flight at once in the database's pipeline ceiling.
pub(crate) const CEILING_DB_WORKERS: usize = 4;

/// One batch of the database ceiling's messages.
struct DbBatch {
    idx: Vec<usize>,
    tenant: Vec<uuid::Uuid>,
    user: Vec<String>,
    wamid: Vec<String>,
}

impl DbBatch {
    fn new(range: std::ops::Range<usize>, tenants: &[LoadTenant], run: &str) -> Self {
        let idx: Vec<usize> = range.collect();
        Self {
            tenant: idx.iter().map(|i| tenants[i % tenants.len()].id).collect(),
            user: idx.iter().map(|i| format!("2547{:08}", i % 1000)).collect(),
            wamid: idx.iter().map(|i| format!("wamid.dbc.{run}.{i}")).collect(),
            idx,
        }
    }

    /// The responder's record of every message in its customer's session
    /// (no debounce, as the load tenants).
    async fn touch(&self, responder: &sqlx::PgPool) -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        let reqs = self
            .tenant
            .iter()
            .zip(&self.user)
            .zip(&self.wamid)
            .map(|((t, u), w)| (*t, u.clone(), w.clone(), now, "opening hours".to_owned(), 0))
            .collect();
        let mut conn = responder.acquire().await?;
        let touched = alphadome_core::conversation::touch_batch(&mut conn, reqs).await?;
        anyhow::ensure!(
            touched.len() == self.idx.len(),
            "touched {} of {}",
            touched.len(),
            self.idx.len()
        );
        Ok(())
    }

    /// The responder's admission of every message (generous limits).
    async fn admit(&self, responder: &sqlx::PgPool) -> anyhow::Result<()> {
        let reqs = self
            .tenant
            .iter()
            .zip(&self.user)
            .zip(&self.wamid)
            .map(|((t, u), w)| (*t, u.clone(), w.clone(), Some(1_000_000), Some(1_000_000)))
            .collect();
        let mut conn = responder.acquire().await?;
        let admitted = alphadome_responder::store::admit_batch(&mut conn, reqs).await?;
        anyhow::ensure!(
            admitted.len() == self.idx.len(),
            "admitted {} of {}",
            admitted.len(),
            self.idx.len()
        );
        Ok(())
    }

    /// The sender's claim and record of every reply; the wamids Meta
    /// would have given them.
    async fn claim_and_record(&self, sender: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
        let reply: Vec<String> = self.wamid.iter().map(|w| format!("reply:{w}")).collect();
        let mut conn = sender.acquire().await?;
        let claims = self
            .tenant
            .iter()
            .zip(&reply)
            .zip(&self.wamid)
            .map(|((t, r), w)| (*t, r.clone(), w.clone()))
            .collect();
        let claimed =
            alphadome_sender::store::claim_batch(&mut conn, claims, Duration::from_secs(60))
                .await?;
        anyhow::ensure!(claimed.iter().all(|(_, c)| c.0), "a claim was refused");
        let sent: Vec<String> = self.wamid.iter().map(|w| format!("{w}.out")).collect();
        let records = self
            .tenant
            .iter()
            .zip(&reply)
            .zip(&sent)
            .map(|((t, r), s)| (*t, r.clone(), 1, Some(s.clone()), 1))
            .collect();
        alphadome_sender::store::record_batch(&mut conn, records).await?;
        Ok(sent)
    }

    /// The log batch: the incoming and the outgoing row of each message.
    fn log_events(&self, sent: &[String]) -> Vec<LogEvent> {
        let now = alphadome_core::events::now_ms();
        let mut events = Vec::with_capacity(2 * self.idx.len());
        for (k, i) in self.idx.iter().enumerate() {
            let (t, u, w) = (&self.tenant[k], &self.user[k], &self.wamid[k]);
            let row =
                |direction: Direction, key: String, wamid: &str, text: String, raw: String| {
                    LogEvent {
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
                    }
                };
            events.push(row(
                Direction::Incoming,
                format!("in:{w}"),
                w,
                load::customer_text(*i),
                format!(r#"{{"from":"{u}","type":"text"}}"#),
            ));
            events.push(row(
                Direction::Outgoing,
                format!("out:{w}"),
                &sent[k],
                "About the price of our guitars: ask at the counter.".into(),
                String::new(),
            ));
        }
        events
    }
}

/// The database's ceiling for the whole pipeline: every message's
/// statements as the services make them, each as its service's role
/// (admission as the responder, claim and record as the sender, the
/// customer lookup and both log rows with their mirrors as the logger), in
/// batches of `CEILING_DB_BATCH`, `CEILING_DB_WORKERS` at once with one
/// admission at a time (as the responder does), and nothing else running:
/// no HTTP, no NATS, no platform. The pipeline cannot be faster than this
/// on the same machine. With `part`, it waits at that barrier after its
/// set-up and runs as one part of the pipeline's floor.
pub(crate) async fn ceiling_db_pipeline(
    messages: usize,
    part: Option<&Barrier>,
) -> anyhow::Result<Line> {
    use alphadome_core::db::{connect_as, ServiceRole};
    let env = Env::new().await;
    let tenants = Arc::new(env.tenants(100, 0).await?);
    let url = secrecy::SecretString::from(env.db.url.clone());
    let n = CEILING_DB_WORKERS as u32;
    let responder = connect_as(&url, ServiceRole::Responder, n).await?;
    let sender = connect_as(&url, ServiceRole::Sender, n).await?;
    let logger = connect_as(&url, ServiceRole::Logger, n).await?;
    // The customers, resolved before (as after the first minute of traffic).
    alphadome_logger::store::register_users(&env.db.pool, &customers()).await?;
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
                let batch = DbBatch::new(
                    from..(from + CEILING_DB_BATCH).min(messages),
                    &tenants,
                    &run,
                );
                // Each step through its owner's store, as that service's role.
                {
                    let _one_at_a_time = admission.lock().await;
                    batch.touch(&responder).await?;
                    batch.admit(&responder).await?;
                }
                let sent = batch.claim_and_record(&sender).await?;
                alphadome_logger::write_events(&logger, batch.log_events(&sent)).await?;
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
            "the database's work per message alone (session, admission, claim, record, two log rows and their mirrors)",
        ),
        messages as f64 / secs,
        "msg/s",
        format!(
            "{messages} messages, 100 tenants x 1,000 customers, batches of {CEILING_DB_BATCH}, {CEILING_DB_WORKERS} at once, one admission at a time, each as its service's role"
        ),
    ))
}

/// A floor stand-in's outcome: ack once its publishes are acknowledged,
/// otherwise try again shortly.
pub(crate) fn published(
    r: Result<bool, alphadome_core::bus::BusError>,
) -> alphadome_core::bus::Outcome {
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
pub(crate) async fn broker_traffic(
    messages: usize,
    part: Option<&Barrier>,
) -> anyhow::Result<Line> {
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
pub(crate) async fn ceiling_floor(messages: usize) -> anyhow::Result<Line> {
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

/// The 1,000 customers of the database ceilings.
pub(crate) fn customers() -> Vec<String> {
    (0..1000).map(|i| format!("2547{i:08}")).collect()
}
