//! The admin's SQL. It owns `token_alerts` (one row per alert sent about a
//! tenant's WhatsApp token, so each threshold alerts once per token), and
//! the people and API tokens (`dashboard_users`, `api_tokens`). The
//! tenant tables it manages are written through the tenant store
//! (`alphadome_core::tenant::store`), their one owner.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::people::{TokenView, UserView};

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

/// Adds a person; `None` when the e-mail is taken.
pub async fn insert_user(
    db: &PgPool,
    email: &str,
    role: &str,
    tenant: Option<Uuid>,
    password_hash: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO alphadome.dashboard_users (email, role, bot_tenant_id, password_hash) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(email)
    .bind(role)
    .bind(tenant)
    .bind(password_hash)
    .fetch_optional(db)
    .await
}

/// Every person, by e-mail, with their tenant's name.
pub async fn users(db: &PgPool) -> Result<Vec<UserView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT u.email, u.role, u.bot_tenant_id AS tenant_id, t.client_name AS tenant_name, \
           u.disabled_at, u.last_login_at, u.created_at \
         FROM alphadome.dashboard_users u LEFT JOIN alphadome.bot_tenants t ON t.id = u.bot_tenant_id \
         ORDER BY u.email",
    )
    .fetch_all(db)
    .await
}

/// Disables a person: `None` when there is no such person, else whether
/// they were enabled before.
pub async fn disable_user(db: &PgPool, email: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE alphadome.dashboard_users u SET disabled_at = COALESCE(u.disabled_at, now()) \
         FROM (SELECT id, disabled_at IS NULL AS was_enabled FROM alphadome.dashboard_users WHERE email = $1 FOR UPDATE) o \
         WHERE u.id = o.id RETURNING o.was_enabled",
    )
    .bind(email)
    .fetch_optional(db)
    .await
}

/// What a login checks of a person.
#[derive(Debug, sqlx::FromRow)]
pub struct LoginRow {
    pub id: Uuid,
    pub role: String,
    pub bot_tenant_id: Option<Uuid>,
    pub password_hash: String,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The person with `email`, for a login.
pub async fn login_row(db: &PgPool, email: &str) -> Result<Option<LoginRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, role, bot_tenant_id, password_hash, disabled_at FROM alphadome.dashboard_users WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(db)
    .await
}

/// Records a successful login.
pub async fn record_login(db: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE alphadome.dashboard_users SET last_login_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(|_| ())
}

/// Adds an API token by its digest; `false` when a live token has the name.
pub async fn insert_token(
    db: &PgPool,
    name: &str,
    digest: &str,
    role: &str,
    tenant: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO alphadome.api_tokens (name, token_digest, role, bot_tenant_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING",
    )
    .bind(name)
    .bind(digest)
    .bind(role)
    .bind(tenant)
    .execute(db)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Revokes the live token named `name`; whether there was one.
pub async fn revoke_token(db: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE alphadome.api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .execute(db)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Every token (never its digest), live ones first.
pub async fn tokens(db: &PgPool) -> Result<Vec<TokenView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.name, k.role, k.bot_tenant_id AS tenant_id, t.client_name AS tenant_name, \
           k.created_at, k.last_used_at, k.revoked_at \
         FROM alphadome.api_tokens k LEFT JOIN alphadome.bot_tenants t ON t.id = k.bot_tenant_id \
         ORDER BY k.revoked_at IS NOT NULL, k.name, k.created_at",
    )
    .fetch_all(db)
    .await
}

/// The live token with `digest`: its name, role and tenant. Records its
/// use (at most once a minute, so a busy client does not write on every
/// request).
pub async fn live_token(
    db: &PgPool,
    digest: &str,
) -> Result<Option<(String, String, Option<Uuid>)>, sqlx::Error> {
    let found: Option<(Uuid, String, String, Option<Uuid>, bool)> = sqlx::query_as(
        "SELECT id, name, role, bot_tenant_id, \
           last_used_at IS NULL OR last_used_at < now() - interval '1 minute' AS stale \
         FROM alphadome.api_tokens WHERE token_digest = $1 AND revoked_at IS NULL",
    )
    .bind(digest)
    .fetch_optional(db)
    .await?;
    let Some((id, name, role, tenant, stale)) = found else {
        return Ok(None);
    };
    if stale {
        sqlx::query("UPDATE alphadome.api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(db)
            .await?;
    }
    Ok(Some((name, role, tenant)))
}
