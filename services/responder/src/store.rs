//! The responder's SQL. It owns the limit records (`rate_limit_events`,
//! `rate_limit_counters`, `rate_limit_notices`); the handoffs live in
//! [`alphadome_core::handoff`], which the dashboard shares. It reads the
//! conversation log only through the functions its owner (the logger)
//! grants it. The per-message paths
//! are one call of a SQL function each (`migrations/*_hot_path_functions.sql`).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

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

/// Removes limit records older than `days`; returns the rows removed.
pub async fn purge_limit_records(pool: &PgPool, days: i32) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT alphadome.purge_limit_records($1)")
        .bind(days)
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}
