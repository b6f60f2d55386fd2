//! responder: turns each inbound message into at most one reply.
//!
//! It keeps every tenant's context (tenant row, control settings, templates,
//! FAQ index) in memory, refreshed when the tenant changes, and for each
//! message decides: log only (tenant inactive, bot disabled, auto-reply
//! off, reaction), answer from the tenant's FAQ or canned replies, or fall
//! back to the tenant's fallback reply. The reply is published with an id
//! derived from the inbound wamid, so the sender sends it at most once
//! however often the message is redelivered.

pub mod escalation;
pub mod limits;
pub mod llm;
pub mod prompt;

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::{Bus, ConsumerSettings, MessageMeta, Outcome, StreamKind};
use alphadome_core::config::Config;
use alphadome_core::events::v1::{
    Direction, InboundMessage, LogEvent, MessageKind, OutboundMessage,
};
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::telemetry;
use alphadome_core::tenant::{self, TenantCache, TenantContext};
use alphadome_core::CancellationToken;
use bytes::Bytes;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

/// How long a decrypted AI key is reused before it is decrypted again.
pub const AI_KEY_CACHE_AGE: Duration = Duration::from_secs(300);

/// The responder's durable consumer on the inbound stream.
pub const CONSUMER: &str = "responder";

/// Outbound id (and JetStream message id) of the reply to `wamid`.
pub fn outbound_id(wamid: &str) -> String {
    format!("reply:{wamid}")
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The reply text, if any.
    pub reply: Option<String>,
    /// Why there is no reply, or how it was chosen (for the log's metadata).
    pub reason: &'static str,
    pub training_data_id: Option<Uuid>,
    pub template_used: Option<String>,
    pub score: Option<f64>,
    /// Set when the reply came from the tenant's LLM.
    pub ai: Option<llm::ChatAnswer>,
    /// Why the AI could not answer, when it could not.
    pub error: Option<String>,
}

impl Decision {
    fn silent(reason: &'static str) -> Self {
        Self {
            reply: None,
            reason,
            training_data_id: None,
            template_used: None,
            score: None,
            ai: None,
            error: None,
        }
    }

    fn reply(text: String, reason: &'static str) -> Self {
        Self {
            reply: Some(text),
            ..Self::silent(reason)
        }
    }
}

/// Polite answer to media and other messages the bot cannot read.
pub const MEDIA_REPLY: &str = "Thanks for sending that! I can only read text messages for now. Please type your question and I'll be happy to help.";

/// Decides how to answer `msg` from the tenant's own FAQ (the AI, limits
/// and handoff come after, in [`Responder`]).
pub fn decide(ctx: &TenantContext, msg: &InboundMessage, default_fallback: &str) -> Decision {
    if !ctx.tenant.is_active {
        return Decision::silent("tenant_inactive");
    }
    if !ctx.settings.is_bot_enabled {
        return Decision::silent("bot_disabled");
    }
    if !ctx.settings.enable_auto_reply {
        return Decision::silent("auto_reply_disabled");
    }
    let kind = MessageKind::try_from(msg.kind).unwrap_or(MessageKind::Other);
    match kind {
        MessageKind::Reaction | MessageKind::System => {
            return Decision::silent("no_reply_for_kind")
        }
        MessageKind::Text
        | MessageKind::InteractiveButtonReply
        | MessageKind::InteractiveListReply
        | MessageKind::Button => {}
        _ if !msg.text.trim().is_empty() => {} // media with a caption: answer the caption
        _ => return Decision::reply(MEDIA_REPLY.to_owned(), "media"),
    }
    if let Some(m) = ctx.index.best(&msg.text) {
        return Decision {
            training_data_id: Some(m.entry.id),
            score: Some(m.score),
            ..Decision::reply(m.entry.answer.clone(), "faq_match")
        };
    }
    Decision::reply(fallback_text(ctx, default_fallback), "fallback")
}

fn fallback_text(ctx: &TenantContext, default_fallback: &str) -> String {
    ctx.settings
        .fallback_reply
        .clone()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| default_fallback.to_owned())
}

/// Metadata of the reply's log row: how it was chosen, and the AI's usage.
fn reply_metadata(ctx: &TenantContext, d: &Decision) -> String {
    let mut m = serde_json::json!({"reason": d.reason, "match_score": d.score});
    if let Some(ai) = &d.ai {
        m["usage"] = serde_json::json!({
            "prompt_tokens": ai.prompt_tokens,
            "completion_tokens": ai.completion_tokens,
            "model": ai.model,
            "provider": ctx.tenant.ai_provider,
            "finish_reason": ai.finish_reason,
        });
    }
    m.to_string()
}

/// LLM calls one tenant may have under way at once (per instance). Calls
/// beyond wait, asleep, without holding anything the other tenants need,
/// so a tenant with a slow model cannot hold the responder's workers.
/// Messages that may wait for one tenant's LLM calls in one responder
/// before more are put back on the stream.
pub const AI_WAITING_PER_TENANT: usize = 64;
/// Deliveries during which a message finding its tenant's LLM crowded is
/// put back (with 2, 4, 8, 16 s delays); after that it waits its turn.
const AI_REQUEUES: i64 = 4;

/// Why a message's decision has to wait.
enum Hold {
    Db(sqlx::Error),
    /// The tenant's LLM calls are crowded: put the message back for a while.
    AiBusy,
}

impl From<sqlx::Error> for Hold {
    fn from(e: sqlx::Error) -> Self {
        Hold::Db(e)
    }
}

pub fn ai_calls_per_tenant() -> usize {
    std::env::var("ALPHADOME_AI_CALLS_PER_TENANT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16usize)
        .max(1)
}

/// The running responder's state.
pub struct Responder {
    /// One gate per tenant for its LLM calls ([`ai_calls_per_tenant`]).
    ai_gates: alphadome_core::gate::KeyedGates<Uuid>,
    bus: Bus,
    db: PgPool,
    contexts: Arc<TenantCache<TenantContext>>,
    default_fallback: String,
    keyring: Arc<alphadome_core::crypto::Keyring>,
    llm: llm::LlmClient,
    escalator: escalation::Escalator,
    admission: limits::Admission,
    /// Decrypted AI keys, by tenant, with the ciphertext they came from and
    /// when: held at most [`AI_KEY_CACHE_AGE`].
    ai_keys: std::sync::Mutex<
        std::collections::HashMap<Uuid, (String, secrecy::SecretString, std::time::Instant)>,
    >,
    /// Messages this instance handled (for `/metrics` and tests).
    pub handled: std::sync::atomic::AtomicU64,
}

impl Responder {
    /// Loads every tenant's context and keeps it current until `shutdown`.
    pub async fn start(
        config: &Config,
        db: PgPool,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let contexts = TenantCache::new(|_: &TenantContext| None, None);
        let load = |db: PgPool, id: Uuid| async move { tenant::load_context(&db, id).await };
        contexts.refresh(&db, &load).await?;
        contexts.spawn_refresher(
            db.clone(),
            bus.clone(),
            config.tenant_refresh,
            shutdown,
            load,
        );
        Ok(Arc::new(Self {
            bus: bus.clone(),
            db: db.clone(),
            contexts,
            default_fallback: config.default_fallback_reply.clone(),
            keyring: config.keyring.clone(),
            llm: llm::LlmClient::new(config.ai.clone())
                .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?,
            escalator: escalation::Escalator::new(
                db.clone(),
                bus.clone(),
                config.smtp_url.as_ref(),
                &config.smtp_from,
            ),
            admission: limits::Admission::new(db.clone()),
            ai_keys: Default::default(),
            ai_gates: alphadome_core::gate::KeyedGates::new(ai_calls_per_tenant()),
            handled: Default::default(),
        }))
    }

    /// Consumes the inbound stream until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        settings: ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let me = self.clone();
        alphadome_core::bus::run_consumer(
            self.bus.clone(),
            StreamKind::Inbound,
            CONSUMER,
            settings,
            shutdown,
            move |payload, meta| {
                let me = me.clone();
                async move { me.handle(payload, meta).await }
            },
        )
        .await
    }

    async fn context(&self, id: Uuid) -> Result<Option<Arc<TenantContext>>, sqlx::Error> {
        if let Some(c) = self.contexts.get(id) {
            return Ok(Some(c));
        }
        Ok(tenant::load_context(&self.db, id).await?.map(Arc::new))
    }

    async fn handle(&self, payload: Bytes, meta: MessageMeta) -> Outcome {
        let msg = match InboundMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Poison {
                    reason: format!("undecodable InboundMessage: {e}"),
                }
            }
        };
        let span = tracing::info_span!("responder.message", tenant_id = %msg.tenant_id, wamid = %msg.wamid);
        telemetry::set_parent_from_headers(&span, meta.headers.as_ref());
        self.answer(msg, meta.delivered).instrument(span).await
    }

    async fn answer(&self, msg: InboundMessage, delivered: i64) -> Outcome {
        let Ok(tenant_id) = Uuid::parse_str(&msg.tenant_id) else {
            return Outcome::Poison {
                reason: format!("tenant id {:?} is not a uuid", msg.tenant_id),
            };
        };
        let ctx = match self.context(tenant_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Outcome::Poison {
                    reason: format!("tenant {tenant_id} does not exist"),
                }
            }
            Err(e) => {
                return Outcome::Retry {
                    delay: Duration::from_secs(2),
                    reason: format!("loading tenant context: {e}"),
                }
            }
        };
        let decision = match self.converse(&ctx, &msg, delivered).await {
            Ok(d) => d,
            Err(Hold::Db(e)) => {
                return Outcome::Retry {
                    delay: Duration::from_secs(2),
                    reason: format!("database: {e}"),
                }
            }
            Err(Hold::AiBusy) => {
                let n = (delivered - 1).clamp(0, AI_REQUEUES) as u32;
                return Outcome::Retry {
                    delay: Duration::from_secs(2u64 << n),
                    reason: llm::LlmError::Busy.to_string(),
                };
            }
        };
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            reason = decision.reason,
            reply = decision.reply.is_some(),
            "decided"
        );
        if let Err(e) = self.publish(&ctx, &msg, &decision).await {
            return Outcome::Retry {
                delay: Duration::from_secs(1),
                reason: e.to_string(),
            };
        }
        Outcome::Ack
    }

    /// The whole decision for one message: FAQ, then handoff and limits
    /// (one call), then escalation and AI.
    async fn converse(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        delivered: i64,
    ) -> Result<Decision, Hold> {
        let mut d = decide(ctx, msg, &self.default_fallback);
        if d.reply.is_none() {
            return Ok(d);
        }
        let tenant = ctx.tenant.id;
        let user = if msg.from.is_empty() {
            msg.from_user_id.as_str()
        } else {
            msg.from.as_str()
        };
        let has_contacts =
            ctx.settings.escalation_phone.is_some() || ctx.settings.escalation_email.is_some();
        // One call for the handoff check and the limit count; a handoff
        // started by another message silences this one, uncounted.
        let admitted = self
            .admission
            .admit(tenant, &ctx.settings, user, &msg.wamid)
            .await?;
        let Some(limit) = admitted.limit else {
            return Ok(Decision::silent("handoff_active"));
        };
        if has_contacts && escalation::wants_human(&msg.text) {
            self.escalator
                .escalate(ctx, msg, "the customer asked for a person")
                .await?;
            d = Decision::reply(escalation::HANDOFF_REPLY.to_owned(), "handoff");
        } else if d.reason == "fallback" && limit == limits::LimitDecision::Allow {
            // (Past a limit the customer gets the notice or silence: no AI
            // call is spent on a reply that will not be sent.)
            if ctx.settings.enable_ai_responses {
                match self.ai_answer(ctx, msg, delivered <= AI_REQUEUES).await {
                    Ok(ai) => d = ai,
                    Err(llm::LlmError::Busy) => return Err(Hold::AiBusy),
                    Err(e) => {
                        tracing::warn!(error = %e, "AI answer failed; sending the fallback reply");
                        d.reason = "ai_failed_fallback";
                        d.error = Some(e.to_string());
                        let provider = ctx.tenant.ai_provider.as_deref().unwrap_or_default();
                        if has_contacts && self.llm.circuit_open(tenant, provider) {
                            self.escalator
                                .escalate(ctx, msg, "the AI keeps failing")
                                .await?;
                        }
                    }
                }
            }
            if d.ai.is_none()
                && has_contacts
                && self
                    .previous_reply_was_fallback(tenant, user, &msg.wamid)
                    .await?
            {
                self.escalator
                    .escalate(ctx, msg, "the bot could not answer twice in a row")
                    .await?;
            }
        }
        match limit {
            limits::LimitDecision::Allow => {}
            limits::LimitDecision::Notice => {
                let contact = ctx
                    .settings
                    .escalation_phone
                    .as_deref()
                    .or(Some(ctx.tenant.client_phone.as_str()));
                d = Decision {
                    error: d.error,
                    ..Decision::reply(limits::notice_text(contact), "limit_notice")
                };
            }
            limits::LimitDecision::Silent => {
                d = Decision {
                    error: d.error,
                    ..Decision::silent("limit_reached")
                }
            }
        }
        Ok(d)
    }

    async fn previous_reply_was_fallback(
        &self,
        tenant: Uuid,
        user: &str,
        wamid: &str,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = alphadome_core::db::scoped(&self.db, tenant).await?;
        let reason: Option<Option<String>> = sqlx::query_scalar(
            "SELECT metadata->>'reason' FROM alphadome.bot_message_logs \
             WHERE bot_tenant_id = $1 AND user_phone = $2 AND direction = 'outgoing' \
               AND created_at > now() - interval '1 hour' AND metadata->>'in_reply_to' IS DISTINCT FROM $3 \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(user)
        .bind(wamid)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(matches!(
            reason.flatten().as_deref(),
            Some("fallback" | "ai_failed_fallback")
        ))
    }

    /// Asks the tenant's LLM, with its template, knowledge and history.
    async fn ai_answer(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        may_requeue: bool,
    ) -> Result<Decision, llm::LlmError> {
        let t = &ctx.tenant;
        let endpoint = llm::endpoint(
            self.llm.settings(),
            t.ai_provider.as_deref(),
            t.ai_base_url.as_deref(),
        )?;
        let stored = tenant::load_credential(
            &self.db,
            t.id,
            alphadome_core::crypto::SecretColumn::AiApiKey,
        )
        .await
        .map_err(|e| llm::LlmError::Unavailable(format!("reading the tenant's ai_api_key: {e}")))?
        .ok_or_else(|| llm::LlmError::NotConfigured("the tenant has no ai_api_key".into()))?;
        let key = self.ai_key(t.id, &stored).await?;
        let model = t
            .ai_model
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| llm::LlmError::NotConfigured("the tenant has no ai_model".into()))?;
        let retrieved: Vec<_> = ctx
            .index
            .ranked_above(&msg.text, 0.2)
            .into_iter()
            .take(3)
            .collect();
        let template = prompt::choose_template(
            ctx,
            retrieved.first().and_then(|m| m.entry.category.as_deref()),
        );
        let examples: Vec<_> = ctx.examples.iter().collect();
        let user = if msg.from.is_empty() {
            msg.from_user_id.as_str()
        } else {
            msg.from.as_str()
        };
        let history = self
            .history(t.id, user, &msg.wamid)
            .await
            .unwrap_or_default();
        let messages = prompt::build(ctx, template, &retrieved, &examples, &history, &msg.text);
        let max_chars = prompt::max_chars(template);
        // A tenant whose LLM is slower than its traffic would otherwise
        // fill this responder's in-hand window with messages waiting here,
        // and every other tenant would wait behind them. Past
        // AI_WAITING_PER_TENANT waiting, a message goes back to the stream
        // for a while (a few times; then it waits its turn like the rest).
        let _turn = if may_requeue {
            self.ai_gates
                .enter_unless_crowded(&t.id, AI_WAITING_PER_TENANT)
                .await
                .ok_or(llm::LlmError::Busy)?
        } else {
            self.ai_gates
                .enter(&t.id)
                .await
                .ok_or(llm::LlmError::Busy)?
        };
        let answer = self
            .llm
            .chat(
                t.id,
                &endpoint,
                &key,
                model,
                &messages,
                prompt::max_tokens(max_chars),
            )
            .await?;
        Ok(Decision {
            training_data_id: retrieved.first().map(|m| m.entry.id),
            template_used: template.map(|t| t.template_name.clone()),
            score: retrieved.first().map(|m| m.score),
            ai: Some(answer.clone()),
            ..Decision::reply(prompt::fit(&answer.text, max_chars), "ai")
        })
    }

    /// The tenant's decrypted AI key, from the short-lived cache or freshly
    /// decrypted (and audited).
    async fn ai_key(
        &self,
        tenant: Uuid,
        stored: &str,
    ) -> Result<secrecy::SecretString, llm::LlmError> {
        if let Ok(cache) = self.ai_keys.lock() {
            if let Some((ct, key, at)) = cache.get(&tenant) {
                if ct == stored && at.elapsed() < AI_KEY_CACHE_AGE {
                    return Ok(key.clone());
                }
            }
        }
        let key = self
            .keyring
            .decrypt(
                tenant,
                alphadome_core::crypto::SecretColumn::AiApiKey,
                stored,
            )
            .map_err(|e| llm::LlmError::NotConfigured(format!("the tenant's ai_api_key: {e}")))?;
        alphadome_core::audit::record_use(
            &self.db,
            tenant,
            alphadome_core::crypto::SecretColumn::AiApiKey,
            "service:responder",
            "AI answers (cache fill)",
        )
        .await;
        if let Ok(mut cache) = self.ai_keys.lock() {
            cache.insert(
                tenant,
                (stored.to_owned(), key.clone(), std::time::Instant::now()),
            );
        }
        Ok(key)
    }

    /// The recent turns of this customer's conversation with this tenant.
    async fn history(
        &self,
        tenant: Uuid,
        user: &str,
        wamid: &str,
    ) -> Result<Vec<prompt::Turn>, sqlx::Error> {
        let mut tx = alphadome_core::db::scoped(&self.db, tenant).await?;
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT direction, message_text FROM alphadome.bot_message_logs \
             WHERE bot_tenant_id = $1 AND user_phone = $2 AND created_at > now() - interval '24 hours' \
               AND whatsapp_message_id IS DISTINCT FROM $3 \
             ORDER BY created_at DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(user)
        .bind(wamid)
        .bind(prompt::HISTORY_TURNS as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .rev()
            .filter_map(|(dir, text)| {
                text.map(|t| prompt::Turn {
                    from_customer: dir == "incoming",
                    text: t,
                })
            })
            .collect())
    }

    async fn publish(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        d: &Decision,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let tenant_id = msg.tenant_id.clone();
        // The log row and the reply are published at once: the reply does
        // not wait for the log's acknowledgement.
        let mut log_publish = None;
        if ctx.settings.log_conversations {
            let mut metadata = serde_json::json!({
                "reason": d.reason,
                "type": msg.type_name,
                "profile_name": msg.profile_name,
                "phone_number_id": msg.phone_number_id,
                "sent_at": msg.sent_at,
            });
            if !msg.from_user_id.is_empty() {
                metadata["from_user_id"] = serde_json::Value::String(msg.from_user_id.clone());
            }
            if !msg.reply_id.is_empty() {
                metadata["reply_id"] = serde_json::Value::String(msg.reply_id.clone());
            }
            if let Some(score) = d.score {
                metadata["match_score"] = serde_json::json!(score);
            }
            let log = LogEvent {
                tenant_id: tenant_id.clone(),
                direction: Direction::Incoming as i32,
                dedup_key: format!("in:{}", msg.wamid),
                wamid: msg.wamid.clone(),
                user_phone: msg.from.clone(),
                message_text: msg.text.clone(),
                ai_processed: false,
                ai_response: String::new(),
                error_message: d
                    .error
                    .clone()
                    .filter(|_| ctx.settings.log_errors)
                    .unwrap_or_default(),
                template_used: String::new(),
                training_data_id: d
                    .training_data_id
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                metadata_json: metadata.to_string(),
                occurred_at_ms: if msg.sent_at > 0 {
                    msg.sent_at * 1000
                } else {
                    msg.received_at_ms
                },
                raw_json: msg.raw_json.clone(),
                trace: Some(telemetry::current_trace()),
            };
            log_publish = Some((log.dedup_key.clone(), log.encode_to_vec()));
        }
        let mut out_publish = None;
        if let Some(text) = &d.reply {
            let out = OutboundMessage {
                outbound_id: outbound_id(&msg.wamid),
                tenant_id: tenant_id.clone(),
                in_reply_to: msg.wamid.clone(),
                to: msg.from.clone(),
                to_user_id: if msg.from.is_empty() {
                    msg.from_user_id.clone()
                } else {
                    String::new()
                },
                text: text.clone(),
                ai_processed: d.ai.is_some(),
                template_used: d.template_used.clone().unwrap_or_default(),
                training_data_id: d
                    .training_data_id
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                created_at_ms: now_ms(),
                inbound_received_at_ms: msg.received_at_ms,
                trace: Some(telemetry::current_trace()),
                metadata_json: reply_metadata(ctx, d),
            };
            out_publish = Some((out.outbound_id.clone(), out.encode_to_vec()));
        }
        let publish = |kind: StreamKind, item: Option<(String, Vec<u8>)>| {
            let subject = self.bus.subject(kind, &tenant_id);
            async move {
                match item {
                    Some((id, body)) => self
                        .bus
                        .publish(subject, &id, body.into())
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                }
            }
        };
        tokio::try_join!(
            publish(StreamKind::Log, log_publish),
            publish(StreamKind::Outbound, out_publish)
        )
        .map(|_| ())
    }
}
