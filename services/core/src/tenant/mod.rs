//! The tenant model: the rows of a tenant's configuration (the tenant, its
//! control settings, templates and training data), the store that owns
//! those tables ([`store`]: every statement on them, for the services'
//! reads and the admin's writes alike), and [`TenantCache`], the in-memory
//! copy each service keeps and refreshes when a tenant changes.

mod cache;
pub mod messaging;
pub mod store;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::bus::Bus;
use crate::Report;

pub use cache::{RefreshError, TenantCache};

/// A row of `alphadome.bot_tenants`. Secret columns hold ciphertext (or
/// nothing, where the reader may not see them).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub client_name: String,
    pub client_phone: String,
    pub client_email: Option<String>,
    pub brand_id: Option<Uuid>,
    pub point_of_contact_name: Option<String>,
    pub point_of_contact_phone: Option<String>,
    pub whatsapp_phone_number_id: Option<String>,
    pub whatsapp_business_account_id: Option<String>,
    pub whatsapp_access_token: Option<String>,
    pub whatsapp_token_expires_at: Option<DateTime<Utc>>,
    pub whatsapp_app_secret: Option<String>,
    pub whatsapp_token_invalid_at: Option<DateTime<Utc>>,
    pub ai_provider: Option<String>,
    pub ai_api_key: Option<String>,
    pub ai_model: Option<String>,
    pub ai_base_url: Option<String>,
    pub is_active: bool,
    pub is_verified: bool,
    pub webhook_verify_token: Option<String>,
    pub webhook_url: Option<String>,
    pub metadata: serde_json::Value,
    /// Its approved WhatsApp message templates ([`messaging::WhatsAppTemplate`]s).
    pub whatsapp_templates: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A row of `alphadome.bot_control_settings`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ControlSettings {
    pub is_bot_enabled: bool,
    pub max_messages_per_hour: Option<i32>,
    pub max_messages_per_user_per_day: Option<i32>,
    pub enable_ai_responses: bool,
    pub enable_payment_flow: bool,
    pub enable_training_mode: bool,
    pub enable_auto_reply: bool,
    pub log_conversations: bool,
    pub log_errors: bool,
    pub escalation_phone: Option<String>,
    pub escalation_email: Option<String>,
    pub fallback_reply: Option<String>,
    pub handoff_pause_minutes: i32,
    /// Opening hours ([`messaging::BusinessHours`]); none: always open.
    pub business_hours: Option<serde_json::Value>,
    pub out_of_hours_reply: Option<String>,
    /// Whether the bot still answers out of hours (with the note).
    pub answer_out_of_hours: bool,
    /// Sent before the first answer of a new conversation.
    pub greeting_message: Option<String>,
    /// Whether each answered message is marked read (with the typing
    /// indicator while the AI writes).
    pub send_read_receipts: bool,
    /// The tenant's words for STOP and START beside the built-in ones.
    pub opt_out_keywords: Vec<String>,
    pub opt_in_keywords: Vec<String>,
    /// Messages of one customer within this long of each other are
    /// answered once, as one question (0: each on its own).
    pub debounce_ms: i32,
}

impl Default for ControlSettings {
    /// The column defaults of the table, for a tenant without a settings row.
    fn default() -> Self {
        Self {
            is_bot_enabled: true,
            max_messages_per_hour: None,
            max_messages_per_user_per_day: None,
            enable_ai_responses: false,
            enable_payment_flow: false,
            enable_training_mode: false,
            enable_auto_reply: true,
            log_conversations: true,
            log_errors: true,
            escalation_phone: None,
            escalation_email: None,
            fallback_reply: None,
            handoff_pause_minutes: 60,
            business_hours: None,
            out_of_hours_reply: None,
            answer_out_of_hours: true,
            greeting_message: None,
            send_read_receipts: true,
            opt_out_keywords: Vec::new(),
            opt_in_keywords: Vec::new(),
            debounce_ms: 1500,
        }
    }
}

/// A row of `alphadome.bot_templates`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Template {
    pub id: Uuid,
    pub template_name: String,
    pub description: Option<String>,
    pub system_prompt: Option<String>,
    pub conversation_context: serde_json::Value,
    pub tone: String,
    pub max_response_length: Option<i32>,
    pub is_active: bool,
    pub is_default: bool,
}

/// A row of `alphadome.bot_training_data`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TrainingRow {
    pub id: Uuid,
    pub data_type: String,
    pub question: Option<String>,
    pub answer: Option<String>,
    pub category: Option<String>,
    pub priority: i32,
    pub confidence_score: f64,
    pub is_active: bool,
}

/// A tenant's whole configuration as one transaction saw it: the tenant
/// (without credentials), its settings (the defaults when it has no row),
/// its active templates (the default first) and its active training data
/// (by priority).
#[derive(Debug, Clone)]
pub struct TenantSnapshot {
    pub tenant: Tenant,
    pub settings: ControlSettings,
    pub templates: Vec<Template>,
    pub training: Vec<TrainingRow>,
}

/// One line of the tenant list (`alphadome tenant list`, the admin API).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// Announces that a tenant's configuration changed, so caches reload now
/// rather than at their next poll.
pub async fn announce_change(bus: &Bus, tenant: Uuid) {
    let subject = bus.tenant_changed_subject();
    if let Err(e) = bus.client.publish(subject, tenant.to_string().into()).await {
        tracing::debug!(error = %Report(&e), "tenant change announcement failed; caches catch up by polling");
    }
    let _ = bus.client.flush().await;
}
