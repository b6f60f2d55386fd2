//! The responder's SQL. It owns the limit records (`rate_limit_events`,
//! `rate_limit_counters`, `rate_limit_notices`) and the handoffs
//! (`conversation_handoffs`), and reads the conversation log only through
//! the functions its owner (the logger) grants it. The per-message paths
//! are one call of a SQL function each (`migrations/*_hot_path_functions.sql`).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use alphadome_core::db::scoped;

/// One message to admit: tenant, customer, wamid, per-hour and per-day
/// limits.
pub type AdmitRequest = (Uuid, String, String, Option<i32>, Option<i32>);
/// What admitting found: the wamid that started the customer's active
/// handoff, and the limit decision (`None`: not counted).
pub type AdmitRow = (Option<String>, Option<String>);

/// Admits a batch of messages in one call (`alphadome.admit_message_batch`):
/// rows numbered from 1 by their position in `reqs`.
pub async fn admit_batch(
    conn: &mut PgConnection,
    reqs: Vec<AdmitRequest>,
) -> Result<Vec<(i32, AdmitRow)>, sqlx::Error> {
    let cols = alphadome_core::batch::unzip5(reqs);
    let rows: Vec<(i32, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT * FROM alphadome.admit_message_batch($1, $2, $3, $4, $5)")
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .bind(&cols.4)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|(i, t, d)| (i, (t, d))).collect())
}

/// The wamid that started the customer's active handoff (`""` when it has
/// none recorded), or `None` when the bot may answer.
pub async fn active_handoff(
    pool: &PgPool,
    tenant: Uuid,
    user: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.active_handoff($1, $2)")
        .bind(tenant)
        .bind(user)
        .fetch_one(pool)
        .await
}

/// Counts message `wamid` against the tenant's limits, once however often
/// it comes: `allow`, `notice` or `silent`.
pub async fn count_message(
    pool: &PgPool,
    tenant: Uuid,
    user: &str,
    wamid: &str,
    per_hour: Option<i32>,
    per_day: Option<i32>,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.count_message($1, $2, $3, $4, $5)")
        .bind(tenant)
        .bind(user)
        .bind(wamid)
        .bind(per_hour)
        .bind(per_day)
        .fetch_one(pool)
        .await
}

/// The customer's recent turns with the tenant, newest first: (whether the
/// customer wrote it, its text).
pub async fn recent_turns(
    pool: &PgPool,
    tenant: Uuid,
    user: &str,
    exclude_wamid: &str,
    limit: usize,
) -> Result<Vec<(bool, Option<String>)>, sqlx::Error> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT * FROM alphadome.recent_turns($1, $2, $3, $4)")
            .bind(tenant)
            .bind(user)
            .bind(exclude_wamid)
            .bind(limit as i32)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(direction, text)| (direction == "incoming", text))
        .collect())
}

/// Why the bot's last reply to the customer within the hour was chosen
/// (leaving out the reply to `exclude_in_reply_to`).
pub async fn last_reply_reason(
    pool: &PgPool,
    tenant: Uuid,
    user: &str,
    exclude_in_reply_to: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.last_reply_reason($1, $2, $3)")
        .bind(tenant)
        .bind(user)
        .bind(exclude_in_reply_to)
        .fetch_one(pool)
        .await
}

/// A handoff as started (or found running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedHandoff {
    /// When its escalation e-mail went out, if it did.
    pub email_sent_at: Option<String>,
}

/// Starts a handoff of the customer's conversation for `pause_minutes`,
/// triggered by `wamid`. Idempotent per triggering message: the same
/// message finds its own handoff again. `None` when a handoff started by
/// another message is running.
pub async fn start_handoff(
    pool: &PgPool,
    tenant: Uuid,
    user: &str,
    reason: &str,
    wamid: &str,
    pause_minutes: i32,
) -> Result<Option<StartedHandoff>, sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "INSERT INTO alphadome.conversation_handoffs AS h (bot_tenant_id, user_phone, reason, trigger_wamid, paused_until) \
         VALUES ($1, $2, $3, $4, now() + make_interval(mins => $5)) \
         ON CONFLICT (bot_tenant_id, user_phone) DO UPDATE SET reason = EXCLUDED.reason, \
           trigger_wamid = EXCLUDED.trigger_wamid, started_at = now(), paused_until = EXCLUDED.paused_until, \
           resumed_at = NULL, email_sent_at = NULL, email_error = NULL \
         WHERE h.trigger_wamid = EXCLUDED.trigger_wamid OR h.resumed_at IS NOT NULL OR h.paused_until <= now() \
         RETURNING h.trigger_wamid, h.email_sent_at::text",
    )
    .bind(tenant)
    .bind(user)
    .bind(reason)
    .bind(wamid)
    .bind(pause_minutes)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|(_, email_sent_at)| StartedHandoff { email_sent_at }))
}

/// Records whether the handoff's e-mail went out (and why not).
pub async fn record_handoff_email(
    pool: &PgPool,
    tenant: Uuid,
    user: &str,
    sent: bool,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    sqlx::query(
        "UPDATE alphadome.conversation_handoffs SET email_sent_at = CASE WHEN $3 THEN now() END, email_error = $4 \
         WHERE bot_tenant_id = $1 AND user_phone = $2",
    )
    .bind(tenant)
    .bind(user)
    .bind(sent)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Ends the customer's handoff: the bot answers again. Returns whether one
/// was active.
pub async fn resume_handoff(pool: &PgPool, tenant: Uuid, user: &str) -> Result<bool, sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    let done = resume_handoff_in(&mut tx, tenant, user).await?;
    tx.commit().await?;
    Ok(done)
}

/// [`resume_handoff`] in the caller's transaction (acting for `tenant`).
pub async fn resume_handoff_in(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE alphadome.conversation_handoffs SET resumed_at = now() \
         WHERE bot_tenant_id = $1 AND user_phone = $2 AND resumed_at IS NULL AND paused_until > now()",
    )
    .bind(tenant)
    .bind(user)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(done > 0)
}

/// Pauses the bot in the customer's conversation because a person
/// answered it: starts a handoff of `pause_minutes`, or extends the running
/// one to at least that, in the caller's transaction (acting for
/// `tenant`).
pub async fn pause_for_agent_in(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: &str,
    pause_minutes: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alphadome.conversation_handoffs AS h (bot_tenant_id, user_phone, reason, paused_until) \
         VALUES ($1, $2, 'an agent replied', now() + make_interval(mins => $3)) \
         ON CONFLICT (bot_tenant_id, user_phone) DO UPDATE SET \
           reason = CASE WHEN h.resumed_at IS NULL AND h.paused_until > now() THEN h.reason ELSE EXCLUDED.reason END, \
           started_at = CASE WHEN h.resumed_at IS NULL AND h.paused_until > now() THEN h.started_at ELSE now() END, \
           paused_until = CASE WHEN h.resumed_at IS NULL THEN GREATEST(h.paused_until, EXCLUDED.paused_until) \
                               ELSE EXCLUDED.paused_until END, \
           resumed_at = NULL",
    )
    .bind(tenant)
    .bind(user)
    .bind(pause_minutes)
    .execute(conn)
    .await
    .map(|_| ())
}

/// A conversation handed to a person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Handoff {
    pub user_phone: String,
    pub reason: String,
    pub started_at: String,
    pub paused_until: String,
}

/// The tenant's conversations handed to a person now, oldest first.
pub async fn active_handoffs(pool: &PgPool, tenant: Uuid) -> Result<Vec<Handoff>, sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    let rows = active_handoffs_in(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(rows)
}

/// [`active_handoffs`] in the caller's transaction (acting for `tenant`).
pub async fn active_handoffs_in(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Vec<Handoff>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.user_phone, h.reason, h.started_at::text AS started_at, h.paused_until::text AS paused_until \
         FROM alphadome.conversation_handoffs h \
         WHERE h.bot_tenant_id = $1 AND h.resumed_at IS NULL AND h.paused_until > now() ORDER BY h.started_at",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await
}

/// Removes limit records older than `days`; returns the rows removed.
pub async fn purge_limit_records(pool: &PgPool, days: i32) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT alphadome.purge_limit_records($1)")
        .bind(days)
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}
