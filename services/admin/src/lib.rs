//! admin: tenant management. The operations behind `alphadome tenant ...`
//! (list, show with secrets masked, activate and deactivate: the schema
//! report's go-live and instant rollback), and a read-only admin API
//! (`GET /admin/tenants`, `GET /admin/tenants/{id-or-phone}`) guarded by
//! the bearer token in `ALPHADOME_ADMIN_TOKEN` (disabled when unset), and the
//! scheduled jobs: token expiry alerts ([`tokens`]) and housekeeping.

pub mod dlq;
pub mod tokens;

use std::sync::Arc;

use alphadome_core::bus::Bus;
use alphadome_core::crypto;
use alphadome_core::tenant::{self, Tenant};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Why a tenant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no tenant with id or phone {0:?}")]
    NotFound(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One line of `tenant list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TenantSummary {
    pub id: Uuid,
    pub client_name: String,
    pub client_phone: String,
    pub whatsapp_phone_number_id: Option<String>,
    pub is_active: bool,
    pub is_bot_enabled: Option<bool>,
    pub faq_entries: i64,
    pub templates: i64,
    /// Why the tenant can't currently be served normally, if it can't.
    pub degraded: Option<String>,
    /// Age in days of a verify token older than the configured maximum.
    pub verify_token_age_days: Option<i64>,
}

/// All tenants, by name.
pub async fn list(db: &PgPool) -> Result<Vec<TenantSummary>, AdminError> {
    Ok(sqlx::query_as::<_, TenantSummary>(
        "SELECT t.id, t.client_name, t.client_phone, t.whatsapp_phone_number_id, t.is_active, \
           c.is_bot_enabled, \
           (SELECT count(*) FROM alphadome.bot_training_data d WHERE d.bot_tenant_id = t.id AND d.is_active) AS faq_entries, \
           (SELECT count(*) FROM alphadome.bot_templates p WHERE p.bot_tenant_id = t.id AND p.is_active) AS templates, \
           CASE WHEN t.whatsapp_token_invalid_at IS NOT NULL THEN 'WhatsApp token rejected by Meta (190)' \
                WHEN t.whatsapp_token_expires_at IS NOT NULL AND t.whatsapp_token_expires_at < now() THEN 'WhatsApp token expired' \
                WHEN t.whatsapp_access_token IS NULL THEN 'no WhatsApp token' \
                WHEN t.whatsapp_phone_number_id IS NULL THEN 'no phone number id' END AS degraded, \
           CASE WHEN t.webhook_verify_token IS NOT NULL AND \
                     COALESCE(t.webhook_verify_token_rotated_at, t.created_at) < now() - make_interval(days => $1) \
                THEN (extract(day FROM now() - COALESCE(t.webhook_verify_token_rotated_at, t.created_at)))::bigint END \
             AS verify_token_age_days \
         FROM alphadome.bot_tenants t LEFT JOIN alphadome.bot_control_settings c ON c.bot_tenant_id = t.id \
         ORDER BY t.client_name, t.client_phone",
    )
    .bind(verify_token_max_age_days())
    .fetch_all(db)
    .await?)
}

/// A tenant as shown to people: secrets masked.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub id: Uuid,
    pub client_name: String,
    pub client_phone: String,
    pub client_email: Option<String>,
    pub brand_id: Option<Uuid>,
    pub point_of_contact_name: Option<String>,
    pub point_of_contact_phone: Option<String>,
    pub whatsapp_phone_number_id: Option<String>,
    pub whatsapp_business_account_id: Option<String>,
    pub whatsapp_access_token: String,
    pub whatsapp_token_expires_at: Option<DateTime<Utc>>,
    pub whatsapp_token_invalid_at: Option<DateTime<Utc>>,
    pub whatsapp_app_secret: String,
    pub ai_provider: Option<String>,
    pub ai_api_key: String,
    pub ai_model: Option<String>,
    pub ai_base_url: Option<String>,
    pub is_active: bool,
    pub is_verified: bool,
    pub webhook_verify_token: String,
    pub webhook_url: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub control_settings: Option<serde_json::Value>,
    pub templates: Vec<String>,
    pub training_data: i64,
}

fn view(t: Tenant) -> TenantView {
    TenantView {
        id: t.id,
        client_name: t.client_name,
        client_phone: t.client_phone,
        client_email: t.client_email,
        brand_id: t.brand_id,
        point_of_contact_name: t.point_of_contact_name,
        point_of_contact_phone: t.point_of_contact_phone,
        whatsapp_phone_number_id: t.whatsapp_phone_number_id,
        whatsapp_business_account_id: t.whatsapp_business_account_id,
        whatsapp_access_token: crypto::mask(t.whatsapp_access_token.as_deref()),
        whatsapp_token_expires_at: t.whatsapp_token_expires_at,
        whatsapp_token_invalid_at: t.whatsapp_token_invalid_at,
        whatsapp_app_secret: crypto::mask(t.whatsapp_app_secret.as_deref()),
        ai_provider: t.ai_provider,
        ai_api_key: crypto::mask(t.ai_api_key.as_deref()),
        ai_model: t.ai_model,
        ai_base_url: t.ai_base_url,
        is_active: t.is_active,
        is_verified: t.is_verified,
        webhook_verify_token: match t.webhook_verify_token {
            Some(_) => "******** (set)".to_owned(),
            None => "(not set)".to_owned(),
        },
        webhook_url: t.webhook_url,
        metadata: t.metadata,
        created_at: t.created_at,
        updated_at: t.updated_at,
        control_settings: None,
        templates: Vec::new(),
        training_data: 0,
    }
}

/// A tenant by id or phone, secrets masked.
pub async fn show(db: &PgPool, id_or_phone: &str) -> Result<TenantView, AdminError> {
    let t = tenant::find_tenant(db, id_or_phone)
        .await?
        .ok_or_else(|| AdminError::NotFound(id_or_phone.to_owned()))?;
    let id = t.id;
    let mut v = view(t);
    v.control_settings = sqlx::query_scalar(
        "SELECT to_jsonb(c) - 'id' - 'bot_tenant_id' FROM alphadome.bot_control_settings c WHERE bot_tenant_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    v.templates = sqlx::query_scalar(
        "SELECT template_name || CASE WHEN is_default THEN ' (default)' ELSE '' END FROM alphadome.bot_templates \
         WHERE bot_tenant_id = $1 AND is_active ORDER BY is_default DESC, template_name",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    v.training_data = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 AND is_active",
    )
    .bind(id)
    .fetch_one(db)
    .await?;
    Ok(v)
}

/// Sets `is_active` (go-live or rollback) and announces the change so every
/// running service picks it up at once. Returns the tenant id and whether
/// anything changed.
pub async fn set_active(
    db: &PgPool,
    bus: Option<&Bus>,
    id_or_phone: &str,
    active: bool,
) -> Result<(Uuid, bool), AdminError> {
    let t = tenant::find_tenant(db, id_or_phone)
        .await?
        .ok_or_else(|| AdminError::NotFound(id_or_phone.to_owned()))?;
    let changed = sqlx::query(
        "UPDATE alphadome.bot_tenants SET is_active = $2 WHERE id = $1 AND is_active <> $2",
    )
    .bind(t.id)
    .bind(active)
    .execute(db)
    .await?
    .rows_affected()
        > 0;
    if let Some(bus) = bus {
        tenant::announce_change(bus, t.id).await;
    }
    tracing::info!(tenant_id = %t.id, active, changed, "tenant activation set");
    Ok((t.id, changed))
}

/// How long per-message limit records are kept: longer than Meta retries a
/// webhook (7 days), so a late retry is still recognised.
pub const LIMIT_RECORD_DAYS: i32 = 8;

/// Scheduled housekeeping, hourly until `shutdown`: expired limit records.
pub fn spawn_housekeeping(
    db: PgPool,
    shutdown: alphadome_core::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match housekeeping(&db).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "expired limit records removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "housekeeping failed; will retry in an hour"),
            }
        }
    })
}

/// Removes limit records older than [`LIMIT_RECORD_DAYS`]; returns the rows removed.
pub async fn housekeeping(db: &PgPool) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for sql in [
        "DELETE FROM alphadome.rate_limit_events WHERE created_at < now() - make_interval(days => $1)",
        "DELETE FROM alphadome.rate_limit_counters WHERE window_start < now() - make_interval(days => $1)",
        "DELETE FROM alphadome.rate_limit_notices WHERE window_start < now() - make_interval(days => $1)",
    ] {
        n += sqlx::query(sql).bind(LIMIT_RECORD_DAYS).execute(db).await?.rows_affected();
    }
    Ok(n)
}

/// Issues a new random webhook verify token for a tenant and returns it
/// (the only time it is shown: only its digest is stored). The previous
/// token stays valid for `grace`, so Meta's dashboard can be updated
/// without downtime.
pub async fn rotate_verify_token(
    db: &PgPool,
    bus: Option<&Bus>,
    id_or_phone: &str,
    grace: std::time::Duration,
) -> Result<(Uuid, String), AdminError> {
    let t = tenant::find_tenant(db, id_or_phone)
        .await?
        .ok_or_else(|| AdminError::NotFound(id_or_phone.to_owned()))?;
    let token = crypto::generate_verify_token();
    sqlx::query(
        "UPDATE alphadome.bot_tenants SET webhook_verify_token_previous = webhook_verify_token, \
           webhook_verify_token_previous_expires_at = CASE WHEN webhook_verify_token IS NULL THEN NULL \
             ELSE now() + make_interval(secs => $3) END, \
           webhook_verify_token = $2, webhook_verify_token_rotated_at = now() WHERE id = $1",
    )
    .bind(t.id)
    .bind(crypto::verify_token_digest(&token))
    .bind(grace.as_secs_f64())
    .execute(db)
    .await?;
    if let Some(bus) = bus {
        tenant::announce_change(bus, t.id).await;
    }
    tracing::info!(tenant_id = %t.id, grace_secs = grace.as_secs(), "webhook verify token rotated");
    Ok((t.id, token))
}

/// Age after which a verify token is reported as due for rotation:
/// `ALPHADOME_VERIFY_TOKEN_MAX_AGE_DAYS`, default 90.
pub fn verify_token_max_age_days() -> i32 {
    std::env::var("ALPHADOME_VERIFY_TOKEN_MAX_AGE_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90)
}

/// What a master key rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// Stored credentials seen.
    pub total: u64,
    /// Re-encrypted under the current key.
    pub rotated: u64,
    /// Already under the current key.
    pub current: u64,
    /// Credentials that could not be decrypted with any configured key.
    pub failed: Vec<String>,
}

/// Re-encrypts every stored credential under the keyring's current key,
/// one credential per transaction (with its audit row), while the services
/// keep running: they hold the old key as a previous one until this is
/// done. A value changed meanwhile is left alone (it was just written under
/// the current key). `progress(done, total)` is called after each one.
pub async fn rotate_master_key(
    db: &PgPool,
    keyring: &crypto::Keyring,
    mut progress: impl FnMut(u64, u64),
) -> Result<RotationReport, AdminError> {
    // (tenant, WhatsApp token, app secret, AI key), as stored.
    type Stored = (Uuid, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Stored> = sqlx::query_as(
        "SELECT id, whatsapp_access_token, whatsapp_app_secret, ai_api_key FROM alphadome.bot_tenants ORDER BY id",
    )
    .fetch_all(db)
    .await?;
    let mut work = Vec::new();
    for (id, tok, sec, key) in rows {
        for (col, v) in [
            (crypto::SecretColumn::WhatsappAccessToken, tok),
            (crypto::SecretColumn::WhatsappAppSecret, sec),
            (crypto::SecretColumn::AiApiKey, key),
        ] {
            if let Some(v) = v {
                work.push((id, col, v));
            }
        }
    }
    let mut report = RotationReport {
        total: work.len() as u64,
        ..Default::default()
    };
    for (i, (id, col, stored)) in work.into_iter().enumerate() {
        if crypto::Keyring::key_id_of(&stored) == Some(keyring.current_key_id()) {
            report.current += 1;
        } else {
            match keyring.decrypt(id, col, &stored) {
                Err(e) => report
                    .failed
                    .push(format!("tenant {id} {}: {e}", col.column())),
                Ok(plain) => {
                    let sealed =
                        keyring.encrypt(id, col, secrecy::ExposeSecret::expose_secret(&plain));
                    let mut tx = db.begin().await?;
                    let done = sqlx::query(&format!(
                        "UPDATE alphadome.bot_tenants SET {c} = $3 WHERE id = $1 AND {c} = $2",
                        c = col.column()
                    ))
                    .bind(id)
                    .bind(&stored)
                    .bind(&sealed)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done > 0 {
                        alphadome_core::audit::record(
                            &mut *tx,
                            id,
                            col,
                            "admin:cli",
                            "master key rotation",
                        )
                        .await?;
                        report.rotated += 1;
                    } else {
                        report.current += 1;
                    }
                    tx.commit().await?;
                }
            }
        }
        progress(i as u64 + 1, report.total);
    }
    Ok(report)
}

/// State of the admin API.
struct Api {
    db: PgPool,
    token: String,
}

/// The admin API routes; `None` when `ALPHADOME_ADMIN_TOKEN` is unset.
pub fn router(db: PgPool) -> Option<Router> {
    let token = std::env::var("ALPHADOME_ADMIN_TOKEN")
        .ok()
        .filter(|t| t.len() >= 16)?;
    Some(
        Router::new()
            .route("/admin/tenants", get(api_list))
            .route("/admin/tenants/{id}", get(api_show))
            .with_state(Arc::new(Api { db, token })),
    )
}

fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    bool::from(given.as_bytes().ct_eq(api.token.as_bytes()))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

async fn api_list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !authorized(&api, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        );
    }
    match list(&api.db).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin list failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable".into(),
            )
        }
    }
}

async fn api_show(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&api, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        );
    }
    match show(&api.db, &id).await {
        Ok(v) => Json(v).into_response(),
        Err(AdminError::NotFound(x)) => error(
            StatusCode::NOT_FOUND,
            format!("no tenant with id or phone {x:?}"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "admin show failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable".into(),
            )
        }
    }
}
