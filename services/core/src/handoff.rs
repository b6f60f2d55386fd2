//! Conversations handed to a person (`alphadome.conversation_handoffs`):
//! started by the responder's escalations, started or extended when an
//! agent answers from the dashboard, ended by "give back to the bot" or
//! `alphadome conversation resume`. Shared by the responder and the
//! dashboard so neither depends on the other.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::scoped;

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
