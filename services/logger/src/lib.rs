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
use alphadome_core::telemetry;
use alphadome_core::CancellationToken;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use tracing::Instrument;
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
            .max_messages_per_batch(1000)
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
        let mut writing = futures_util::stream::FuturesUnordered::new();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = writing.next(), if !writing.is_empty() => continue,
                c = next_chunk(&mut messages), if writing.len() < PARALLEL_BATCHES => c,
            };
            let Some(batch) = chunk else { break };
            if batch.is_empty() {
                continue;
            }
            let (db, bus, stream_name) = (db.clone(), bus.clone(), stream_name.clone());
            writing.push(async move {
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
            });
        }
        while writing.next().await.is_some() {}
        if shutdown.is_cancelled() {
            bus::hand_back(&mut messages, 1000).await;
        }
    }
    Ok(())
}

/// Batches written at once by one consumer.
pub const PARALLEL_BATCHES: usize = 4;

/// Waits for at least one message, then takes whatever else is already
/// buffered (up to a batch); `None` when the pull stream ended.
async fn next_chunk<S>(messages: &mut S) -> Option<Vec<jetstream::Message>>
where
    S: futures_util::Stream<
            Item = Result<jetstream::Message, jetstream::consumer::pull::MessagesError>,
        > + Unpin,
{
    let first = messages.next().await?;
    let mut batch: Vec<jetstream::Message> = match first {
        Ok(m) => vec![m],
        Err(e) => {
            tracing::warn!(error = %e, "pull stream error");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Some(Vec::new());
        }
    };
    while batch.len() < 1000 {
        match futures_util::FutureExt::now_or_never(messages.next()) {
            Some(Some(Ok(m))) => batch.push(m),
            Some(Some(Err(e))) => {
                tracing::warn!(error = %e, "pull stream error");
                break;
            }
            _ => break,
        }
    }
    Some(batch)
}

fn backoff(msg: &jetstream::Message) -> Duration {
    let n = msg.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 6) as u32;
    Duration::from_secs(1u64 << (n - 1)).min(Duration::from_secs(30))
}

/// One decoded log row.
struct Row {
    tenant: Uuid,
    event: LogEvent,
}

async fn write_logs(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut index = Vec::new();
    for (i, msg) in batch.iter().enumerate() {
        match LogEvent::decode(msg.payload.clone()) {
            Ok(event) => match Uuid::parse_str(&event.tenant_id) {
                Ok(tenant) => {
                    rows.push(Row { tenant, event });
                    index.push(i);
                    outcomes.push(None);
                }
                Err(_) => outcomes.push(Some(Outcome::Poison {
                    reason: format!("tenant id {:?} is not a uuid", event.tenant_id),
                })),
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
    // system does.
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
        users.extend(known_users(&mut conn, &phones).await?);
    }
    // Customers seen for the first time are registered in a short
    // transaction of their own, under an advisory lock per new phone (taken
    // in order), so concurrent batches never register one twice and never
    // wait on each other for longer than that registration.
    let missing: Vec<String> = phones
        .iter()
        .filter(|p| !users.contains_key(*p))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let mut reg = db.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('alphadome.users:' || p)) FROM unnest($1::text[]) AS p ORDER BY p")
            .bind(&missing)
            .execute(&mut *reg)
            .await
            .map_err(classify)?;
        users.extend(known_users(&mut reg, &missing).await?);
        let still: Vec<String> = missing
            .into_iter()
            .filter(|p| !users.contains_key(p))
            .collect();
        if !still.is_empty() {
            let created: Vec<(String, Uuid)> = sqlx::query_as(
                "INSERT INTO public.users (phone, full_name) SELECT p, 'Unknown User' FROM unnest($1::text[]) AS p RETURNING phone, id",
            )
            .bind(&still)
            .fetch_all(&mut *reg)
            .await
            .map_err(classify)?;
            users.extend(created);
        }
        reg.commit().await.map_err(classify)?;
    }
    let mut tx = db.begin().await.map_err(classify)?;
    // Row-level security: each tenant's rows are written with that tenant set.
    let mut groups: std::collections::BTreeMap<Uuid, Vec<&Row>> = std::collections::BTreeMap::new();
    for r in rows {
        groups.entry(r.tenant).or_default().push(r);
    }
    for (tenant, group) in groups {
        alphadome_core::db::set_tenant(&mut tx, tenant)
            .await
            .map_err(classify)?;
        insert_group(&mut tx, &group, &users).await?;
    }
    tx.commit().await.map_err(classify)
}

/// The `public.users` ids of `phones` that are registered.
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

/// Inserts one tenant's rows (the transaction acts for that tenant) and
/// mirrors the new ones to public.conversations.
async fn insert_group(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[&Row],
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
        "WITH u AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::bool[], \
                     $8::text[], $9::text[], $10::text[], $11::uuid[], $12::jsonb[], $13::timestamptz[], $14::text[], $15::jsonb[]) \
           AS u(tenant, phone, usr, direction, text, wamid, ai, ai_response, error, template, training, metadata, at, key, raw)), \
         ins AS ( \
           INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, user_id, direction, message_text, \
             whatsapp_message_id, ai_processed, ai_response, error_message, template_used, training_data_id, \
             metadata, created_at, dedup_key) \
           SELECT u.tenant, u.phone, u.usr, u.direction, u.text, u.wamid, u.ai, u.ai_response, u.error, u.template, \
             (SELECT d.id FROM alphadome.bot_training_data d WHERE d.id = u.training AND d.bot_tenant_id = u.tenant), \
             u.metadata, u.at, u.key \
           FROM u WHERE EXISTS (SELECT 1 FROM alphadome.bot_tenants t WHERE t.id = u.tenant) \
           ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key) \
         INSERT INTO public.conversations (brand_id, user_id, whatsapp_message_id, direction, raw_payload, message_text, created_at, updated_at) \
         SELECT t.brand_id, u.usr, u.wamid, u.direction, COALESCE(u.raw, u.metadata), u.text, u.at, u.at \
         FROM u JOIN ins ON ins.dedup_key = u.key JOIN alphadome.bot_tenants t ON t.id = u.tenant",
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
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Deliveries after which a status for a message the platform never logged
/// (sent from elsewhere, or its log row was not written) is dropped.
const UNKNOWN_STATUS_DELIVERIES: i64 = 8;

async fn apply_statuses(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(batch.len());
    for msg in batch {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        let outcome = match StatusUpdate::decode(msg.payload.clone()) {
            Err(e) => Outcome::Poison {
                reason: format!("undecodable StatusUpdate: {e}"),
            },
            Ok(st) => {
                let span = tracing::info_span!("logger.status", tenant_id = %st.tenant_id, wamid = %st.wamid, status = %st.status);
                telemetry::set_parent_from_headers(&span, msg.headers.as_ref());
                match apply_status(db, &st).instrument(span).await {
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
        };
        out.push(outcome);
    }
    out
}

/// Applies one status; `Ok(false)` when the outgoing row does not exist.
async fn apply_status(db: &PgPool, st: &StatusUpdate) -> Result<bool, sqlx::Error> {
    let Ok(tenant) = Uuid::parse_str(&st.tenant_id) else {
        return Ok(true);
    };
    let at = DateTime::<Utc>::from_timestamp(st.timestamp, 0)
        .filter(|_| st.timestamp > 0)
        .unwrap_or_else(Utc::now);
    let error = (st.error_code != 0).then(|| {
        clean(format!("{}: {} {}", st.error_code, st.error_title, st.error_details).trim())
    });
    let mut tx = alphadome_core::db::scoped(db, tenant).await?;
    let r: Option<(bool,)> = sqlx::query_as(
        "WITH target AS ( \
           SELECT id, delivery_status FROM alphadome.bot_message_logs \
           WHERE whatsapp_message_id = $1 AND bot_tenant_id = $2 AND direction = 'outgoing' \
           ORDER BY created_at LIMIT 1 FOR UPDATE), \
         upd AS ( \
           UPDATE alphadome.bot_message_logs l SET delivery_status = $3, delivery_status_at = $4, \
             error_message = COALESCE($5, l.error_message), \
             metadata = l.metadata || jsonb_build_object('status_' || $3 || '_at', $4::timestamptz) \
           FROM target WHERE l.id = target.id \
             AND alphadome.status_rank(target.delivery_status) < alphadome.status_rank($3) \
           RETURNING l.id) \
         SELECT true FROM target",
    )
    .bind(&st.wamid)
    .bind(tenant)
    .bind(&st.status)
    .bind(at)
    .bind(error)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.is_some())
}
