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
    conn: &mut sqlx::PgConnection,
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
    .fetch_optional(conn)
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
/// they were enabled before, and their tenant.
pub async fn disable_user(
    conn: &mut sqlx::PgConnection,
    email: &str,
) -> Result<Option<(bool, Option<Uuid>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE alphadome.dashboard_users u SET disabled_at = COALESCE(u.disabled_at, now()) \
         FROM (SELECT id, disabled_at IS NULL AS was_enabled FROM alphadome.dashboard_users WHERE email = $1 FOR UPDATE) o \
         WHERE u.id = o.id RETURNING o.was_enabled, u.bot_tenant_id",
    )
    .bind(email)
    .fetch_optional(conn)
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

/// Starts a session for `user` (and forgets expired ones).
pub async fn insert_session(
    db: &PgPool,
    digest: &str,
    user: Uuid,
    csrf: &str,
    idle_hours: i32,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM alphadome.dashboard_sessions WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO alphadome.dashboard_sessions (id_digest, user_id, csrf_token, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
    )
    .bind(digest)
    .bind(user)
    .bind(csrf)
    .bind(idle_hours)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// What a session gives a request.
#[derive(Debug, sqlx::FromRow)]
pub struct SessionRow {
    pub email: String,
    pub role: String,
    pub bot_tenant_id: Option<Uuid>,
    pub csrf_token: String,
}

/// The live session with `digest` of a person not disabled, its expiry
/// moved `idle_hours` on (at most `max_days` after it began; written at
/// most once a minute).
pub async fn live_session(
    db: &PgPool,
    digest: &str,
    idle_hours: i32,
    max_days: i32,
) -> Result<Option<SessionRow>, sqlx::Error> {
    let found: Option<(SessionRow, bool)> = sqlx::query_as::<_, (String, String, Option<Uuid>, String, bool)>(
        "SELECT u.email, u.role, u.bot_tenant_id, s.csrf_token, s.last_seen_at < now() - interval '1 minute' \
         FROM alphadome.dashboard_sessions s JOIN alphadome.dashboard_users u ON u.id = s.user_id \
         WHERE s.id_digest = $1 AND s.expires_at > now() AND u.disabled_at IS NULL",
    )
    .bind(digest)
    .fetch_optional(db)
    .await?
    .map(|(email, role, bot_tenant_id, csrf_token, stale)| {
        (
            SessionRow {
                email,
                role,
                bot_tenant_id,
                csrf_token,
            },
            stale,
        )
    });
    let Some((row, stale)) = found else {
        return Ok(None);
    };
    if stale {
        sqlx::query(
            "UPDATE alphadome.dashboard_sessions SET last_seen_at = now(), \
               expires_at = least(created_at + make_interval(days => $3), now() + make_interval(hours => $2)) \
             WHERE id_digest = $1",
        )
        .bind(digest)
        .bind(idle_hours)
        .bind(max_days)
        .execute(db)
        .await?;
    }
    Ok(Some(row))
}

/// Ends a session.
pub async fn delete_session(db: &PgPool, digest: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alphadome.dashboard_sessions WHERE id_digest = $1")
        .bind(digest)
        .execute(db)
        .await
        .map(|_| ())
}

/// Adds an API token by its digest; `false` when a live token has the name.
pub async fn insert_token(
    conn: &mut sqlx::PgConnection,
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
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Revokes the live token named `name`: its tenant, or `None` when there
/// was no such token.
pub async fn revoke_token(
    conn: &mut sqlx::PgConnection,
    name: &str,
) -> Result<Option<Option<Uuid>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE alphadome.api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL \
         RETURNING bot_tenant_id",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
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

/// Appends a change record.
pub async fn insert_change(
    conn: &mut sqlx::PgConnection,
    c: &crate::changes::Change<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alphadome.change_audit (actor, bot_tenant_id, action, subject, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(c.actor)
    .bind(c.tenant)
    .bind(c.action)
    .bind(c.subject)
    .bind(&c.before)
    .bind(&c.after)
    .execute(conn)
    .await
    .map(|_| ())
}

/// A tenant's configuration as the audit records it
/// (`alphadome.tenant_audit_snapshot`).
pub async fn tenant_snapshot(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.tenant_audit_snapshot($1)")
        .bind(tenant)
        .fetch_one(conn)
        .await
}

/// Recorded changes, newest first.
pub async fn changes(
    conn: &mut sqlx::PgConnection,
    tenant: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<crate::changes::ChangeRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, bot_tenant_id AS tenant_id, action, subject, before, after \
         FROM alphadome.change_audit \
         WHERE ($1::uuid IS NULL OR bot_tenant_id = $1) AND ($2::timestamptz IS NULL OR at >= $2) \
         ORDER BY at DESC, id DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(since)
    .bind(limit)
    .fetch_all(conn)
    .await
}
