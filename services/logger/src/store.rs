//! The logger's SQL. It owns the conversation log (`bot_message_logs`, and
//! its mirror in the live system's `public.conversations`), the customers it
//! registers in `public.users`, and `customer_users`, the map of phones it
//! has resolved. A batch of log rows of any tenants is one statement
//! (`alphadome.write_message_logs`); a batch of delivery statuses one call
//! (`alphadome.apply_status_batch`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The `public.users` ids of `phones` the logger has resolved before.
pub async fn mapped_users(
    conn: &mut PgConnection,
    phones: &[String],
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as("SELECT phone, user_id FROM alphadome.customer_users WHERE phone = ANY($1)")
        .bind(phones)
        .fetch_all(conn)
        .await
}

/// Resolves (or registers, as the existing system does: 'Unknown User')
/// customers the logger has not seen, in one short transaction under an
/// advisory lock per new phone (taken in order), so concurrent batches
/// never register one twice and never wait on each other for longer than
/// that registration. Returns the users of `phones`.
pub async fn register_users(
    db: &PgPool,
    phones: &[String],
) -> Result<HashMap<String, Uuid>, sqlx::Error> {
    let mut reg = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('alphadome.users:' || p)) FROM unnest($1::text[]) AS p ORDER BY p")
        .bind(phones)
        .execute(&mut *reg)
        .await?;
    // Another batch may have resolved them while this one waited.
    let mut users: HashMap<String, Uuid> =
        mapped_users(&mut reg, phones).await?.into_iter().collect();
    let unmapped = unknown(phones, &users);
    if !unmapped.is_empty() {
        // public.users has no index on phone: it is scanned only for phones
        // never seen before.
        let mut resolved: HashMap<String, Uuid> = sqlx::query_as(
            "SELECT DISTINCT ON (phone) phone, id FROM public.users WHERE phone = ANY($1) ORDER BY phone, created_at NULLS LAST, id",
        )
        .bind(&unmapped)
        .fetch_all(&mut *reg)
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
            .await?;
            resolved.extend(created);
        }
        let (p, u): (Vec<&str>, Vec<Uuid>) = resolved.iter().map(|(p, u)| (p.as_str(), *u)).unzip();
        sqlx::query(
            "INSERT INTO alphadome.customer_users (phone, user_id) SELECT * FROM unnest($1::text[], $2::uuid[]) ON CONFLICT (phone) DO NOTHING",
        )
        .bind(&p)
        .bind(&u)
        .execute(&mut *reg)
        .await?;
        users.extend(resolved);
    }
    reg.commit().await?;
    Ok(users)
}

/// The phones of `phones` that `known` has no user for.
pub fn unknown(phones: &[String], known: &HashMap<String, Uuid>) -> Vec<String> {
    phones
        .iter()
        .filter(|p| !known.contains_key(*p))
        .cloned()
        .collect()
}

/// The columns of a batch of log rows, as `alphadome.write_message_logs`
/// takes them.
#[derive(Debug, Default)]
pub struct LogColumns {
    pub tenant: Vec<Uuid>,
    pub phone: Vec<Option<String>>,
    pub user: Vec<Option<Uuid>>,
    pub direction: Vec<&'static str>,
    pub text: Vec<Option<String>>,
    pub wamid: Vec<Option<String>>,
    pub ai: Vec<bool>,
    pub ai_response: Vec<Option<String>>,
    pub error: Vec<Option<String>>,
    pub template: Vec<Option<String>>,
    pub training: Vec<Option<Uuid>>,
    pub metadata: Vec<serde_json::Value>,
    pub at: Vec<DateTime<Utc>>,
    pub key: Vec<String>,
    pub raw: Vec<Option<serde_json::Value>>,
}

/// Inserts the rows of any tenants in one statement and mirrors the new
/// ones to public.conversations; a redelivered row is neither inserted nor
/// mirrored again.
pub async fn write_message_logs(db: &PgPool, c: &LogColumns) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT alphadome.write_message_logs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&c.tenant)
    .bind(&c.phone)
    .bind(&c.user)
    .bind(&c.direction)
    .bind(&c.text)
    .bind(&c.wamid)
    .bind(&c.ai)
    .bind(&c.ai_response)
    .bind(&c.error)
    .bind(&c.template)
    .bind(&c.training)
    .bind(&c.metadata)
    .bind(&c.at)
    .bind(&c.key)
    .bind(&c.raw)
    .execute(db)
    .await
    .map(|_| ())
}

/// The columns of a batch of delivery statuses.
#[derive(Debug, Default)]
pub struct StatusColumns<'a> {
    pub tenant: Vec<Uuid>,
    pub wamid: Vec<&'a str>,
    pub status: Vec<&'a str>,
    pub at: Vec<DateTime<Utc>>,
    pub error: Vec<Option<&'a str>>,
    pub callback: Vec<&'a str>,
}

/// Applies a batch of statuses in one call: each outgoing row's status is
/// only ever raised. Returns, numbered from 1, whether each status's row
/// exists.
pub async fn apply_status_batch(
    db: &PgPool,
    c: &StatusColumns<'_>,
) -> Result<Vec<(i32, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM alphadome.apply_status_batch($1, $2, $3, $4, $5, $6)")
        .bind(&c.tenant)
        .bind(&c.wamid)
        .bind(&c.status)
        .bind(&c.at)
        .bind(&c.error)
        .bind(&c.callback)
        .fetch_all(db)
        .await
}

/// The columns of a batch of account events.
#[derive(Debug, Default)]
pub struct AccountColumns {
    pub tenant: Vec<Uuid>,
    pub account: Vec<String>,
    pub field: Vec<String>,
    pub event: Vec<Option<String>>,
    pub value: Vec<serde_json::Value>,
    pub key: Vec<String>,
    pub at: Vec<DateTime<Utc>>,
}

/// Keeps a batch of account events of any tenants in one call, each once
/// per tenant; returns how many were new.
pub async fn write_account_events(db: &PgPool, c: &AccountColumns) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.write_account_events($1, $2, $3, $4, $5, $6, $7)")
        .bind(&c.tenant)
        .bind(&c.account)
        .bind(&c.field)
        .bind(&c.event)
        .bind(&c.value)
        .bind(&c.key)
        .bind(&c.at)
        .fetch_one(db)
        .await
}

/// One kept account event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct AccountEventRow {
    pub business_account_id: String,
    pub field: String,
    pub event: Option<String>,
    pub value: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

/// A tenant's account events, newest first.
pub async fn account_events(
    db: &PgPool,
    tenant: Uuid,
    limit: i64,
) -> Result<Vec<AccountEventRow>, sqlx::Error> {
    let mut tx = alphadome_core::db::scoped(db, tenant).await?;
    let rows = sqlx::query_as(
        "SELECT business_account_id, field, event, value, received_at FROM alphadome.account_events \
         WHERE bot_tenant_id = $1 ORDER BY received_at DESC, created_at DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One day of a tenant's traffic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UsageDay {
    pub day: String,
    pub incoming: i64,
    pub outgoing: i64,
    pub ai_replies: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Messages, AI replies and tokens per day (UTC) since `since`.
pub async fn usage(
    db: &PgPool,
    tenant: Uuid,
    since: chrono::NaiveDate,
) -> Result<Vec<UsageDay>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    usage_in(&mut conn, tenant, since).await
}

/// [`usage`] on the caller's connection (or transaction acting for
/// `tenant`).
pub async fn usage_in(
    conn: &mut PgConnection,
    tenant: Uuid,
    since: chrono::NaiveDate,
) -> Result<Vec<UsageDay>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (created_at AT TIME ZONE 'UTC')::date::text AS day, \
           count(*) FILTER (WHERE direction = 'incoming') AS incoming, \
           count(*) FILTER (WHERE direction = 'outgoing') AS outgoing, \
           count(*) FILTER (WHERE direction = 'outgoing' AND ai_processed) AS ai_replies, \
           COALESCE(sum((metadata->'usage'->>'prompt_tokens')::bigint), 0)::bigint AS prompt_tokens, \
           COALESCE(sum((metadata->'usage'->>'completion_tokens')::bigint), 0)::bigint AS completion_tokens \
         FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1 AND created_at >= $2::date \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(conn)
    .await
}

/// The columns of a log row a person reads (the caller's row type has
/// these fields).
pub const MESSAGE_COLUMNS: &str = "id, user_phone, direction, message_text, whatsapp_message_id, \
    ai_processed, ai_response, error_message, template_used, training_data_id, metadata, created_at, \
    delivery_status, delivery_status_at";

/// Which of a tenant's log rows to read.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter<'a> {
    pub user: Option<&'a str>,
    pub direction: Option<&'a str>,
    /// Rows whose text contains this, ignoring case.
    pub text: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Rows strictly before this (time, id): the previous page's last row.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// `text` as a LIKE pattern matching it anywhere, its wildcards escaped.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A tenant's log rows, newest first, in the caller's transaction (acting
/// for `tenant`).
pub async fn messages<T>(
    conn: &mut PgConnection,
    tenant: Uuid,
    f: &MessageFilter<'_>,
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM alphadome.bot_message_logs \
         WHERE bot_tenant_id = $1 AND ($2::text IS NULL OR user_phone = $2) \
           AND ($3::text IS NULL OR direction = $3) \
           AND ($4::text IS NULL OR message_text ILIKE $4 OR ai_response ILIKE $4) \
           AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6) \
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8)) \
         ORDER BY created_at DESC, id DESC LIMIT $9"
    ))
    .bind(tenant)
    .bind(f.user)
    .bind(f.direction)
    .bind(f.text.map(contains_pattern))
    .bind(f.since)
    .bind(f.until)
    .bind(f.before.map(|b| b.0))
    .bind(f.before.map(|b| b.1))
    .bind(f.limit)
    .fetch_all(conn)
    .await
}

/// One customer's conversation with a tenant, as the inbox lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ConversationRow {
    pub user_phone: String,
    pub last_direction: String,
    pub last_text: Option<String>,
    pub last_at: DateTime<Utc>,
    /// The customer's last message: Meta's 24-hour window runs from it.
    pub last_incoming_at: Option<DateTime<Utc>>,
    pub messages: i64,
}

/// A tenant's conversations, the most recent first (at most `limit`), or
/// only `user`'s, in the caller's transaction (acting for `tenant`).
pub async fn conversations(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Option<&str>,
    limit: i64,
) -> Result<Vec<ConversationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT l.user_phone, l.direction AS last_direction, l.message_text AS last_text, \
           l.created_at AS last_at, c.last_incoming_at, c.messages \
         FROM (SELECT DISTINCT ON (user_phone) user_phone, direction, message_text, created_at \
               FROM alphadome.bot_message_logs \
               WHERE bot_tenant_id = $1 AND user_phone IS NOT NULL AND ($2::text IS NULL OR user_phone = $2) \
               ORDER BY user_phone, created_at DESC) l \
         JOIN (SELECT user_phone, count(*) AS messages, \
                 max(created_at) FILTER (WHERE direction = 'incoming') AS last_incoming_at \
               FROM alphadome.bot_message_logs \
               WHERE bot_tenant_id = $1 AND user_phone IS NOT NULL AND ($2::text IS NULL OR user_phone = $2) \
               GROUP BY user_phone) c USING (user_phone) \
         ORDER BY l.created_at DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(user)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One hour of a tenant's traffic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HourRow {
    pub hour: DateTime<Utc>,
    pub incoming: i64,
    pub outgoing: i64,
    /// Rows that carry an error (a failed delivery, a failed AI call).
    pub errors: i64,
}

/// How many replies were chosen for one reason (`faq_match`, `ai`,
/// `fallback`, `agent`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReasonCount {
    pub reason: String,
    pub replies: i64,
}

/// A question the bot could not answer (it fell back), how often it was
/// asked and when last.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Unanswered {
    pub question: String,
    pub times: i64,
    pub last_at: DateTime<Utc>,
}

/// A tenant's traffic since a time: per hour, replies by reason, reply
/// latency, and the questions that fell back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub since: DateTime<Utc>,
    pub hours: Vec<HourRow>,
    pub reasons: Vec<ReasonCount>,
    /// Milliseconds from Meta's webhook to the reply sent, median and 95th
    /// percentile (none without replies).
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub unanswered: Vec<Unanswered>,
}

/// [`Stats`] of `tenant` since `since`, in the caller's transaction
/// (acting for the tenant).
pub async fn stats(
    conn: &mut PgConnection,
    tenant: Uuid,
    since: DateTime<Utc>,
) -> Result<Stats, sqlx::Error> {
    let hours = sqlx::query_as(
        "SELECT date_trunc('hour', created_at) AS hour, \
           count(*) FILTER (WHERE direction = 'incoming') AS incoming, \
           count(*) FILTER (WHERE direction = 'outgoing') AS outgoing, \
           count(*) FILTER (WHERE error_message IS NOT NULL AND error_message <> '') AS errors \
         FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1 AND created_at >= $2 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let reasons = sqlx::query_as(
        "SELECT COALESCE(metadata->>'reason', 'other') AS reason, count(*) AS replies \
         FROM alphadome.bot_message_logs \
         WHERE bot_tenant_id = $1 AND created_at >= $2 AND direction = 'outgoing' \
         GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let (p50, p95): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (metadata->>'latency_ms')::float8), \
                percentile_cont(0.95) WITHIN GROUP (ORDER BY (metadata->>'latency_ms')::float8) \
         FROM alphadome.bot_message_logs \
         WHERE bot_tenant_id = $1 AND created_at >= $2 AND direction = 'outgoing' \
           AND jsonb_typeof(metadata->'latency_ms') = 'number'",
    )
    .bind(tenant)
    .bind(since)
    .fetch_one(&mut *conn)
    .await?;
    let unanswered = sqlx::query_as(
        "SELECT min(message_text) AS question, count(*) AS times, max(created_at) AS last_at \
         FROM alphadome.bot_message_logs \
         WHERE bot_tenant_id = $1 AND created_at >= $2 AND direction = 'incoming' \
           AND metadata->>'reason' IN ('fallback', 'ai_failed_fallback') \
           AND message_text IS NOT NULL AND message_text <> '' \
         GROUP BY lower(btrim(message_text)) ORDER BY 2 DESC, 3 DESC LIMIT 20",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Stats {
        since,
        hours,
        reasons,
        latency_p50_ms: p50,
        latency_p95_ms: p95,
        unanswered,
    })
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_text_is_matched_literally() {
        assert_eq!(contains_pattern("50%_off"), "%50\\%\\_off%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
