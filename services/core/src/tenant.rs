//! Tenant rows and the per-tenant context services keep in memory, with a
//! cache that follows changes: it polls `bot_tenants.updated_at` (which
//! triggers bump on any change to a tenant's templates, training data or
//! settings) and reloads at once when a change is announced on NATS.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::matcher::{FaqEntry, FaqIndex};

/// A row of `alphadome.bot_tenants`. Secret columns hold ciphertext.
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Columns of [`Tenant`], for `SELECT`s.
pub const TENANT_COLUMNS: &str = "id, client_name, client_phone, client_email, brand_id, \
    point_of_contact_name, point_of_contact_phone, whatsapp_phone_number_id, \
    whatsapp_business_account_id, whatsapp_access_token, whatsapp_token_expires_at, \
    whatsapp_app_secret, whatsapp_token_invalid_at, ai_provider, ai_api_key, ai_model, \
    ai_base_url, is_active, is_verified, webhook_verify_token, webhook_url, metadata, \
    created_at, updated_at";

/// Columns of [`Tenant`] without the credentials (read as NULL): what every
/// service may read. A service fetches the one credential it uses with
/// [`load_credential`].
pub const TENANT_CONFIG_COLUMNS: &str = "id, client_name, client_phone, client_email, brand_id, \
    point_of_contact_name, point_of_contact_phone, whatsapp_phone_number_id, \
    whatsapp_business_account_id, NULL::text AS whatsapp_access_token, whatsapp_token_expires_at, \
    NULL::text AS whatsapp_app_secret, whatsapp_token_invalid_at, ai_provider, NULL::text AS ai_api_key, ai_model, \
    ai_base_url, is_active, is_verified, NULL::text AS webhook_verify_token, webhook_url, metadata, \
    created_at, updated_at";

/// A tenant's configuration without its credentials.
pub async fn load_tenant_config(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    let mut tx = crate::db::scoped(pool, id).await?;
    let t = sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_CONFIG_COLUMNS} FROM alphadome.bot_tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(t)
}

/// One stored (encrypted) credential of a tenant.
pub async fn load_credential(
    pool: &PgPool,
    id: Uuid,
    column: crate::crypto::SecretColumn,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = crate::db::scoped(pool, id).await?;
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

/// Everything the responder needs to answer for one tenant.
#[derive(Debug)]
pub struct TenantContext {
    pub tenant: Tenant,
    pub settings: ControlSettings,
    pub templates: Vec<Template>,
    /// The first [`PROMPT_EXAMPLES`] active `example` rows, by priority
    /// (FAQ and canned replies live in `index` only: at 1,000 tenants a
    /// second copy of every row was a quarter of the process's memory).
    pub examples: Vec<TrainingRow>,
    pub index: FaqIndex,
}

/// Example conversations given to the LLM with each prompt.
pub const PROMPT_EXAMPLES: usize = 3;

impl TenantContext {
    /// The active default template, if any.
    pub fn default_template(&self) -> Option<&Template> {
        self.templates.iter().find(|t| t.is_active && t.is_default)
    }
}

/// Loads a tenant by id.
pub async fn load_tenant(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    let mut tx = crate::db::scoped(pool, id).await?;
    let t = sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_COLUMNS} FROM alphadome.bot_tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(t)
}

/// Finds a tenant by id or (normalised) client phone.
pub async fn find_tenant(pool: &PgPool, id_or_phone: &str) -> Result<Option<Tenant>, sqlx::Error> {
    if let Ok(id) = Uuid::parse_str(id_or_phone.trim()) {
        return load_tenant(pool, id).await;
    }
    let phone = crate::phone::normalize(id_or_phone, &crate::phone::default_country_code())
        .unwrap_or_else(|_| id_or_phone.trim().to_owned());
    sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_COLUMNS} FROM alphadome.bot_tenants WHERE client_phone = $1"
    ))
    .bind(phone)
    .fetch_optional(pool)
    .await
}

/// Loads a tenant's whole context (tenant, settings, active templates and
/// training data, FAQ index).
pub async fn load_context(pool: &PgPool, id: Uuid) -> Result<Option<TenantContext>, sqlx::Error> {
    let mut tx = crate::db::scoped(pool, id).await?;
    let Some(tenant) = sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_CONFIG_COLUMNS} FROM alphadome.bot_tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let settings = sqlx::query_as::<_, ControlSettings>(
        "SELECT is_bot_enabled, max_messages_per_hour, max_messages_per_user_per_day, \
         enable_ai_responses, enable_payment_flow, enable_training_mode, enable_auto_reply, \
         log_conversations, log_errors, escalation_phone, escalation_email, fallback_reply, \
         handoff_pause_minutes FROM alphadome.bot_control_settings WHERE bot_tenant_id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or_default();
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
    let mut examples = Vec::new();
    let mut answerable = Vec::new();
    for r in training {
        let faq_like = r.data_type == "faq" || r.data_type == "canned_reply";
        if r.data_type == "example" && examples.len() < PROMPT_EXAMPLES {
            examples.push(r);
        } else if faq_like {
            if let (Some(question), Some(answer)) = (r.question, r.answer) {
                if !answer.trim().is_empty() {
                    answerable.push(FaqEntry {
                        id: r.id,
                        question,
                        answer,
                        category: r.category,
                        priority: r.priority,
                        confidence: r.confidence_score,
                    });
                }
            }
        }
    }
    let index = FaqIndex::build(answerable);
    Ok(Some(TenantContext {
        tenant,
        settings,
        templates,
        examples,
        index,
    }))
}

type Loaded<T> = (Arc<T>, DateTime<Utc>, Instant);

/// A map of per-tenant values that follows the database. Values are built
/// by a loader; a secondary key (for example the phone number id) can be
/// derived from each value.
pub struct TenantCache<T> {
    by_id: RwLock<HashMap<Uuid, Loaded<T>>>,
    by_key: RwLock<HashMap<String, Uuid>>,
    key_of: fn(&T) -> Option<String>,
    max_age: Option<Duration>,
}

impl<T: Send + Sync + 'static> TenantCache<T> {
    /// An empty cache. `key_of` derives the secondary key; entries older
    /// than `max_age` are reloaded even when unchanged.
    pub fn new(key_of: fn(&T) -> Option<String>, max_age: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            by_id: RwLock::new(HashMap::new()),
            by_key: RwLock::new(HashMap::new()),
            key_of,
            max_age,
        })
    }

    /// The value for tenant `id`.
    pub fn get(&self, id: Uuid) -> Option<Arc<T>> {
        self.by_id.read().ok()?.get(&id).map(|(v, _, _)| v.clone())
    }

    /// The value whose secondary key is `key`.
    pub fn get_by_key(&self, key: &str) -> Option<Arc<T>> {
        let id = *self.by_key.read().ok()?.get(key)?;
        self.get(id)
    }

    /// Number of tenants held.
    pub fn len(&self) -> usize {
        self.by_id.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no tenant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put(&self, id: Uuid, value: Option<T>, version: DateTime<Utc>) {
        let (Ok(mut by_id), Ok(mut by_key)) = (self.by_id.write(), self.by_key.write()) else {
            return;
        };
        if let Some((old, _, _)) = by_id.remove(&id) {
            if let Some(k) = (self.key_of)(&old) {
                if by_key.get(&k) == Some(&id) {
                    by_key.remove(&k);
                }
            }
        }
        if let Some(v) = value {
            if let Some(k) = (self.key_of)(&v) {
                by_key.insert(k, id);
            }
            by_id.insert(id, (Arc::new(v), version, Instant::now()));
        }
    }

    /// Brings the cache in line with the database: loads new and changed
    /// tenants, drops deleted ones. Returns how many were (re)loaded.
    pub async fn refresh<L, Fut>(&self, pool: &PgPool, load: &L) -> Result<usize, sqlx::Error>
    where
        L: Fn(PgPool, Uuid) -> Fut,
        Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
    {
        let versions: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as("SELECT id, updated_at FROM alphadome.tenant_versions()")
                .fetch_all(pool)
                .await?;
        let stale: Vec<(Uuid, DateTime<Utc>)> = {
            let held = self.by_id.read().map_err(|_| sqlx::Error::PoolClosed)?;
            versions
                .iter()
                .filter(|(id, v)| match held.get(id) {
                    None => true,
                    Some((_, seen, at)) => {
                        seen != v || self.max_age.is_some_and(|m| at.elapsed() > m)
                    }
                })
                .copied()
                .collect()
        };
        let gone: Vec<Uuid> = {
            let held = self.by_id.read().map_err(|_| sqlx::Error::PoolClosed)?;
            held.keys()
                .filter(|id| !versions.iter().any(|(v, _)| v == *id))
                .copied()
                .collect()
        };
        for id in gone {
            self.put(id, None, DateTime::<Utc>::MIN_UTC);
        }
        let n = stale.len();
        for (id, version) in stale {
            let value = load(pool.clone(), id).await?;
            self.put(id, value, version);
        }
        Ok(n)
    }

    /// Keeps the cache current until `shutdown`: refreshes every `every`
    /// and at once when a tenant change is announced on NATS.
    pub fn spawn_refresher<L, Fut>(
        self: &Arc<Self>,
        pool: PgPool,
        bus: Bus,
        every: Duration,
        shutdown: CancellationToken,
        load: L,
    ) -> tokio::task::JoinHandle<()>
    where
        L: Fn(PgPool, Uuid) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, sqlx::Error>> + Send,
    {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut changes = bus
                .client
                .subscribe(bus.tenant_changed_subject())
                .await
                .ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    Some(_) = async {
                        match changes.as_mut() {
                            Some(s) => s.next().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                if let Err(e) = cache.refresh(&pool, &load).await {
                    tracing::warn!(error = %e, "tenant cache refresh failed; keeping the last known state");
                }
            }
        })
    }
}

/// Announces that a tenant's configuration changed, so caches reload now
/// rather than at their next poll.
pub async fn announce_change(bus: &Bus, tenant: Uuid) {
    let subject = bus.tenant_changed_subject();
    if let Err(e) = bus.client.publish(subject, tenant.to_string().into()).await {
        tracing::debug!(error = %e, "tenant change announcement failed; caches catch up by polling");
    }
    let _ = bus.client.flush().await;
}
