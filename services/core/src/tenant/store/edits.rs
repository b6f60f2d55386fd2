//! The dashboard's edits of a tenant's configuration, one row at a time,
//! in the caller's transaction. The caller acts for the tenant (a pool of
//! the dashboard role, [`crate::db::scoped`]), so row-level security
//! confines every statement here to that tenant: another tenant's id finds
//! no row. Rows are read into the caller's own types (`T: FromRow`) from
//! the column lists below, so the API shapes its answers and the SQL stays
//! here.

use sqlx::postgres::PgRow;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{TemplateWrite, TrainingWrite};

/// A row type the caller reads a query's result into.
pub trait Row: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {}
impl<T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin> Row for T {}

/// Every column of `bot_control_settings` a person sees.
pub const SETTINGS_COLUMNS: &str = "is_bot_enabled, max_messages_per_hour, \
    max_messages_per_user_per_day, enable_ai_responses, enable_payment_flow, enable_training_mode, \
    enable_auto_reply, log_conversations, log_errors, escalation_phone, escalation_email, \
    fallback_reply, handoff_pause_minutes, business_hours, out_of_hours_reply, answer_out_of_hours, \
    greeting_message, send_read_receipts, opt_out_keywords, opt_in_keywords, debounce_ms, metadata, \
    updated_at";

/// Every column of `bot_templates` but the tenant's id.
pub const TEMPLATE_COLUMNS: &str = "id, template_name, description, system_prompt, \
    conversation_context, tone, max_response_length, is_active, is_default, metadata, \
    created_at, updated_at";

/// Every column of `bot_training_data` but the tenant's id.
pub const TRAINING_COLUMNS: &str = "id, data_type, question, answer, category, priority, \
    confidence_score::float8 AS confidence_score, is_active, created_at, updated_at";

/// The id of the tenant with `id` or with client phone `phone`, if the
/// transaction may see it.
pub async fn tenant_id(
    conn: &mut PgConnection,
    id: Option<Uuid>,
    phone: Option<&str>,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM alphadome.bot_tenants WHERE id = $1 OR client_phone = $2 LIMIT 1",
    )
    .bind(id)
    .bind(phone)
    .fetch_optional(conn)
    .await
}

/// A tenant's approved WhatsApp message templates (the stored JSON array).
pub async fn whatsapp_templates(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<serde_json::Value, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT whatsapp_templates FROM alphadome.bot_tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(conn)
            .await?
            .unwrap_or_else(|| serde_json::json!([])),
    )
}

/// A tenant's settings row (made with the column defaults when it has
/// none: every tenant applied from a manifest has one).
pub async fn settings<T: Row>(conn: &mut PgConnection, tenant: Uuid) -> Result<T, sqlx::Error> {
    let found = sqlx::query_as(&format!(
        "SELECT {SETTINGS_COLUMNS} FROM alphadome.bot_control_settings WHERE bot_tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some(s) => Ok(s),
        None => settings_for_update(conn, tenant).await,
    }
}

/// A tenant's settings row, made with the column defaults first when it
/// has none, locked for the caller's change.
pub async fn settings_for_update<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<T, sqlx::Error> {
    sqlx::query(
        "INSERT INTO alphadome.bot_control_settings (bot_tenant_id) VALUES ($1) \
         ON CONFLICT (bot_tenant_id) DO NOTHING",
    )
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(&format!(
        "SELECT {SETTINGS_COLUMNS} FROM alphadome.bot_control_settings WHERE bot_tenant_id = $1 FOR UPDATE"
    ))
    .bind(tenant)
    .fetch_one(conn)
    .await
}

/// A tenant's templates, the default first, then by name.
pub async fn templates<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Vec<T>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM alphadome.bot_templates WHERE bot_tenant_id = $1 \
         ORDER BY is_default DESC, template_name"
    ))
    .bind(tenant)
    .fetch_all(conn)
    .await
}

/// One of a tenant's templates, locked for the caller's change.
pub async fn template<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<T>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM alphadome.bot_templates WHERE bot_tenant_id = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Writes template `id` (a new one when `None`): a template made the
/// default takes that from the tenant's previous default.
pub async fn save_template<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Option<Uuid>,
    t: &TemplateWrite<'_>,
) -> Result<T, sqlx::Error> {
    if t.is_default {
        sqlx::query(
            "UPDATE alphadome.bot_templates SET is_default = false \
             WHERE bot_tenant_id = $1 AND is_default AND id IS DISTINCT FROM $2",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query_as(&format!(
        "INSERT INTO alphadome.bot_templates AS x (id, bot_tenant_id, template_name, description, \
           system_prompt, conversation_context, tone, max_response_length, is_active, is_default, metadata) \
         VALUES (COALESCE($1, gen_random_uuid()), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET template_name = EXCLUDED.template_name, \
           description = EXCLUDED.description, system_prompt = EXCLUDED.system_prompt, \
           conversation_context = EXCLUDED.conversation_context, tone = EXCLUDED.tone, \
           max_response_length = EXCLUDED.max_response_length, is_active = EXCLUDED.is_active, \
           is_default = EXCLUDED.is_default, metadata = EXCLUDED.metadata \
         RETURNING {TEMPLATE_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(t.template_name)
    .bind(t.description)
    .bind(t.system_prompt)
    .bind(t.conversation_context)
    .bind(t.tone)
    .bind(t.max_response_length)
    .bind(t.is_active)
    .bind(t.is_default)
    .bind(t.metadata)
    .fetch_one(conn)
    .await
}

/// Deletes one of a tenant's templates; whether there was one.
pub async fn delete_template(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM alphadome.bot_templates WHERE bot_tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// A tenant's training data by type, priority (highest first) and
/// question.
pub async fn training<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Vec<T>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TRAINING_COLUMNS} FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 \
         ORDER BY data_type, priority DESC, question"
    ))
    .bind(tenant)
    .fetch_all(conn)
    .await
}

/// One of a tenant's training rows, locked for the caller's change.
pub async fn training_row<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<T>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TRAINING_COLUMNS} FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Writes training row `id` (a new one when `None`).
pub async fn save_training<T: Row>(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Option<Uuid>,
    r: &TrainingWrite<'_>,
) -> Result<T, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO alphadome.bot_training_data AS d (id, bot_tenant_id, data_type, question, answer, \
           category, priority, confidence_score, is_active) \
         VALUES (COALESCE($1, gen_random_uuid()), $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET data_type = EXCLUDED.data_type, question = EXCLUDED.question, \
           answer = EXCLUDED.answer, category = EXCLUDED.category, priority = EXCLUDED.priority, \
           confidence_score = EXCLUDED.confidence_score, is_active = EXCLUDED.is_active \
         RETURNING {TRAINING_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(r.data_type)
    .bind(r.question)
    .bind(r.answer)
    .bind(r.category)
    .bind(r.priority)
    .bind(r.confidence_score)
    .bind(r.is_active)
    .fetch_one(conn)
    .await
}

/// Deletes one of a tenant's training rows (log rows citing it keep their
/// text and lose the link); whether there was one.
pub async fn delete_training(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let r =
        sqlx::query("DELETE FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(conn)
            .await?;
    Ok(r.rows_affected() > 0)
}

/// Inserts a training row, or updates the tenant's row with the same type
/// and question where anything differs: `Some(true)` when it was created,
/// `Some(false)` updated, `None` unchanged.
pub async fn upsert_training(
    conn: &mut PgConnection,
    tenant: Uuid,
    r: &TrainingWrite<'_>,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO alphadome.bot_training_data AS d (bot_tenant_id, data_type, question, answer, \
           category, priority, confidence_score, is_active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (bot_tenant_id, data_type, question) DO UPDATE SET answer = EXCLUDED.answer, \
           category = EXCLUDED.category, priority = EXCLUDED.priority, \
           confidence_score = EXCLUDED.confidence_score, is_active = EXCLUDED.is_active \
         WHERE (d.answer, d.category, d.priority, d.confidence_score, d.is_active) IS DISTINCT FROM \
               (EXCLUDED.answer, EXCLUDED.category, EXCLUDED.priority, EXCLUDED.confidence_score, EXCLUDED.is_active) \
         RETURNING xmax = 0",
    )
    .bind(tenant)
    .bind(r.data_type)
    .bind(r.question)
    .bind(r.answer)
    .bind(r.category)
    .bind(r.priority)
    .bind(r.confidence_score)
    .bind(r.is_active)
    .fetch_optional(conn)
    .await
}

/// The columns of a tenant's profile (everything a person edits but the
/// credentials, which no service role reads).
pub const PROFILE_COLUMNS: &str = "client_name, client_email, point_of_contact_name, \
    point_of_contact_phone, whatsapp_phone_number_id, whatsapp_business_account_id, \
    whatsapp_token_expires_at, ai_provider, ai_model, ai_base_url, webhook_url, metadata";

/// A tenant's profile, locked for the caller's change.
pub async fn profile<T: Row>(conn: &mut PgConnection, tenant: Uuid) -> Result<T, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PROFILE_COLUMNS} FROM alphadome.bot_tenants WHERE id = $1 FOR UPDATE"
    ))
    .bind(tenant)
    .fetch_one(conn)
    .await
}

/// A tenant's profile as a person edits it.
#[derive(Debug, Clone)]
pub struct ProfileWrite<'a> {
    pub client_name: &'a str,
    pub client_email: Option<&'a str>,
    pub point_of_contact_name: Option<&'a str>,
    pub point_of_contact_phone: Option<&'a str>,
    pub whatsapp_phone_number_id: Option<&'a str>,
    pub whatsapp_business_account_id: Option<&'a str>,
    pub whatsapp_token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ai_provider: Option<&'a str>,
    pub ai_model: Option<&'a str>,
    pub ai_base_url: Option<&'a str>,
    pub webhook_url: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
}

/// Writes a tenant's profile.
pub async fn save_profile(
    conn: &mut PgConnection,
    tenant: Uuid,
    p: &ProfileWrite<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alphadome.bot_tenants SET client_name = $2, client_email = $3, point_of_contact_name = $4, \
           point_of_contact_phone = $5, whatsapp_phone_number_id = $6, whatsapp_business_account_id = $7, \
           whatsapp_token_expires_at = $8, ai_provider = $9, ai_model = $10, ai_base_url = $11, \
           webhook_url = $12, metadata = $13 WHERE id = $1",
    )
    .bind(tenant)
    .bind(p.client_name)
    .bind(p.client_email)
    .bind(p.point_of_contact_name)
    .bind(p.point_of_contact_phone)
    .bind(p.whatsapp_phone_number_id)
    .bind(p.whatsapp_business_account_id)
    .bind(p.whatsapp_token_expires_at)
    .bind(p.ai_provider)
    .bind(p.ai_model)
    .bind(p.ai_base_url)
    .bind(p.webhook_url)
    .bind(p.metadata)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Stores a credential's new ciphertext (a new WhatsApp token clears the
/// mark of Meta having rejected the old one).
pub async fn set_credential(
    conn: &mut PgConnection,
    tenant: Uuid,
    column: crate::crypto::SecretColumn,
    ciphertext: &str,
) -> Result<(), sqlx::Error> {
    use crate::crypto::SecretColumn;
    let sql = match column {
        SecretColumn::WhatsappAccessToken => {
            "UPDATE alphadome.bot_tenants SET whatsapp_access_token = $2, whatsapp_token_invalid_at = NULL WHERE id = $1"
        }
        SecretColumn::WhatsappAppSecret => {
            "UPDATE alphadome.bot_tenants SET whatsapp_app_secret = $2 WHERE id = $1"
        }
        SecretColumn::AiApiKey => "UPDATE alphadome.bot_tenants SET ai_api_key = $2 WHERE id = $1",
    };
    sqlx::query(sql)
        .bind(tenant)
        .bind(ciphertext)
        .execute(conn)
        .await
        .map(|_| ())
}
