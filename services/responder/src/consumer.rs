//! The responder's transport: each message of the inbound stream goes
//! through the steps of [`Responder::converse`] (FAQ, admission, handoff,
//! AI, limits) and ends as one [`Outcome`]; the log row and the reply are
//! published together.

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::{MessageMeta, Outcome, StreamKind};
use alphadome_core::crypto::SecretColumn;
use alphadome_core::events::v1::InboundMessage;
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::{audit, conversation, telemetry, tenant, Report};
use bytes::Bytes;
use tracing::Instrument;
use uuid::Uuid;

use crate::context::{self, TenantContext};
use crate::decide::{self, customer, Decision};
use crate::limits::LimitDecision;
use crate::{escalation, llm, prompt, store, teach, Responder, AI_KEY_CACHE_AGE};

/// Messages that may wait for one tenant's LLM calls in one responder
/// before more are put back on the stream.
pub const AI_WAITING_PER_TENANT: usize = 64;
/// How long past a message's debounce time the responder looks at the
/// customer's burst.
const DEBOUNCE_SLACK_MS: i64 = 150;
/// Deliveries a message may spend waiting out its debounce time (a
/// redelivery after a crash does not wait again for long).
const DEBOUNCE_DELIVERIES: i64 = 3;

/// Deliveries during which a message finding its tenant's LLM crowded is
/// put back (with 2, 4, 8, 16 s delays); after that it waits its turn.
const AI_REQUEUES: i64 = 4;

/// Why a message's decision has to wait.
enum Hold {
    Db(sqlx::Error),
    /// The tenant's LLM calls are crowded: put the message back for a while.
    AiBusy,
    /// The customer may still be writing: come back when the debounce time
    /// is over.
    Debounce(Duration),
}

impl From<sqlx::Error> for Hold {
    fn from(e: sqlx::Error) -> Self {
        Hold::Db(e)
    }
}

/// Why the AI gave no answer.
enum AiFailure {
    /// Its calls are crowded: the message waits.
    Busy,
    /// It failed; the fallback goes out, with this error in the log.
    Failed(String),
}

impl From<llm::LlmError> for AiFailure {
    fn from(e: llm::LlmError) -> Self {
        match e {
            llm::LlmError::Busy => AiFailure::Busy,
            other => AiFailure::Failed(other.to_string()),
        }
    }
}

fn retry(delay_secs: u64, reason: String) -> Outcome {
    Outcome::Retry {
        delay: Duration::from_secs(delay_secs),
        reason,
    }
}

impl Responder {
    async fn context(&self, id: Uuid) -> Result<Option<Arc<TenantContext>>, sqlx::Error> {
        if let Some(c) = self.contexts.get(id) {
            return Ok(Some(c));
        }
        Ok(context::load(&self.db, self.backfill.as_ref(), id)
            .await?
            .map(Arc::new))
    }

    pub(crate) async fn handle(&self, payload: Bytes, meta: MessageMeta) -> Outcome {
        let msg = match InboundMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Poison {
                    reason: format!("undecodable InboundMessage: {}", Report(&e)),
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
            Err(e) => return retry(2, format!("loading tenant context: {}", Report(&e))),
        };
        let decision = match self.converse(&ctx, &msg, delivered).await {
            Ok(d) => d,
            Err(Hold::Db(e)) => return retry(2, format!("database: {}", Report(&e))),
            Err(Hold::AiBusy) => {
                let n = (delivered - 1).clamp(0, AI_REQUEUES) as u32;
                return retry(2u64 << n, llm::LlmError::Busy.to_string());
            }
            Err(Hold::Debounce(delay)) => return Outcome::Later { delay },
        };
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            reason = decision.reason,
            reply = decision.reply.is_some(),
            "decided"
        );
        if let Err(e) = self.publish(&ctx, &msg, &decision).await {
            return retry(1, Report(&e).to_string());
        }
        Outcome::Ack
    }

    /// The whole decision for one message: the session (and STOP or
    /// START), the FAQ, opening hours, then handoff and limits (one call),
    /// then escalation and AI, then the limit's verdict, the out-of-hours
    /// note and the greeting of a new conversation.
    async fn converse(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        delivered: i64,
    ) -> Result<Decision, Hold> {
        let tenant = ctx.tenant.id;
        let user = customer(msg);
        let at = decide::written_at(msg);
        let debounce = decide::debounce_ms(ctx, msg);
        // Every message counts for the window, answered or not.
        let session = self
            .sessions
            .touch(tenant, user, &msg.wamid, at, &msg.text, debounce)
            .await?;
        if let Some(opt) = decide::opt_word(ctx, msg) {
            let changed = conversation::set_opt(&self.db, tenant, user, opt, at).await?;
            tracing::info!(
                ?opt,
                changed,
                "customer's subscription to proactive messages"
            );
            return Ok(self.with_receipt(ctx, decide::opt_decision(ctx, opt), false));
        }
        let merged;
        let msg = match self.debounced(ctx, msg, debounce, delivered).await? {
            conversation::Debounced::Absorbed { by } => {
                tracing::info!(answered_by = %by, "answered with the customer's next message");
                return Ok(Decision::silent("debounced"));
            }
            conversation::Debounced::Answer { texts } if texts.len() > 1 => {
                merged = InboundMessage {
                    text: texts.join("\n"),
                    ..msg.clone()
                };
                &merged
            }
            conversation::Debounced::Answer { .. } => msg,
        };
        let query = self.meaning(ctx, msg).await;
        let mut d = decide::decide(ctx, msg, &self.default_fallback, query.as_deref());
        if d.reply.is_none() {
            return Ok(d);
        }
        // The point of contact teaching the bot is not a customer.
        if teach::from_contact(ctx, msg) {
            if let Some(t) = teach::handle_contact(&self.db, &self.bus, ctx, msg).await? {
                return Ok(self.with_receipt(ctx, t, false));
            }
        }
        if session.state != conversation::IDLE && decide::leaves_flow(&msg.text) {
            conversation::clear_state(&self.db, tenant, user).await?;
            if d.reason != "menu" {
                d = Decision::reply(decide::FLOW_CANCELLED_REPLY.to_owned(), "flow_cancelled");
            }
        }
        if d.is_fallback() && ctx.settings.enable_training_mode && decide::answers_text(msg) {
            teach::record(&self.db, &self.bus, ctx, msg, query.as_deref()).await?;
        }
        let open = ctx.is_open(chrono::Utc::now());
        if !open {
            d = decide::out_of_hours(ctx, d);
        }
        // One call for the handoff check and the limit count; a handoff
        // started by another message silences this one, uncounted.
        let admitted = self
            .admission
            .admit(tenant, &ctx.settings, user, &msg.wamid)
            .await?;
        let Some(limit) = admitted.limit else {
            return Ok(Decision::silent("handoff_active"));
        };
        let has_contacts = ctx.has_escalation_contacts();
        let mut typing = false;
        let asks_person = msg.reply_id == decide::PERSON_ID || escalation::wants_human(&msg.text);
        if has_contacts && asks_person {
            self.escalator
                .escalate(ctx, msg, "the customer asked for a person")
                .await?;
            d = Decision::reply(escalation::HANDOFF_REPLY.to_owned(), "handoff");
        } else if d.is_fallback() && limit == LimitDecision::Allow {
            // (Past a limit the customer gets the notice or silence: no AI
            // call is spent on a reply that will not be sent.)
            if ctx.settings.enable_ai_responses {
                // The customer sees their message read and the bot typing
                // while the AI writes.
                typing = ctx.settings.send_read_receipts && self.receipt(ctx, msg, true).await;
                d = self
                    .ai_or_fallback(ctx, msg, d, delivered, query.as_deref())
                    .await?;
            }
            if d.ai.is_none() && has_contacts && self.previous_reply_was_fallback(ctx, msg).await? {
                self.escalator
                    .escalate(ctx, msg, "the bot could not answer twice in a row")
                    .await?;
            }
        }
        let mut d = decide::apply_limit(ctx, d, limit);
        if !open {
            d = decide::note_out_of_hours(ctx, d);
        }
        if session.is_new_conversation(at) {
            d = decide::greet(ctx, d);
        }
        Ok(self.with_receipt(ctx, d, typing))
    }

    /// Whether `msg` answers for itself and the messages just before it,
    /// or a message right after it answers for it. Until the customer has
    /// been quiet for `debounce` ms after it, the message comes back later
    /// (without holding a worker).
    async fn debounced(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        debounce: i32,
        delivered: i64,
    ) -> Result<conversation::Debounced, Hold> {
        let alone = || conversation::Debounced::Answer {
            texts: vec![msg.text.clone()],
        };
        if debounce <= 0 {
            return Ok(alone());
        }
        // (A little past the debounce time, so a message sent right at its
        // end is recorded before this one looks.)
        let due = msg.received_at_ms + i64::from(debounce) + DEBOUNCE_SLACK_MS;
        let wait = due - now_ms();
        if wait > 0 && delivered <= DEBOUNCE_DELIVERIES {
            return Err(Hold::Debounce(Duration::from_millis(wait as u64)));
        }
        let burst = conversation::burst(&self.db, ctx.tenant.id, customer(msg)).await?;
        Ok(conversation::debounced(&burst, &msg.wamid, &msg.text))
    }

    /// `d`, marking the customer's message read as its reply goes when the
    /// tenant sends read receipts and none went yet (`receipt_sent`).
    fn with_receipt(&self, ctx: &TenantContext, mut d: Decision, receipt_sent: bool) -> Decision {
        d.mark_read = ctx.settings.send_read_receipts && !receipt_sent && d.reply.is_some();
        d
    }

    /// Queues a read receipt of `msg` (with the typing indicator when
    /// `typing`) for the sender; whether it was queued.
    async fn receipt(&self, ctx: &TenantContext, msg: &InboundMessage, typing: bool) -> bool {
        let r = decide::receipt_event(ctx, msg, typing, now_ms());
        let subject = self.bus.subject(StreamKind::Outbound, &msg.tenant_id);
        match self
            .bus
            .publish(subject, &r.outbound_id, r.encode_to_vec().into())
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %Report(&e), "read receipt not queued; the reply marks the message read");
                false
            }
        }
    }

    /// The AI's answer, or the fallback `d` with the AI's error (handing
    /// the conversation to a person when the AI keeps failing).
    async fn ai_or_fallback(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        mut d: Decision,
        delivered: i64,
        query: Option<&[f32]>,
    ) -> Result<Decision, Hold> {
        match self
            .ai_answer(ctx, msg, delivered <= AI_REQUEUES, query)
            .await
        {
            Ok(ai) => Ok(ai),
            Err(AiFailure::Busy) => Err(Hold::AiBusy),
            Err(AiFailure::Failed(e)) => {
                tracing::warn!(error = %e, "AI answer failed; sending the fallback reply");
                d.reason = "ai_failed_fallback";
                d.error = Some(e);
                let provider = ctx.tenant.ai_provider.as_deref().unwrap_or_default();
                if ctx.has_escalation_contacts() && self.llm.circuit_open(ctx.tenant.id, provider) {
                    self.escalator
                        .escalate(ctx, msg, "the AI keeps failing")
                        .await?;
                }
                Ok(d)
            }
        }
    }

    /// The message's vector, when the tenant's entries have vectors, the
    /// message is text and the lexical matcher is not sure (`None` when
    /// the model is busy or failed: the message is then matched by words).
    async fn meaning(&self, ctx: &TenantContext, msg: &InboundMessage) -> Option<Arc<[f32]>> {
        let model = self.model.as_ref()?;
        if !decide::answers_text(msg) || !ctx.wants_meaning(&msg.text) {
            return None;
        }
        self.semantic_asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match model.query(&msg.text).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "matching by words only for this message");
                None
            }
        }
    }

    async fn previous_reply_was_fallback(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
    ) -> Result<bool, sqlx::Error> {
        let reason =
            store::last_reply_reason(&self.db, ctx.tenant.id, customer(msg), &msg.wamid).await?;
        Ok(decide::is_fallback_reason(reason.as_deref()))
    }

    /// Asks the tenant's LLM, with its template, knowledge and history.
    async fn ai_answer(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        may_requeue: bool,
        query: Option<&[f32]>,
    ) -> Result<Decision, AiFailure> {
        let t = &ctx.tenant;
        let endpoint = llm::endpoint(
            self.llm.settings(),
            t.ai_provider.as_deref(),
            t.ai_base_url.as_deref(),
        )?;
        let stored = tenant::store::load_credential(&self.db, t.id, SecretColumn::AiApiKey)
            .await
            .map_err(|e| {
                AiFailure::Failed(format!("reading the tenant's ai_api_key: {}", Report(&e)))
            })?
            .ok_or_else(|| llm::LlmError::NotConfigured("the tenant has no ai_api_key".into()))?;
        let key = self.ai_key(t.id, &stored).await?;
        let model = t
            .ai_model
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| llm::LlmError::NotConfigured("the tenant has no ai_model".into()))?;
        let retrieved = ctx.retrieve(&msg.text, query, prompt::RETRIEVED);
        let template = prompt::choose_template(
            ctx,
            retrieved.first().and_then(|m| m.entry.category.as_deref()),
        );
        let examples: Vec<_> = ctx.examples.iter().collect();
        let history = self.history(t.id, customer(msg), &msg.wamid).await;
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
                .ok_or(AiFailure::Busy)?
        } else {
            self.ai_gates.enter(&t.id).await.ok_or(AiFailure::Busy)?
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
            .decrypt(tenant, SecretColumn::AiApiKey, stored)
            .map_err(|e| llm::LlmError::NotConfigured(format!("the tenant's ai_api_key: {e}")))?;
        audit::record_use(
            &self.db,
            tenant,
            SecretColumn::AiApiKey,
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

    /// The recent turns of this customer's conversation with this tenant,
    /// oldest first (none when the log can't be read: the AI then answers
    /// without them).
    async fn history(&self, tenant: Uuid, user: &str, wamid: &str) -> Vec<prompt::Turn> {
        match store::recent_turns(&self.db, tenant, user, wamid, prompt::HISTORY_TURNS).await {
            Ok(rows) => prompt::turns_from_newest(rows),
            Err(e) => {
                tracing::warn!(error = %Report(&e), "conversation history unavailable; answering without it");
                Vec::new()
            }
        }
    }

    /// Publishes the incoming log row and the reply at once: the reply
    /// does not wait for the log's acknowledgement.
    async fn publish(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        d: &Decision,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let log = decide::log_event(ctx, msg, d, telemetry::current_trace())
            .map(|l| (l.dedup_key.clone(), l.encode_to_vec()));
        let reply = decide::reply_event(ctx, msg, d, now_ms(), telemetry::current_trace())
            .map(|o| (o.outbound_id.clone(), o.encode_to_vec()));
        let publish = |kind: StreamKind, item: Option<(String, Vec<u8>)>| {
            let subject = self.bus.subject(kind, &msg.tenant_id);
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
            publish(StreamKind::Log, log),
            publish(StreamKind::Outbound, reply)
        )
        .map(|_| ())
    }
}
