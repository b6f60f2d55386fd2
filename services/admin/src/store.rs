//! The admin's SQL. It owns `token_alerts`: one row per alert sent about a
//! tenant's WhatsApp token, so each threshold alerts once per token. The
//! tenant tables it manages are written through the tenant store
//! (`alphadome_core::tenant::store`), their one owner.

use sqlx::PgPool;
use uuid::Uuid;

/// Records that the `threshold` alert about the token with `fingerprint`
/// is being sent; `false` when it was sent before (nothing to send).
pub async fn claim_token_alert(
    db: &PgPool,
    tenant: Uuid,
    threshold: &str,
    fingerprint: &str,
) -> Result<bool, sqlx::Error> {
    let first: Option<(i32,)> = sqlx::query_as(
        "INSERT INTO alphadome.token_alerts (bot_tenant_id, threshold, token_fingerprint) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(tenant)
    .bind(threshold)
    .bind(fingerprint)
    .fetch_optional(db)
    .await?;
    Ok(first.is_some())
}

/// Keeps why an alert's e-mail was not sent.
pub async fn record_token_alert_email_error(
    db: &PgPool,
    tenant: Uuid,
    threshold: &str,
    fingerprint: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alphadome.token_alerts SET email_error = $4 \
         WHERE bot_tenant_id = $1 AND threshold = $2 AND token_fingerprint = $3",
    )
    .bind(tenant)
    .bind(threshold)
    .bind(fingerprint)
    .bind(error)
    .execute(db)
    .await
    .map(|_| ())
}
