//! The store of the tenant configuration tables: `bot_tenants`,
//! `bot_control_settings`, `bot_templates`, `bot_training_data`, and the
//! brand a new tenant gets in the live system's `public.brands`. Every
//! statement on them is here.
//!
//! The services read through a pool acting as their own role, in
//! transactions scoped to the tenant ([`crate::db::scoped`]), so row-level
//! security shows them that tenant only, without credentials (each service
//! reads the one credential it uses with [`load_credential`]); the
//! cross-tenant lookups go through the narrow SQL functions of the
//! migrations. The admin path (manifests, activation, rotations, the
//! tenant list) runs as the owner.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{ControlSettings, Template, Tenant, TenantSnapshot, TenantSummary, TrainingRow};
use crate::crypto::SecretColumn;
use crate::db::scoped;

pub mod edits;

/// Columns of [`Tenant`].
const TENANT_COLUMNS: &str = "id, client_name, client_phone, client_email, brand_id, \
    point_of_contact_name, point_of_contact_phone, whatsapp_phone_number_id, \
    whatsapp_business_account_id, whatsapp_access_token, whatsapp_token_expires_at, \
    whatsapp_app_secret, whatsapp_token_invalid_at, ai_provider, ai_api_key, ai_model, \
    ai_base_url, is_active, is_verified, webhook_verify_token, webhook_url, metadata, \
    whatsapp_templates, created_at, updated_at";

/// Columns of [`Tenant`] without the credentials (read as NULL): what every
/// service may read.
const TENANT_CONFIG_COLUMNS: &str = "id, client_name, client_phone, client_email, brand_id, \
    point_of_contact_name, point_of_contact_phone, whatsapp_phone_number_id, \
    whatsapp_business_account_id, NULL::text AS whatsapp_access_token, whatsapp_token_expires_at, \
    NULL::text AS whatsapp_app_secret, whatsapp_token_invalid_at, ai_provider, NULL::text AS ai_api_key, ai_model, \
    ai_base_url, is_active, is_verified, NULL::text AS webhook_verify_token, webhook_url, metadata, \
    whatsapp_templates, created_at, updated_at";

const SETTINGS_COLUMNS: &str = "is_bot_enabled, max_messages_per_hour, \
    max_messages_per_user_per_day, enable_ai_responses, enable_payment_flow, enable_training_mode, \
    enable_auto_reply, log_conversations, log_errors, escalation_phone, escalation_email, \
    fallback_reply, handoff_pause_minutes, business_hours, out_of_hours_reply, answer_out_of_hours, \
    greeting_message, send_read_receipts, opt_out_keywords, opt_in_keywords, debounce_ms";

async fn config_in(conn: &mut PgConnection, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_CONFIG_COLUMNS} FROM alphadome.bot_tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

async fn settings_in(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<ControlSettings>, sqlx::Error> {
    sqlx::query_as::<_, ControlSettings>(&format!(
        "SELECT {SETTINGS_COLUMNS} FROM alphadome.bot_control_settings WHERE bot_tenant_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// A tenant's configuration without its credentials.
pub async fn load_config(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    let mut tx = scoped(pool, id).await?;
    let t = config_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(t)
}

/// One stored (encrypted) credential of a tenant.
pub async fn load_credential(
    pool: &PgPool,
    id: Uuid,
    column: SecretColumn,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = scoped(pool, id).await?;
    let v: Option<Option<String>> = sqlx::query_scalar(&format!(
        "SELECT {} FROM alphadome.bot_tenants WHERE id = $1",
        column.column()
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(v.flatten())
}

/// A tenant's control settings (the column defaults when it has no row).
pub async fn load_settings(pool: &PgPool, id: Uuid) -> Result<ControlSettings, sqlx::Error> {
    let mut tx = scoped(pool, id).await?;
    let s = settings_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(s.unwrap_or_default())
}

/// A tenant's whole configuration, read in one transaction.
pub async fn load_snapshot(pool: &PgPool, id: Uuid) -> Result<Option<TenantSnapshot>, sqlx::Error> {
    let mut tx = scoped(pool, id).await?;
    let Some(tenant) = config_in(&mut tx, id).await? else {
        return Ok(None);
    };
    let settings = settings_in(&mut tx, id).await?.unwrap_or_default();
    let templates = sqlx::query_as::<_, Template>(
        "SELECT id, template_name, description, system_prompt, conversation_context, tone, \
         max_response_length, is_active, is_default FROM alphadome.bot_templates \
         WHERE bot_tenant_id = $1 AND is_active ORDER BY is_default DESC, template_name",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let training = sqlx::query_as::<_, TrainingRow>(
        "SELECT id, data_type, question, answer, category, priority, \
         confidence_score::float8 AS confidence_score, is_active \
         FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 AND is_active \
         ORDER BY priority DESC, id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(TenantSnapshot {
        tenant,
        settings,
        templates,
        training,
    }))
}

/// Every tenant and when its configuration last changed (what caches
/// compare against: `alphadome.tenant_versions()`).
pub async fn versions(pool: &PgPool) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, updated_at FROM alphadome.tenant_versions()")
        .fetch_all(pool)
        .await
}

/// The tenant that owns a WhatsApp phone number id (the ingress's narrow
/// cross-tenant lookup: `alphadome.tenant_by_phone_number_id()`).
pub async fn tenant_by_phone_number_id(
    pool: &PgPool,
    phone_number_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.tenant_by_phone_number_id($1)")
        .bind(phone_number_id)
        .fetch_one(pool)
        .await
}

/// The tenants of a WhatsApp Business Account (several numbers may share
/// one: `alphadome.tenants_by_business_account_id()`).
pub async fn tenants_by_business_account_id(
    pool: &PgPool,
    business_account_id: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT alphadome.tenants_by_business_account_id($1)")
        .bind(business_account_id)
        .fetch_all(pool)
        .await
}

/// Every tenant's webhook verify token digest, and its previous one while
/// in its grace period (`alphadome.verify_token_digests()`).
pub async fn verify_token_digests(
    pool: &PgPool,
) -> Result<Vec<(Uuid, Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, current_digest, previous_digest FROM alphadome.verify_token_digests()",
    )
    .fetch_all(pool)
    .await
}

/// Marks a tenant's WhatsApp token as rejected by Meta (error 190, or
/// `debug_token` saying so): its sends are held until a new token is
/// applied. Returns whether it was not marked before.
pub async fn mark_token_invalid(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = scoped(pool, id).await?;
    let n = sqlx::query(
        "UPDATE alphadome.bot_tenants SET whatsapp_token_invalid_at = now() \
         WHERE id = $1 AND whatsapp_token_invalid_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n > 0)
}

// ---- The admin path (runs as the owner). ----

/// A tenant by id, credentials (ciphertext) included.
pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_COLUMNS} FROM alphadome.bot_tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A tenant by its (normalised) client phone, credentials included.
pub async fn find_by_phone(pool: &PgPool, phone: &str) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_COLUMNS} FROM alphadome.bot_tenants WHERE client_phone = $1"
    ))
    .bind(phone)
    .fetch_optional(pool)
    .await
}

/// Every tenant, by name, with what an operator needs to see at a glance.
pub async fn summaries(
    pool: &PgPool,
    verify_token_max_age_days: u32,
) -> Result<Vec<TenantSummary>, sqlx::Error> {
    sqlx::query_as::<_, TenantSummary>(
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
    .bind(verify_token_max_age_days as i32)
    .fetch_all(pool)
    .await
}

/// What `tenant show` adds to the tenant row: its settings (as JSON, every
/// column), its active templates' names (the default marked) and how many
/// active training rows it has.
pub async fn details(
    pool: &PgPool,
    id: Uuid,
) -> Result<(Option<serde_json::Value>, Vec<String>, i64), sqlx::Error> {
    let settings = sqlx::query_scalar(
        "SELECT to_jsonb(c) - 'id' - 'bot_tenant_id' FROM alphadome.bot_control_settings c WHERE bot_tenant_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let templates = sqlx::query_scalar(
        "SELECT template_name || CASE WHEN is_default THEN ' (default)' ELSE '' END FROM alphadome.bot_templates \
         WHERE bot_tenant_id = $1 AND is_active ORDER BY is_default DESC, template_name",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let training = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 AND is_active",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok((settings, templates, training))
}

/// Sets `is_active`; returns whether it changed.
pub async fn set_active(
    conn: &mut PgConnection,
    id: Uuid,
    active: bool,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE alphadome.bot_tenants SET is_active = $2 WHERE id = $1 AND is_active <> $2",
    )
    .bind(id)
    .bind(active)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// Stores a new webhook verify token digest; the previous one stays valid
/// for `grace`.
pub async fn rotate_verify_token(
    conn: &mut PgConnection,
    id: Uuid,
    digest: &str,
    grace: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alphadome.bot_tenants SET webhook_verify_token_previous = webhook_verify_token, \
           webhook_verify_token_previous_expires_at = CASE WHEN webhook_verify_token IS NULL THEN NULL \
             ELSE now() + make_interval(secs => $3) END, \
           webhook_verify_token = $2, webhook_verify_token_rotated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(digest)
    .bind(grace.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}

/// Every stored credential: tenant, column, ciphertext (by tenant).
pub async fn stored_credentials(
    pool: &PgPool,
) -> Result<Vec<(Uuid, SecretColumn, String)>, sqlx::Error> {
    type Stored = (Uuid, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Stored> = sqlx::query_as(
        "SELECT id, whatsapp_access_token, whatsapp_app_secret, ai_api_key FROM alphadome.bot_tenants ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for (id, token, secret, key) in rows {
        for (col, v) in [
            (SecretColumn::WhatsappAccessToken, token),
            (SecretColumn::WhatsappAppSecret, secret),
            (SecretColumn::AiApiKey, key),
        ] {
            if let Some(v) = v {
                out.push((id, col, v));
            }
        }
    }
    Ok(out)
}

/// Replaces a credential's ciphertext, only while it still holds `old` (a
/// value written meanwhile is left alone). Returns whether it replaced it.
pub async fn replace_credential(
    conn: &mut PgConnection,
    id: Uuid,
    column: SecretColumn,
    old: &str,
    new: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(&format!(
        "UPDATE alphadome.bot_tenants SET {c} = $3 WHERE id = $1 AND {c} = $2",
        c = column.column()
    ))
    .bind(id)
    .bind(old)
    .bind(new)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// A tenant with a WhatsApp token, as the token check sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenHolder {
    pub id: Uuid,
    pub client_name: String,
    /// The token's ciphertext.
    pub whatsapp_access_token: String,
    pub whatsapp_token_expires_at: Option<DateTime<Utc>>,
    pub whatsapp_token_invalid_at: Option<DateTime<Utc>>,
    pub escalation_phone: Option<String>,
    pub escalation_email: Option<String>,
    /// Its approved WhatsApp templates (the alert uses its `token_alert` one
    /// outside the contact's window).
    pub whatsapp_templates: serde_json::Value,
}

/// Every tenant with a WhatsApp token, with its escalation contacts.
pub async fn token_holders(pool: &PgPool) -> Result<Vec<TokenHolder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id, t.client_name, t.whatsapp_access_token, t.whatsapp_token_expires_at, t.whatsapp_token_invalid_at, \
           c.escalation_phone, c.escalation_email, t.whatsapp_templates \
         FROM alphadome.bot_tenants t LEFT JOIN alphadome.bot_control_settings c ON c.bot_tenant_id = t.id \
         WHERE t.whatsapp_access_token IS NOT NULL ORDER BY t.id",
    )
    .fetch_all(pool)
    .await
}

/// Records the token's expiry as Meta reports it (`None`: never expires).
pub async fn set_token_expiry(
    pool: &PgPool,
    id: Uuid,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE alphadome.bot_tenants SET whatsapp_token_expires_at = $2 WHERE id = $1")
        .bind(id)
        .bind(expires_at)
        .execute(pool)
        .await
        .map(|_| ())
}

// ---- Manifest writes, in the caller's transaction. ----

/// What a manifest apply needs of the tenant already stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Existing {
    pub id: Uuid,
    pub brand_id: Option<Uuid>,
    pub whatsapp_access_token: Option<String>,
    pub whatsapp_app_secret: Option<String>,
    pub ai_api_key: Option<String>,
}

impl Existing {
    /// The stored ciphertext of `column`.
    pub fn credential(&self, column: SecretColumn) -> Option<&String> {
        match column {
            SecretColumn::WhatsappAccessToken => self.whatsapp_access_token.as_ref(),
            SecretColumn::WhatsappAppSecret => self.whatsapp_app_secret.as_ref(),
            SecretColumn::AiApiKey => self.ai_api_key.as_ref(),
        }
    }
}

/// The tenant with this client phone, locked until the transaction ends.
pub async fn lock_by_phone(
    conn: &mut PgConnection,
    phone: &str,
) -> Result<Option<Existing>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, brand_id, whatsapp_access_token, whatsapp_app_secret, ai_api_key \
         FROM alphadome.bot_tenants WHERE client_phone = $1 FOR UPDATE",
    )
    .bind(phone)
    .fetch_optional(conn)
    .await
}

/// Whether a tenant other than `except` has this verify token digest.
pub async fn verify_digest_taken(
    conn: &mut PgConnection,
    digest: &str,
    except: Uuid,
) -> Result<bool, sqlx::Error> {
    let other: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM alphadome.bot_tenants WHERE webhook_verify_token = $1 AND id <> $2",
    )
    .bind(digest)
    .bind(except)
    .fetch_optional(conn)
    .await?;
    Ok(other.is_some())
}

/// Whether a tenant other than `except` has this phone number id.
pub async fn phone_number_id_taken(
    conn: &mut PgConnection,
    phone_number_id: &str,
    except: Uuid,
) -> Result<bool, sqlx::Error> {
    let other: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM alphadome.bot_tenants WHERE whatsapp_phone_number_id = $1 AND id <> $2",
    )
    .bind(phone_number_id)
    .bind(except)
    .fetch_optional(conn)
    .await?;
    Ok(other.is_some())
}

/// Whether `public.brands` has this brand.
pub async fn brand_exists(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM public.brands WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// Creates the brand a new tenant's conversations are mirrored under.
pub async fn create_brand(conn: &mut PgConnection) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO public.brands (is_platform_owner) VALUES (false) RETURNING id")
        .fetch_one(conn)
        .await
}

/// A tenant row as a manifest gives it. Credentials are ciphertext.
/// `is_active`/`is_verified`/`verify_digest` left `None` keep what is
/// stored.
#[derive(Debug, Clone)]
pub struct TenantWrite<'a> {
    pub id: Uuid,
    pub client_name: &'a str,
    pub client_phone: &'a str,
    pub client_email: Option<&'a str>,
    pub brand_id: Uuid,
    pub point_of_contact_name: Option<&'a str>,
    pub point_of_contact_phone: Option<&'a str>,
    pub whatsapp_phone_number_id: Option<&'a str>,
    pub whatsapp_business_account_id: Option<&'a str>,
    pub whatsapp_access_token: Option<&'a str>,
    pub whatsapp_token_expires_at: Option<DateTime<Utc>>,
    pub whatsapp_app_secret: Option<&'a str>,
    pub ai_provider: Option<&'a str>,
    pub ai_api_key: Option<&'a str>,
    pub ai_model: Option<&'a str>,
    pub ai_base_url: Option<&'a str>,
    pub is_active: Option<bool>,
    pub is_verified: Option<bool>,
    pub verify_digest: Option<&'a str>,
    pub webhook_url: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
}

/// Inserts the tenant, or updates it (by client phone) where anything
/// differs. A new token clears the "rejected by Meta" mark; a new verify
/// token keeps the previous one valid for 24 hours. Returns the rows
/// written (0 when nothing changed).
pub async fn upsert_tenant(
    conn: &mut PgConnection,
    t: &TenantWrite<'_>,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO alphadome.bot_tenants AS t (id, client_name, client_phone, client_email, brand_id, \
           point_of_contact_name, point_of_contact_phone, whatsapp_phone_number_id, \
           whatsapp_business_account_id, whatsapp_access_token, whatsapp_token_expires_at, \
           whatsapp_app_secret, ai_provider, ai_api_key, ai_model, ai_base_url, is_active, \
           is_verified, webhook_verify_token, webhook_url, metadata, webhook_verify_token_rotated_at) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,COALESCE($17,false),COALESCE($18,false),$19,$20,$21, \
                 CASE WHEN $19::text IS NULL THEN NULL ELSE now() END) \
         ON CONFLICT (client_phone) DO UPDATE SET \
           client_name = EXCLUDED.client_name, client_email = EXCLUDED.client_email, \
           brand_id = EXCLUDED.brand_id, point_of_contact_name = EXCLUDED.point_of_contact_name, \
           point_of_contact_phone = EXCLUDED.point_of_contact_phone, \
           whatsapp_phone_number_id = EXCLUDED.whatsapp_phone_number_id, \
           whatsapp_business_account_id = EXCLUDED.whatsapp_business_account_id, \
           whatsapp_access_token = EXCLUDED.whatsapp_access_token, \
           whatsapp_token_expires_at = EXCLUDED.whatsapp_token_expires_at, \
           whatsapp_token_invalid_at = CASE WHEN t.whatsapp_access_token IS DISTINCT FROM EXCLUDED.whatsapp_access_token \
                                            THEN NULL ELSE t.whatsapp_token_invalid_at END, \
           whatsapp_app_secret = EXCLUDED.whatsapp_app_secret, ai_provider = EXCLUDED.ai_provider, \
           ai_api_key = EXCLUDED.ai_api_key, ai_model = EXCLUDED.ai_model, ai_base_url = EXCLUDED.ai_base_url, \
           is_active = COALESCE($17, t.is_active), is_verified = COALESCE($18, t.is_verified), \
           webhook_verify_token = COALESCE(EXCLUDED.webhook_verify_token, t.webhook_verify_token), webhook_url = EXCLUDED.webhook_url, \
           webhook_verify_token_previous = CASE WHEN t.webhook_verify_token IS DISTINCT FROM COALESCE(EXCLUDED.webhook_verify_token, t.webhook_verify_token) \
             THEN t.webhook_verify_token ELSE t.webhook_verify_token_previous END, \
           webhook_verify_token_previous_expires_at = CASE WHEN t.webhook_verify_token IS DISTINCT FROM COALESCE(EXCLUDED.webhook_verify_token, t.webhook_verify_token) \
             THEN now() + interval '24 hours' ELSE t.webhook_verify_token_previous_expires_at END, \
           webhook_verify_token_rotated_at = CASE WHEN t.webhook_verify_token IS DISTINCT FROM COALESCE(EXCLUDED.webhook_verify_token, t.webhook_verify_token) \
             THEN now() ELSE t.webhook_verify_token_rotated_at END, \
           metadata = EXCLUDED.metadata \
         WHERE (t.client_name, t.client_email, t.brand_id, t.point_of_contact_name, t.point_of_contact_phone, \
                t.whatsapp_phone_number_id, t.whatsapp_business_account_id, t.whatsapp_access_token, \
                t.whatsapp_token_expires_at, t.whatsapp_app_secret, t.ai_provider, t.ai_api_key, t.ai_model, \
                t.ai_base_url, t.is_active, t.is_verified, t.webhook_verify_token, t.webhook_url, t.metadata) \
           IS DISTINCT FROM \
               (EXCLUDED.client_name, EXCLUDED.client_email, EXCLUDED.brand_id, EXCLUDED.point_of_contact_name, \
                EXCLUDED.point_of_contact_phone, EXCLUDED.whatsapp_phone_number_id, \
                EXCLUDED.whatsapp_business_account_id, EXCLUDED.whatsapp_access_token, \
                EXCLUDED.whatsapp_token_expires_at, EXCLUDED.whatsapp_app_secret, EXCLUDED.ai_provider, \
                EXCLUDED.ai_api_key, EXCLUDED.ai_model, EXCLUDED.ai_base_url, COALESCE($17, t.is_active), \
                COALESCE($18, t.is_verified), COALESCE(EXCLUDED.webhook_verify_token, t.webhook_verify_token), EXCLUDED.webhook_url, EXCLUDED.metadata)",
    )
    .bind(t.id)
    .bind(t.client_name)
    .bind(t.client_phone)
    .bind(t.client_email)
    .bind(t.brand_id)
    .bind(t.point_of_contact_name)
    .bind(t.point_of_contact_phone)
    .bind(t.whatsapp_phone_number_id)
    .bind(t.whatsapp_business_account_id)
    .bind(t.whatsapp_access_token)
    .bind(t.whatsapp_token_expires_at)
    .bind(t.whatsapp_app_secret)
    .bind(t.ai_provider)
    .bind(t.ai_api_key)
    .bind(t.ai_model)
    .bind(t.ai_base_url)
    .bind(t.is_active)
    .bind(t.is_verified)
    .bind(t.verify_digest)
    .bind(t.webhook_url)
    .bind(t.metadata)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// A tenant's control settings as a manifest gives them.
#[derive(Debug, Clone)]
pub struct SettingsWrite<'a> {
    pub is_bot_enabled: bool,
    pub max_messages_per_hour: Option<i32>,
    pub max_messages_per_user_per_day: Option<i32>,
    pub enable_ai_responses: bool,
    pub enable_payment_flow: bool,
    pub enable_training_mode: bool,
    pub enable_auto_reply: bool,
    pub log_conversations: bool,
    pub log_errors: bool,
    pub escalation_phone: Option<&'a str>,
    pub escalation_email: Option<&'a str>,
    pub fallback_reply: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
    pub handoff_pause_minutes: i32,
    pub business_hours: Option<&'a serde_json::Value>,
    pub out_of_hours_reply: Option<&'a str>,
    pub answer_out_of_hours: bool,
    pub greeting_message: Option<&'a str>,
    pub send_read_receipts: bool,
    pub opt_out_keywords: &'a [String],
    pub opt_in_keywords: &'a [String],
    pub debounce_ms: i32,
}

/// Inserts or updates (where anything differs) a tenant's settings row.
pub async fn upsert_settings(
    conn: &mut PgConnection,
    id: Uuid,
    s: &SettingsWrite<'_>,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO alphadome.bot_control_settings AS c (bot_tenant_id, is_bot_enabled, \
           max_messages_per_hour, max_messages_per_user_per_day, enable_ai_responses, \
           enable_payment_flow, enable_training_mode, enable_auto_reply, log_conversations, \
           log_errors, escalation_phone, escalation_email, fallback_reply, metadata, handoff_pause_minutes, \
           business_hours, out_of_hours_reply, answer_out_of_hours, greeting_message, send_read_receipts, \
           opt_out_keywords, opt_in_keywords, debounce_ms) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23) \
         ON CONFLICT (bot_tenant_id) DO UPDATE SET is_bot_enabled = EXCLUDED.is_bot_enabled, \
           max_messages_per_hour = EXCLUDED.max_messages_per_hour, \
           max_messages_per_user_per_day = EXCLUDED.max_messages_per_user_per_day, \
           enable_ai_responses = EXCLUDED.enable_ai_responses, enable_payment_flow = EXCLUDED.enable_payment_flow, \
           enable_training_mode = EXCLUDED.enable_training_mode, enable_auto_reply = EXCLUDED.enable_auto_reply, \
           log_conversations = EXCLUDED.log_conversations, log_errors = EXCLUDED.log_errors, \
           escalation_phone = EXCLUDED.escalation_phone, escalation_email = EXCLUDED.escalation_email, \
           fallback_reply = EXCLUDED.fallback_reply, metadata = EXCLUDED.metadata, \
           handoff_pause_minutes = EXCLUDED.handoff_pause_minutes, \
           business_hours = EXCLUDED.business_hours, out_of_hours_reply = EXCLUDED.out_of_hours_reply, \
           answer_out_of_hours = EXCLUDED.answer_out_of_hours, greeting_message = EXCLUDED.greeting_message, \
           send_read_receipts = EXCLUDED.send_read_receipts, opt_out_keywords = EXCLUDED.opt_out_keywords, \
           opt_in_keywords = EXCLUDED.opt_in_keywords, debounce_ms = EXCLUDED.debounce_ms \
         WHERE (c.debounce_ms, c.business_hours, c.out_of_hours_reply, c.answer_out_of_hours, c.greeting_message, \
                c.send_read_receipts, c.opt_out_keywords, c.opt_in_keywords, c.handoff_pause_minutes, c.is_bot_enabled, c.max_messages_per_hour, c.max_messages_per_user_per_day, \
                c.enable_ai_responses, c.enable_payment_flow, c.enable_training_mode, c.enable_auto_reply, \
                c.log_conversations, c.log_errors, c.escalation_phone, c.escalation_email, c.fallback_reply, c.metadata) \
           IS DISTINCT FROM \
               (EXCLUDED.debounce_ms, EXCLUDED.business_hours, EXCLUDED.out_of_hours_reply, EXCLUDED.answer_out_of_hours, \
                EXCLUDED.greeting_message, EXCLUDED.send_read_receipts, EXCLUDED.opt_out_keywords, \
                EXCLUDED.opt_in_keywords, EXCLUDED.handoff_pause_minutes, EXCLUDED.is_bot_enabled, EXCLUDED.max_messages_per_hour, EXCLUDED.max_messages_per_user_per_day, \
                EXCLUDED.enable_ai_responses, EXCLUDED.enable_payment_flow, EXCLUDED.enable_training_mode, \
                EXCLUDED.enable_auto_reply, EXCLUDED.log_conversations, EXCLUDED.log_errors, \
                EXCLUDED.escalation_phone, EXCLUDED.escalation_email, EXCLUDED.fallback_reply, EXCLUDED.metadata)",
    )
    .bind(id)
    .bind(s.is_bot_enabled)
    .bind(s.max_messages_per_hour)
    .bind(s.max_messages_per_user_per_day)
    .bind(s.enable_ai_responses)
    .bind(s.enable_payment_flow)
    .bind(s.enable_training_mode)
    .bind(s.enable_auto_reply)
    .bind(s.log_conversations)
    .bind(s.log_errors)
    .bind(s.escalation_phone)
    .bind(s.escalation_email)
    .bind(s.fallback_reply)
    .bind(s.metadata)
    .bind(s.handoff_pause_minutes)
    .bind(s.business_hours)
    .bind(s.out_of_hours_reply)
    .bind(s.answer_out_of_hours)
    .bind(s.greeting_message)
    .bind(s.send_read_receipts)
    .bind(s.opt_out_keywords)
    .bind(s.opt_in_keywords)
    .bind(s.debounce_ms)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Sets a tenant's approved WhatsApp message templates (a checked JSON
/// array, [`super::messaging::check_templates`]); the rows written (0 when
/// nothing changed).
pub async fn set_whatsapp_templates(
    conn: &mut PgConnection,
    id: Uuid,
    templates: &serde_json::Value,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE alphadome.bot_tenants SET whatsapp_templates = $2, updated_at = now() \
         WHERE id = $1 AND whatsapp_templates IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(templates)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// A template as a manifest gives it.
#[derive(Debug, Clone)]
pub struct TemplateWrite<'a> {
    pub template_name: &'a str,
    pub description: Option<&'a str>,
    pub system_prompt: Option<&'a str>,
    pub conversation_context: &'a serde_json::Value,
    pub tone: &'a str,
    pub max_response_length: Option<i32>,
    pub is_active: bool,
    pub is_default: bool,
    pub metadata: &'a serde_json::Value,
}

/// Makes a tenant's templates what `templates` says: templates left out
/// are deactivated (never deleted), the others inserted or updated where
/// anything differs. Returns the rows written.
pub async fn sync_templates(
    conn: &mut PgConnection,
    id: Uuid,
    templates: &[TemplateWrite<'_>],
) -> Result<u64, sqlx::Error> {
    let names: Vec<&str> = templates.iter().map(|t| t.template_name).collect();
    let default = templates
        .iter()
        .find(|t| t.is_default)
        .map(|t| t.template_name);
    // Rows leaving the manifest, or losing the default, first: the
    // one-default index must hold after every statement.
    let mut changed = sqlx::query(
        "UPDATE alphadome.bot_templates SET is_active = false, is_default = false \
         WHERE bot_tenant_id = $1 AND NOT (template_name = ANY($2)) AND (is_active OR is_default)",
    )
    .bind(id)
    .bind(&names)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    changed += sqlx::query(
        "UPDATE alphadome.bot_templates SET is_default = false \
         WHERE bot_tenant_id = $1 AND is_default AND template_name IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(default)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    for t in templates {
        changed += sqlx::query(
            "INSERT INTO alphadome.bot_templates AS x (bot_tenant_id, template_name, description, \
               system_prompt, conversation_context, tone, max_response_length, is_active, is_default, metadata) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) \
             ON CONFLICT (bot_tenant_id, template_name) DO UPDATE SET description = EXCLUDED.description, \
               system_prompt = EXCLUDED.system_prompt, conversation_context = EXCLUDED.conversation_context, \
               tone = EXCLUDED.tone, max_response_length = EXCLUDED.max_response_length, \
               is_active = EXCLUDED.is_active, is_default = EXCLUDED.is_default, metadata = EXCLUDED.metadata \
             WHERE (x.description, x.system_prompt, x.conversation_context, x.tone, x.max_response_length, \
                    x.is_active, x.is_default, x.metadata) IS DISTINCT FROM \
                   (EXCLUDED.description, EXCLUDED.system_prompt, EXCLUDED.conversation_context, EXCLUDED.tone, \
                    EXCLUDED.max_response_length, EXCLUDED.is_active, EXCLUDED.is_default, EXCLUDED.metadata)",
        )
        .bind(id)
        .bind(t.template_name)
        .bind(t.description)
        .bind(t.system_prompt)
        .bind(t.conversation_context)
        .bind(t.tone)
        .bind(t.max_response_length)
        .bind(t.is_active)
        .bind(t.is_default)
        .bind(t.metadata)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(changed)
}

/// A training row as a manifest gives it.
#[derive(Debug, Clone)]
pub struct TrainingWrite<'a> {
    pub data_type: &'a str,
    pub question: &'a str,
    pub answer: &'a str,
    pub category: Option<&'a str>,
    pub priority: i32,
    pub confidence_score: f64,
    pub is_active: bool,
}

/// Makes a tenant's training data what `rows` says (keyed by type and
/// question): rows left out are deactivated (never deleted: log rows keep
/// citing them), the others inserted or updated where anything differs.
/// Returns the rows written.
pub async fn sync_training(
    conn: &mut PgConnection,
    id: Uuid,
    rows: &[TrainingWrite<'_>],
) -> Result<u64, sqlx::Error> {
    let types: Vec<&str> = rows.iter().map(|r| r.data_type).collect();
    let questions: Vec<&str> = rows.iter().map(|r| r.question).collect();
    let mut changed = sqlx::query(
        "UPDATE alphadome.bot_training_data d SET is_active = false \
         WHERE d.bot_tenant_id = $1 AND d.is_active AND NOT EXISTS ( \
           SELECT 1 FROM UNNEST($2::text[], $3::text[]) AS k(data_type, question) \
           WHERE k.data_type = d.data_type AND k.question = d.question)",
    )
    .bind(id)
    .bind(&types)
    .bind(&questions)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    for r in rows {
        changed += sqlx::query(
            "INSERT INTO alphadome.bot_training_data AS d (bot_tenant_id, data_type, question, answer, \
               category, priority, confidence_score, is_active) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8) \
             ON CONFLICT (bot_tenant_id, data_type, question) DO UPDATE SET answer = EXCLUDED.answer, \
               category = EXCLUDED.category, priority = EXCLUDED.priority, \
               confidence_score = EXCLUDED.confidence_score, is_active = EXCLUDED.is_active \
             WHERE (d.answer, d.category, d.priority, d.confidence_score, d.is_active) IS DISTINCT FROM \
                   (EXCLUDED.answer, EXCLUDED.category, EXCLUDED.priority, EXCLUDED.confidence_score, EXCLUDED.is_active)",
        )
        .bind(id)
        .bind(r.data_type)
        .bind(r.question)
        .bind(r.answer)
        .bind(r.category)
        .bind(r.priority)
        .bind(r.confidence_score)
        .bind(r.is_active)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(changed)
}
