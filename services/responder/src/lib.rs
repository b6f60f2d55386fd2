//! responder: turns each inbound message into at most one reply.
//!
//! It keeps every tenant's context (tenant row, control settings, templates,
//! FAQ index) in memory, refreshed when the tenant changes, and for each
//! message decides: log only (tenant inactive, bot disabled, auto-reply
//! off, reaction), answer from the tenant's FAQ or canned replies, or fall
//! back to the tenant's fallback reply. The reply is published with an id
//! derived from the inbound wamid, so the sender sends it at most once
//! however often the message is redelivered.

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
}

impl Decision {
    fn silent(reason: &'static str) -> Self {
        Self {
            reply: None,
            reason,
            training_data_id: None,
            template_used: None,
            score: None,
        }
    }
}

/// Polite answer to media and other messages the bot cannot read.
pub const MEDIA_REPLY: &str = "Thanks for sending that! I can only read text messages for now. Please type your question and I'll be happy to help.";

/// Decides how to answer `msg` for the tenant in `ctx`.
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
        _ => {
            return Decision {
                reply: Some(MEDIA_REPLY.to_owned()),
                reason: "media",
                training_data_id: None,
                template_used: None,
                score: None,
            }
        }
    }
    if let Some(m) = ctx.index.best(&msg.text) {
        return Decision {
            reply: Some(m.entry.answer.clone()),
            reason: "faq_match",
            training_data_id: Some(m.entry.id),
            template_used: None,
            score: Some(m.score),
        };
    }
    let fallback = ctx
        .settings
        .fallback_reply
        .clone()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| default_fallback.to_owned());
    Decision {
        reply: Some(fallback),
        reason: if ctx.settings.enable_ai_responses {
            "no_match_ai_unavailable"
        } else {
            "fallback"
        },
        training_data_id: None,
        template_used: None,
        score: None,
    }
}

/// The running responder's state.
pub struct Responder {
    bus: Bus,
    db: PgPool,
    contexts: Arc<TenantCache<TenantContext>>,
    default_fallback: String,
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
            bus,
            db,
            contexts,
            default_fallback: config.default_fallback_reply.clone(),
            handled: Default::default(),
        }))
    }

    /// Consumes the inbound stream until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        settings: ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let consumer = self
            .bus
            .consumer(StreamKind::Inbound, CONSUMER, settings)
            .await?;
        let me = self.clone();
        alphadome_core::bus::run_consumer(
            self.bus.clone(),
            StreamKind::Inbound,
            consumer,
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
        self.answer(msg).instrument(span).await
    }

    async fn answer(&self, msg: InboundMessage) -> Outcome {
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
        let decision = decide(&ctx, &msg, &self.default_fallback);
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

    async fn publish(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        d: &Decision,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let tenant_id = msg.tenant_id.clone();
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
                error_message: String::new(),
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
            let key = log.dedup_key.clone();
            self.bus
                .publish(
                    self.bus.subject(StreamKind::Log, &tenant_id),
                    &key,
                    log.encode_to_vec().into(),
                )
                .await?;
        }
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
                ai_processed: false,
                template_used: d.template_used.clone().unwrap_or_default(),
                training_data_id: d
                    .training_data_id
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                created_at_ms: now_ms(),
                inbound_received_at_ms: msg.received_at_ms,
                trace: Some(telemetry::current_trace()),
                metadata_json: serde_json::json!({"reason": d.reason, "match_score": d.score})
                    .to_string(),
            };
            let id = out.outbound_id.clone();
            self.bus
                .publish(
                    self.bus.subject(StreamKind::Outbound, &tenant_id),
                    &id,
                    out.encode_to_vec().into(),
                )
                .await?;
        }
        Ok(())
    }
}
