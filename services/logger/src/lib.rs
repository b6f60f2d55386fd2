//! logger: persists every inbound and outbound message to
//! `alphadome.bot_message_logs` in batches (one `INSERT ... SELECT FROM
//! UNNEST` per batch, idempotent by `dedup_key`), mirrors each new row to
//! `public.conversations` with the tenant's `brand_id` so the existing
//! system keeps working, and applies delivery statuses to outgoing rows
//! without ever moving a row back to a lower state.
//!
//! A database outage delays writes and loses nothing: the batch is nak'ed
//! and redelivered with backoff; only a message that fails on its own
//! (isolated by retrying the batch row by row) is dead-lettered.

use std::time::Duration;

use alphadome_core::bus::{self, Bus, ConsumerSettings, MessageMeta, Outcome, StreamKind};
use alphadome_core::events::v1::{Direction, LogEvent, StatusUpdate};
use alphadome_core::events::Message as _;
use alphadome_core::CancellationToken;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;

/// Durable consumer on the log stream.
pub const LOG_CONSUMER: &str = "logger";
/// Durable consumer on the status stream.
pub const STATUS_CONSUMER: &str = "logger-status";

/// The logger's consumer settings: big batches, and practically unlimited
/// deliveries, since its failures are database outages, not bad messages.
pub fn settings() -> ConsumerSettings {
    ConsumerSettings {
        ack_wait: Duration::from_secs(15),
        max_ack_pending: 20_000,
        max_deliver: 10_000,
        concurrency: 1000,
    }
}

/// Why a batch failed.
enum BatchError {
    /// The database is unreachable or overloaded: retry everything later.
    Unavailable(sqlx::Error),
    /// The database refused the data: isolate the bad message.
    Refused(sqlx::Error),
}

fn classify(e: sqlx::Error) -> BatchError {
    match e {
        sqlx::Error::Database(ref d) if !matches!(d.code().as_deref(), Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53")) => {
            BatchError::Refused(e)
        }
        other => BatchError::Unavailable(other),
    }
}

/// Postgres text can't hold NUL.
fn clean(s: &str) -> String {
    s.replace('\0', "")
}

/// JSON for a jsonb column: NUL escapes removed, non-objects wrapped.
fn json(s: &str) -> Option<serde_json::Value> {
    if s.trim().is_empty() {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&s.replace("\\u0000", "")).ok()
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| clean(s))
}

/// Runs both consumers until `shutdown`.
pub async fn run(db: PgPool, bus: Bus, shutdown: CancellationToken) -> Result<(), bus::BusError> {
    let s = settings();
    let logs = bus.consumer(StreamKind::Log, LOG_CONSUMER, s).await?;
    let statuses = bus.consumer(StreamKind::Status, STATUS_CONSUMER, s).await?;
    let a = consume(
        db.clone(),
        bus.clone(),
        StreamKind::Log,
        logs,
        shutdown.clone(),
    );
    let b = consume(db, bus, StreamKind::Status, statuses, shutdown);
    let (a, b) = futures_util::future::join(a, b).await;
    a.and(b)
}

async fn consume(
    db: PgPool,
    bus: Bus,
    kind: StreamKind,
    consumer: jetstream::consumer::PullConsumer,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    let s = settings();
    let stream_name = bus.stream_name(kind);
    while !shutdown.is_cancelled() {
        let messages = match consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream = %stream_name, error = %e, "pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut messages = std::pin::pin!(messages);
        // Up to PARALLEL_BATCHES batches are written at once, each in its
        // own transaction, so the database is never idle while a batch's
        // acks go out or the next one is pulled. Order does not matter:
        // rows carry their own time, statuses never regress.
        //
        // A batch goes when it is full, or LINGER after its first message:
        // a log row is nobody's reply, and one statement for 40 rows costs
        // the database a fraction of 40 statements (at 1,000 messages/s the
        // logger's one-row statements were its biggest load). Messages are
        // taken one at a time into `pending`, outside the select, so a
        // branch that wins never drops a half-gathered batch.
        let mut writing = futures_util::stream::FuturesUnordered::new();
        let mut pending: Vec<jetstream::Message> = Vec::new();
        let mut due: Option<tokio::time::Instant> = None;
        let mut ended = false;
        loop {
            let ready = !pending.is_empty()
                && (pending.len() >= BATCH
                    || ended
                    || due.is_some_and(|d| d <= tokio::time::Instant::now()));
            if ready && writing.len() < PARALLEL_BATCHES {
                let batch = std::mem::take(&mut pending);
                due = None;
                let (db, bus, stream_name) = (db.clone(), bus.clone(), stream_name.clone());
                writing.push(write_and_settle(db, bus, stream_name, kind, s, batch));
                continue;
            }
            if ended && pending.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = writing.next(), if !writing.is_empty() => {}
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() && !ready => {}
                m = messages.next(), if pending.len() < BATCH && !ended => match m {
                    Some(Ok(m)) => {
                        if pending.is_empty() {
                            due = Some(tokio::time::Instant::now() + LINGER);
                        }
                        pending.push(m);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(stream = %stream_name, error = %e, "pull stream error");
                    }
                    None => ended = true,
                },
            }
        }
        // What was gathered is written before stopping (graceful shutdown
        // finishes the work in hand).
        if !pending.is_empty() {
            let (db, bus, stream_name) = (db.clone(), bus.clone(), stream_name.clone());
            writing.push(write_and_settle(db, bus, stream_name, kind, s, pending));
        }
        while writing.next().await.is_some() {}
        if shutdown.is_cancelled() {
            bus::hand_back(&mut messages, BATCH).await;
        }
    }
    Ok(())
}

/// Writes one batch and acks (or naks, or dead-letters) each message.
async fn write_and_settle(
    db: PgPool,
    bus: Bus,
    stream_name: String,
    kind: StreamKind,
    s: ConsumerSettings,
    batch: Vec<jetstream::Message>,
) {
    let outcomes = match kind {
        StreamKind::Status => apply_statuses(&db, &batch).await,
        _ => write_logs(&db, &batch).await,
    };
    let settle = batch.iter().zip(outcomes).map(|(msg, outcome)| {
        let meta = MessageMeta {
            subject: msg.subject.to_string(),
            delivered: msg.info().map(|i| i.delivered).unwrap_or(1),
            headers: msg.headers.clone(),
        };
        let (bus, stream_name) = (&bus, &stream_name);
        async move { bus::settle(bus, stream_name, &s, msg, &meta, outcome).await }
    });
    futures_util::future::join_all(settle).await;
}

/// Most messages in one batch.
const BATCH: usize = 1000;

/// How long a batch waits for more messages after its first.
const LINGER: Duration = Duration::from_millis(20);

/// Batches written at once by one consumer.
pub const PARALLEL_BATCHES: usize = 4;

fn backoff(msg: &jetstream::Message) -> Duration {
    let n = msg.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 6) as u32;
    Duration::from_secs(1u64 << (n - 1)).min(Duration::from_secs(30))
}

/// One decoded log row.
struct Row {
    tenant: Uuid,
    event: LogEvent,
}

impl Row {
    /// The event with its tenant id parsed; why not, when it is no uuid.
    fn of(event: LogEvent) -> Result<Self, String> {
        match Uuid::parse_str(&event.tenant_id) {
            Ok(tenant) => Ok(Self { tenant, event }),
            Err(_) => Err(format!("tenant id {:?} is not a uuid", event.tenant_id)),
        }
    }
}

async fn write_logs(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut index = Vec::new();
    for (i, msg) in batch.iter().enumerate() {
        match LogEvent::decode(msg.payload.clone()) {
            Ok(event) => match Row::of(event) {
                Ok(row) => {
                    rows.push(row);
                    index.push(i);
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(Outcome::Poison { reason })),
            },
            Err(e) => outcomes.push(Some(Outcome::Poison {
                reason: format!("undecodable LogEvent: {e}"),
            })),
        }
    }
    match insert_rows(db, &rows).await {
        Ok(()) => {
            for i in index {
                outcomes[i] = Some(Outcome::Ack);
            }
        }
        Err(BatchError::Unavailable(e)) => {
            tracing::warn!(error = %e, rows = rows.len(), "database unavailable; log batch will be retried");
            for i in index {
                outcomes[i] = Some(Outcome::Retry {
                    delay: backoff(&batch[i]),
                    reason: format!("database unavailable: {e}"),
                });
            }
        }
        Err(BatchError::Refused(e)) if rows.len() == 1 => {
            if let Some(&i) = index.first() {
                outcomes[i] = Some(Outcome::Poison {
                    reason: format!("database refused the log row: {e}"),
                });
            }
        }
        Err(BatchError::Refused(e)) => {
            tracing::warn!(error = %e, "database refused a log batch; writing its rows one by one");
            for (row, i) in rows.into_iter().zip(index) {
                outcomes[i] = Some(match insert_rows(db, std::slice::from_ref(&row)).await {
                    Ok(()) => Outcome::Ack,
                    Err(BatchError::Unavailable(e)) => Outcome::Retry {
                        delay: backoff(&batch[i]),
                        reason: e.to_string(),
                    },
                    Err(BatchError::Refused(e)) => Outcome::Poison {
                        reason: format!("database refused the log row: {e}"),
                    },
                });
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Ack))
        .collect()
}

async fn insert_rows(db: &PgPool, rows: &[Row]) -> Result<(), BatchError> {
    if rows.is_empty() {
        return Ok(());
    }
    // Resolve (or register) the customers in public.users, as the existing
    // system does. Phones seen before are looked up in
    // alphadome.customer_users (an index probe each): public.users has no
    // index on phone, and scanning it for every batch cost the database
    // O(users x batch).
    let mut phones: Vec<String> = rows
        .iter()
        .map(|r| clean(&r.event.user_phone))
        .filter(|p| !p.is_empty())
        .collect();
    phones.sort();
    phones.dedup();
    let mut users: std::collections::HashMap<String, Uuid> = std::collections::HashMap::new();
    if !phones.is_empty() {
        let mut conn = db.acquire().await.map_err(classify)?;
        users.extend(mapped_users(&mut conn, &phones).await?);
    }
    // Customers the logger has not seen are resolved (or registered) in a
    // short transaction of their own, under an advisory lock per new phone
    // (taken in order), so concurrent batches never register one twice and
    // never wait on each other for longer than that registration.
    let missing = unknown(&phones, &users);
    if !missing.is_empty() {
        let mut reg = db.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('alphadome.users:' || p)) FROM unnest($1::text[]) AS p ORDER BY p")
            .bind(&missing)
            .execute(&mut *reg)
            .await
            .map_err(classify)?;
        // Another batch may have resolved them while this one waited.
        users.extend(mapped_users(&mut reg, &missing).await?);
        let unmapped = unknown(&missing, &users);
        if !unmapped.is_empty() {
            let mut resolved: std::collections::HashMap<String, Uuid> =
                known_users(&mut reg, &unmapped)
                    .await?
                    .into_iter()
                    .collect();
            let still = unknown(&unmapped, &resolved);
            if !still.is_empty() {
                let created: Vec<(String, Uuid)> = sqlx::query_as(
                    "INSERT INTO public.users (phone, full_name) SELECT p, 'Unknown User' FROM unnest($1::text[]) AS p RETURNING phone, id",
                )
                .bind(&still)
                .fetch_all(&mut *reg)
                .await
                .map_err(classify)?;
                resolved.extend(created);
            }
            let (p, u): (Vec<&str>, Vec<Uuid>) =
                resolved.iter().map(|(p, u)| (p.as_str(), *u)).unzip();
            sqlx::query(
                "INSERT INTO alphadome.customer_users (phone, user_id) SELECT * FROM unnest($1::text[], $2::uuid[]) ON CONFLICT (phone) DO NOTHING",
            )
            .bind(&p)
            .bind(&u)
            .execute(&mut *reg)
            .await
            .map_err(classify)?;
            users.extend(resolved);
        }
        reg.commit().await.map_err(classify)?;
    }
    insert_logs(db, rows, &users).await
}

/// The phones of `phones` that `known` has no user for.
fn unknown(phones: &[String], known: &std::collections::HashMap<String, Uuid>) -> Vec<String> {
    phones
        .iter()
        .filter(|p| !known.contains_key(*p))
        .cloned()
        .collect()
}

/// Writes `events` exactly as the logger writes a batch (customers
/// resolved, one statement for the rows of any tenants, new rows mirrored
/// to public.conversations), outside any consumer. alphadome-bench measures
/// the database's ceiling through it.
pub async fn write_events(db: &PgPool, events: Vec<LogEvent>) -> Result<(), sqlx::Error> {
    let rows = events
        .into_iter()
        .map(|event| Row::of(event).map_err(|e| sqlx::Error::Decode(e.into())))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    insert_rows(db, &rows).await.map_err(|e| match e {
        BatchError::Unavailable(e) | BatchError::Refused(e) => e,
    })
}

/// The `public.users` ids of `phones` the logger has resolved before.
async fn mapped_users(
    conn: &mut sqlx::PgConnection,
    phones: &[String],
) -> Result<Vec<(String, Uuid)>, BatchError> {
    sqlx::query_as("SELECT phone, user_id FROM alphadome.customer_users WHERE phone = ANY($1)")
        .bind(phones)
        .fetch_all(conn)
        .await
        .map_err(classify)
}

/// The `public.users` ids of `phones` that are registered (a scan of
/// public.users: only for phones not in alphadome.customer_users).
async fn known_users(
    tx: &mut sqlx::PgConnection,
    phones: &[String],
) -> Result<Vec<(String, Uuid)>, BatchError> {
    sqlx::query_as(
        "SELECT DISTINCT ON (phone) phone, id FROM public.users WHERE phone = ANY($1) ORDER BY phone, created_at NULLS LAST, id",
    )
    .bind(phones)
    .fetch_all(tx)
    .await
    .map_err(classify)
}

/// Inserts the rows of any tenants in one statement and mirrors the new
/// ones to public.conversations (`alphadome.write_message_logs`, migration
/// 0010: it checks each row's tenant and training row, and inserts only).
async fn insert_logs(
    db: &PgPool,
    rows: &[Row],
    users: &std::collections::HashMap<String, Uuid>,
) -> Result<(), BatchError> {
    let n = rows.len();
    let mut tenant = Vec::with_capacity(n);
    let mut phone = Vec::with_capacity(n);
    let mut user = Vec::with_capacity(n);
    let mut direction = Vec::with_capacity(n);
    let mut text = Vec::with_capacity(n);
    let mut wamid = Vec::with_capacity(n);
    let mut ai = Vec::with_capacity(n);
    let mut ai_response = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut template = Vec::with_capacity(n);
    let mut training = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    for r in rows {
        let e = &r.event;
        tenant.push(r.tenant);
        let p = clean(&e.user_phone);
        user.push(users.get(&p).copied());
        phone.push((!p.is_empty()).then_some(p));
        direction.push(if e.direction == Direction::Outgoing as i32 {
            "outgoing"
        } else {
            "incoming"
        });
        text.push(opt(&e.message_text));
        wamid.push(opt(&e.wamid));
        ai.push(e.ai_processed);
        ai_response.push(opt(&e.ai_response));
        error.push(opt(&e.error_message));
        template.push(opt(&e.template_used));
        training.push(Uuid::parse_str(&e.training_data_id).ok());
        metadata.push(
            json(&e.metadata_json)
                .filter(|v| v.is_object())
                .unwrap_or_else(|| serde_json::json!({})),
        );
        at.push(
            DateTime::<Utc>::from_timestamp_millis(e.occurred_at_ms)
                .filter(|_| e.occurred_at_ms > 0)
                .unwrap_or_else(Utc::now),
        );
        key.push(clean(&e.dedup_key));
        raw.push(json(&e.raw_json));
    }
    // One statement: insert the rows, and mirror to public.conversations
    // only those inserted just now (a redelivery mirrors nothing twice).
    sqlx::query(
        "SELECT alphadome.write_message_logs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&tenant)
    .bind(&phone)
    .bind(&user)
    .bind(&direction)
    .bind(&text)
    .bind(&wamid)
    .bind(&ai)
    .bind(&ai_response)
    .bind(&error)
    .bind(&template)
    .bind(&training)
    .bind(&metadata)
    .bind(&at)
    .bind(&key)
    .bind(&raw)
    .execute(db)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Deliveries after which a status for a message the platform never logged
/// (sent from elsewhere, or its log row was not written) is dropped.
const UNKNOWN_STATUS_DELIVERIES: i64 = 8;

/// What a status update writes.
struct StatusRow {
    tenant: Uuid,
    wamid: String,
    status: String,
    at: DateTime<Utc>,
    error: Option<String>,
    callback: String,
}

impl StatusRow {
    /// `None` when the status names no valid tenant (nothing to write).
    fn of(st: &StatusUpdate) -> Option<Self> {
        let tenant = Uuid::parse_str(&st.tenant_id).ok()?;
        Some(Self {
            tenant,
            wamid: clean(&st.wamid),
            status: clean(&st.status),
            at: DateTime::<Utc>::from_timestamp(st.timestamp, 0)
                .filter(|_| st.timestamp > 0)
                .unwrap_or_else(Utc::now),
            error: (st.error_code != 0).then(|| {
                clean(format!("{}: {} {}", st.error_code, st.error_title, st.error_details).trim())
            }),
            callback: clean(&st.callback_data),
        })
    }
}

/// Applies a batch of statuses in one call (`alphadome.apply_status_batch`,
/// migration 0010); when the database refuses the batch, each status alone,
/// so only the bad one is dead-lettered.
async fn apply_statuses(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut found: Vec<Option<Result<bool, sqlx::Error>>> = Vec::with_capacity(batch.len());
    let mut rows: Vec<(usize, StatusRow)> = Vec::new();
    let mut out: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    for (i, msg) in batch.iter().enumerate() {
        found.push(None);
        match StatusUpdate::decode(msg.payload.clone()) {
            Err(e) => out.push(Some(Outcome::Poison {
                reason: format!("undecodable StatusUpdate: {e}"),
            })),
            Ok(st) => {
                out.push(None);
                match StatusRow::of(&st) {
                    Some(row) => rows.push((i, row)),
                    None => found[i] = Some(Ok(true)),
                }
            }
        }
    }
    if !rows.is_empty() {
        let all: Vec<&StatusRow> = rows.iter().map(|(_, r)| r).collect();
        match apply_status_batch(db, &all).await {
            Ok(flags) => {
                for ((i, _), f) in rows.iter().zip(flags) {
                    found[*i] = Some(Ok(f));
                }
            }
            Err(e) => match classify(e) {
                BatchError::Unavailable(e) => {
                    tracing::warn!(error = %e, statuses = rows.len(), "database unavailable; statuses will be retried");
                    for (i, _) in &rows {
                        out[*i] = Some(Outcome::Retry {
                            delay: backoff(&batch[*i]),
                            reason: format!("database unavailable: {e}"),
                        });
                    }
                }
                BatchError::Refused(e) => {
                    tracing::warn!(error = %e, "database refused a status batch; applying them one by one");
                    for (i, row) in &rows {
                        found[*i] = Some(
                            apply_status_batch(db, &[row])
                                .await
                                .map(|f| f.first().copied().unwrap_or(false)),
                        );
                    }
                }
            },
        }
    }
    out.into_iter()
        .zip(found)
        .zip(batch)
        .map(|((o, f), msg)| match (o, f) {
            (Some(o), _) => o,
            (None, Some(f)) => status_outcome(msg, f),
            (None, None) => Outcome::Retry {
                delay: backoff(msg),
                reason: "status not applied".into(),
            },
        })
        .collect()
}

fn status_outcome(msg: &jetstream::Message, applied: Result<bool, sqlx::Error>) -> Outcome {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    match applied {
        Ok(true) => Outcome::Ack,
        Ok(false) if delivered >= UNKNOWN_STATUS_DELIVERIES => {
            tracing::warn!("status for a message with no outgoing log row; dropped");
            Outcome::Ack
        }
        Ok(false) => Outcome::Retry {
            delay: Duration::from_secs(2),
            reason: "outgoing log row not written yet".into(),
        },
        Err(e) => match classify(e) {
            BatchError::Unavailable(e) => Outcome::Retry {
                delay: backoff(msg),
                reason: e.to_string(),
            },
            BatchError::Refused(e) => Outcome::Poison {
                reason: format!("database refused the status: {e}"),
            },
        },
    }
}

/// Whether each status's outgoing row exists, in order.
async fn apply_status_batch(db: &PgPool, rows: &[&StatusRow]) -> Result<Vec<bool>, sqlx::Error> {
    let n = rows.len();
    let (mut tenant, mut wamid, mut status, mut at, mut error, mut callback) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in rows {
        tenant.push(r.tenant);
        wamid.push(r.wamid.as_str());
        status.push(r.status.as_str());
        at.push(r.at);
        error.push(r.error.as_deref());
        callback.push(r.callback.as_str());
    }
    let found: Vec<(i32, bool)> =
        sqlx::query_as("SELECT * FROM alphadome.apply_status_batch($1, $2, $3, $4, $5, $6)")
            .bind(&tenant)
            .bind(&wamid)
            .bind(&status)
            .bind(&at)
            .bind(&error)
            .bind(&callback)
            .fetch_all(db)
            .await?;
    Ok(alphadome_core::batch::by_index(n, found)
        .into_iter()
        .map(|f| f.unwrap_or(false))
        .collect())
}
