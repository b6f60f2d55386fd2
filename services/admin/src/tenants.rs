//! Tenant operations behind `alphadome tenant ...` and the admin API: list,
//! show (secrets masked), activate and deactivate (the schema report's
//! go-live and instant rollback), rotate the webhook verify token. Every
//! change is announced, so running services follow within a second.

use alphadome_core::bus::Bus;
use alphadome_core::crypto;
use alphadome_core::tenant::{self, Tenant, TenantSummary};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{changes, phone, AdminError};

/// A tenant by id, or by client phone (in any form [`phone::normalize`]
/// takes, national numbers with `country_code`).
pub async fn find(
    db: &PgPool,
    id_or_phone: &str,
    country_code: &str,
) -> Result<Tenant, AdminError> {
    let found = match Uuid::parse_str(id_or_phone.trim()) {
        Ok(id) => tenant::store::load(db, id).await?,
        // What is neither an id nor a phone number names no tenant (and
        // is not sent to the database: a NUL byte would make it an error).
        Err(_) => match phone::normalize(id_or_phone, country_code) {
            Ok(phone) => tenant::store::find_by_phone(db, &phone).await?,
            Err(_) => None,
        },
    };
    found.ok_or_else(|| AdminError::NotFound(id_or_phone.to_owned()))
}

/// All tenants, by name.
pub async fn list(
    db: &PgPool,
    verify_token_max_age_days: u32,
) -> Result<Vec<TenantSummary>, AdminError> {
    Ok(tenant::store::summaries(db, verify_token_max_age_days).await?)
}

/// A tenant as shown to people: secrets masked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// The view of `t`: every secret replaced by what it is, never its value.
pub fn view(t: Tenant) -> TenantView {
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

/// A tenant by id or phone, secrets masked, with its settings, templates
/// and the number of its training rows.
pub async fn show(
    db: &PgPool,
    id_or_phone: &str,
    country_code: &str,
) -> Result<TenantView, AdminError> {
    let t = find(db, id_or_phone, country_code).await?;
    let (settings, templates, training) = tenant::store::details(db, t.id).await?;
    Ok(TenantView {
        control_settings: settings,
        templates,
        training_data: training,
        ..view(t)
    })
}

/// Sets `is_active` (go-live or rollback) and announces the change so every
/// running service picks it up at once. Returns the tenant id and whether
/// anything changed.
pub async fn set_active(
    db: &PgPool,
    bus: Option<&Bus>,
    id_or_phone: &str,
    country_code: &str,
    active: bool,
) -> Result<(Uuid, bool), AdminError> {
    set_active_as(
        db,
        bus,
        id_or_phone,
        country_code,
        active,
        &changes::cli_actor(),
    )
    .await
}

/// [`set_active`], recording `actor` in the change audit when it changed
/// anything.
pub async fn set_active_as(
    db: &PgPool,
    bus: Option<&Bus>,
    id_or_phone: &str,
    country_code: &str,
    active: bool,
    actor: &str,
) -> Result<(Uuid, bool), AdminError> {
    let t = find(db, id_or_phone, country_code).await?;
    let mut tx = db.begin().await?;
    let changed = tenant::store::set_active(&mut tx, t.id, active).await?;
    if changed {
        let subject = t.id.to_string();
        changes::record(
            &mut tx,
            &changes::Change {
                actor,
                tenant: Some(t.id),
                action: if active {
                    "tenant.activate"
                } else {
                    "tenant.deactivate"
                },
                subject: &subject,
                before: Some(serde_json::json!({"is_active": !active})),
                after: Some(serde_json::json!({"is_active": active})),
            },
        )
        .await?;
    }
    tx.commit().await?;
    if let Some(bus) = bus {
        tenant::announce_change(bus, t.id).await;
    }
    tracing::info!(tenant_id = %t.id, active, changed, "tenant activation set");
    Ok((t.id, changed))
}

/// Issues a new random webhook verify token for a tenant and returns it
/// (the only time it is shown: only its digest is stored). The previous
/// token stays valid for `grace`, so Meta's dashboard can be updated
/// without downtime.
pub async fn rotate_verify_token(
    db: &PgPool,
    bus: Option<&Bus>,
    id_or_phone: &str,
    country_code: &str,
    grace: std::time::Duration,
) -> Result<(Uuid, String), AdminError> {
    let t = find(db, id_or_phone, country_code).await?;
    let token = crypto::generate_verify_token();
    let mut tx = db.begin().await?;
    tenant::store::rotate_verify_token(&mut tx, t.id, &crypto::verify_token_digest(&token), grace)
        .await?;
    let subject = t.id.to_string();
    changes::record(
        &mut tx,
        &changes::Change {
            actor: &changes::cli_actor(),
            tenant: Some(t.id),
            action: "tenant.rotate_verify_token",
            subject: &subject,
            before: Some(serde_json::json!({
                "webhook_verify_token": t.webhook_verify_token.as_ref().map(|_| "******** (set)"),
            })),
            after: Some(serde_json::json!({
                "webhook_verify_token": "******** (new)",
                "previous_valid_for_secs": grace.as_secs(),
            })),
        },
    )
    .await?;
    tx.commit().await?;
    if let Some(bus) = bus {
        tenant::announce_change(bus, t.id).await;
    }
    tracing::info!(tenant_id = %t.id, grace_secs = grace.as_secs(), "webhook verify token rotated");
    Ok((t.id, token))
}
