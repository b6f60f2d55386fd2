//! The delivery of one reply, as an explicit sequence of steps:
//!
//! 1. [`prepare`](Sender::prepare): the tenant, its token and number;
//! 2. [`pace`](Sender::pace): the number's rate and the customer pair's
//!    limit, before claiming, so no claim lease runs out in a queue;
//! 3. [`claim`](Sender::claim): the reply's row, so it is sent once;
//! 4. [`post_parts`](Sender::post_parts): each part not yet sent, each
//!    [`record`](Sender::record)ed as soon as Meta accepted it;
//! 5. [`log_sent`](Sender::log_sent): the outgoing log row.
//!
//! A step that ends the delivery early returns the message's [`Outcome`]
//! as its error.

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::Outcome;
use alphadome_core::conversation;
use alphadome_core::events::v1::{OutboundKind, OutboundMessage};
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::meta::{self, SendFailure, MAX_TEXT_CHARS};
use alphadome_core::{telemetry, tenant, Report};
use secrecy::SecretString;
use uuid::Uuid;

use crate::decide::{self, Claim, MetaAction, Mode, Refusal, NUMBER_REQUEUES};
use crate::graph::Failure;
use crate::pacing::Paced;
use crate::{store, Sender, SenderTenant, RECORD_PATIENCE};

/// A reply ready to go: whose, from which number, with which token, to whom.
struct Send {
    tenant: Arc<SenderTenant>,
    pnid: String,
    token: SecretString,
    recipient: String,
}

/// Where a reply's sending stands.
struct Progress {
    parts_sent: i32,
    first_wamid: Option<String>,
    /// How it goes: its text, or its template.
    mode: Mode,
}

type Step<T> = Result<T, Outcome>;

impl Sender {
    /// Delivers one reply; `replayed` when an operator re-drove its dead
    /// letter.
    pub(crate) async fn deliver(
        &self,
        msg: OutboundMessage,
        delivered: i64,
        replayed: bool,
    ) -> Outcome {
        if msg.kind == OutboundKind::ReadReceipt as i32 {
            return self.read_receipt(&msg, delivered).await;
        }
        match self.steps(&msg, delivered, replayed).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn steps(&self, msg: &OutboundMessage, delivered: i64, replayed: bool) -> Step<Outcome> {
        let send = self.prepare(msg, delivered).await?;
        self.pace(&send, delivered).await?;
        let progress = self.claim(&send, msg, delivered, replayed).await?;
        let progress = self.allowed(&send, msg, progress, delivered).await?;
        let progress = self.post_parts(&send, msg, progress, delivered).await?;
        let as_template = progress.mode == Mode::Template;
        Ok(self
            .log_sent(
                &send.tenant,
                msg,
                progress.first_wamid.unwrap_or_default(),
                progress.parts_sent,
                as_template,
                delivered,
            )
            .await)
    }

    /// A read receipt (protocols.md 2.5): posted once, with the typing
    /// indicator only while it can still come before the reply; never
    /// logged. A receipt that cannot go is given up after a few tries (the
    /// reply matters, not its receipt).
    async fn read_receipt(&self, msg: &OutboundMessage, delivered: i64) -> Outcome {
        let send = match self.prepare(msg, delivered).await {
            Ok(s) => s,
            Err(Outcome::Poison { reason }) => {
                tracing::warn!(%reason, "read receipt dropped");
                return Outcome::Ack;
            }
            Err(_) if delivered >= 3 => return Outcome::Ack,
            Err(other) => return other,
        };
        let typing = decide::typing_still_useful(msg, delivered, now_ms());
        let body = meta::read_receipt_body(&msg.in_reply_to, typing);
        match self.graph.mark_read(&send.pnid, &send.token, &body).await {
            Ok(()) => Outcome::Ack,
            Err(failure) if delivered < 3 => {
                tracing::debug!(?failure, "read receipt failed; trying again");
                decide::retry(delivered, "read receipt failed".into())
            }
            Err(failure) => {
                tracing::warn!(?failure, "read receipt given up");
                Outcome::Ack
            }
        }
    }

    /// Step 3b: whether the claimed message may go, and how (Meta's
    /// 24-hour window, the recipient's opt-out). One that may not is
    /// recorded failed and logged; a refusal the tenant can fix (no
    /// template) is dead-lettered and raised as an alert, an opt-out is
    /// the recipient's wish and only logged.
    async fn allowed(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        mut progress: Progress,
        delivered: i64,
    ) -> Step<Progress> {
        let window = if decide::is_proactive(msg) {
            conversation::window(&self.db, send.tenant.id, &send.recipient)
                .await
                .map_err(|e| {
                    decide::retry(
                        delivered,
                        format!("reading the recipient's window: {}", Report(&e)),
                    )
                })?
        } else {
            None
        };
        match decide::mode(msg, window.as_ref(), chrono::Utc::now()) {
            Ok(mode) => {
                progress.mode = mode;
                Ok(progress)
            }
            Err(Refusal::OptedOut(reason)) => {
                tracing::info!(%reason, "proactive message not sent");
                Err(
                    match self.fail(&send.tenant, msg, reason, delivered).await {
                        Outcome::Poison { .. } => Outcome::Ack,
                        other => other,
                    },
                )
            }
            Err(Refusal::WindowClosed(reason)) => {
                tracing::error!(tenant_id = %send.tenant.id, alert = "outside_window", %reason, "ALERT: message cannot be sent");
                Err(self.fail(&send.tenant, msg, reason, delivered).await)
            }
        }
    }

    /// Step 1: the tenant, with a usable token and number.
    async fn prepare(&self, msg: &OutboundMessage, delivered: i64) -> Step<Send> {
        let Ok(tenant_id) = Uuid::parse_str(&msg.tenant_id) else {
            return Err(Outcome::Poison {
                reason: format!("tenant id {:?} is not a uuid", msg.tenant_id),
            });
        };
        let tenant = match self.tenant(tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(Outcome::Poison {
                    reason: format!("tenant {tenant_id} does not exist"),
                })
            }
            Err(e) => {
                return Err(decide::retry(
                    delivered,
                    format!("loading tenant: {}", Report(&e)),
                ))
            }
        };
        if tenant.token_invalid {
            return Err(Outcome::Retry {
                delay: Duration::from_secs(60),
                reason: "the tenant's WhatsApp token is marked invalid (Meta error 190); sends are held until it is replaced".into(),
            });
        }
        let (Some(token), Some(pnid)) = (tenant.token.clone(), tenant.phone_number_id.clone())
        else {
            return Err(Outcome::Retry {
                delay: Duration::from_secs(60),
                reason: "the tenant has no usable WhatsApp access token or phone number id".into(),
            });
        };
        Ok(Send {
            tenant,
            pnid,
            token,
            recipient: decide::recipient(msg).to_owned(),
        })
    }

    /// Step 2: a sending slot for the number and the customer.
    async fn pace(&self, send: &Send, delivered: i64) -> Step<()> {
        match self
            .pacer
            .pace(&send.pnid, &send.recipient, delivered <= NUMBER_REQUEUES)
            .await
        {
            Ok(()) => Ok(()),
            Err(Paced::Pair(wait)) => Err(Outcome::Retry {
                delay: wait,
                reason: "pair rate limit: this customer was sent many messages from this number just now".into(),
            }),
            Err(Paced::Crowded) => Err(decide::number_crowded(delivered)),
        }
    }

    /// Step 3: the claim. A reply already sent is only logged; one that
    /// failed for good is left alone (unless replayed); one another worker
    /// holds comes back later.
    async fn claim(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        delivered: i64,
        replayed: bool,
    ) -> Step<Progress> {
        let mut claim = self.claim_row(send.tenant.id, msg, delivered).await?;
        if claim == Claim::Failed && replayed {
            match store::reopen_failed(&self.db, send.tenant.id, &msg.outbound_id).await {
                Ok(_) => claim = self.claim_row(send.tenant.id, msg, delivered).await?,
                Err(e) => {
                    return Err(decide::retry(
                        delivered,
                        format!("reopening the replayed reply: {}", Report(&e)),
                    ))
                }
            }
        }
        match claim {
            Claim::Mine {
                parts_sent,
                first_wamid,
            } => Ok(Progress {
                parts_sent,
                first_wamid,
                mode: Mode::Text,
            }),
            Claim::Sent { wamid, parts } => {
                tracing::info!("reply already sent; not sending again");
                Err(self
                    .log_sent(
                        &send.tenant,
                        msg,
                        wamid.unwrap_or_default(),
                        parts,
                        msg.text.is_empty(),
                        delivered,
                    )
                    .await)
            }
            Claim::Failed => Err(Outcome::Ack),
            Claim::Busy => Err(Outcome::Retry {
                delay: Duration::from_secs(5),
                reason: "another sender holds this reply".into(),
            }),
        }
    }

    /// The claim call: usually in a batch with the claims made at the same
    /// moment; alone (one round trip) when the batch had no answer for it.
    async fn claim_row(&self, tenant: Uuid, msg: &OutboundMessage, delivered: i64) -> Step<Claim> {
        let req = (tenant, msg.outbound_id.clone(), msg.in_reply_to.clone());
        let row = match self.claims.call(req.clone()).await {
            Some(row) => Some(row),
            None => store::claim(&self.db, &req, self.claim_lease)
                .await
                .map_err(|e| {
                    decide::retry(delivered, format!("claiming the reply: {}", Report(&e)))
                })?,
        };
        Ok(Claim::of(row))
    }

    /// Step 4: every part not yet sent, each recorded once Meta has it.
    /// A text Meta refuses as outside the window (131047) goes as the
    /// message's template instead, when it has one.
    async fn post_parts(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        mut progress: Progress,
        delivered: i64,
    ) -> Step<Progress> {
        let mut bodies = bodies(msg, progress.mode);
        let mut total = bodies.len();
        if progress.parts_sent > 0 && progress.parts_sent as usize >= total {
            // Every part went out, as their status webhooks showed after
            // sends whose answers never came: record it, send nothing.
            tracing::info!("reply found sent from its status webhooks; not sending again");
            self.record(send, msg, &progress, total, delivered).await?;
        }
        if msg.mark_read && progress.parts_sent == 0 {
            self.mark_read_with_reply(send, msg);
        }
        let mut paced = true;
        while (progress.parts_sent as usize) < total {
            let i = progress.parts_sent as usize;
            if !std::mem::take(&mut paced) {
                if let Err(Paced::Pair(wait)) =
                    self.pacer.pace(&send.pnid, &send.recipient, false).await
                {
                    // The parts sent so far are recorded; the rest comes later.
                    self.release(send.tenant.id, &msg.outbound_id, "pair rate limit")
                        .await;
                    return Err(Outcome::Retry {
                        delay: wait,
                        reason: "pair rate limit between the parts of a long reply".into(),
                    });
                }
            }
            match self.graph.send(&send.pnid, &send.token, &bodies[i]).await {
                Ok(wamid) => {
                    progress.parts_sent += 1;
                    progress.first_wamid.get_or_insert(wamid);
                    self.record(send, msg, &progress, total, delivered).await?;
                }
                Err(Failure::Meta { ref error, .. })
                    if error.code == meta::WINDOW_CLOSED
                        && i == 0
                        && progress.mode == Mode::Text
                        && msg.template.is_some() =>
                {
                    tracing::info!(
                        "outside the recipient's window (131047): sending the template instead"
                    );
                    progress.mode = Mode::Template;
                    bodies = self::bodies(msg, Mode::Template);
                    total = bodies.len();
                }
                Err(failure) => {
                    return Err(self
                        .after_send_failure(send, msg, failure, progress.mode, delivered)
                        .await)
                }
            }
        }
        Ok(progress)
    }

    /// Marks the customer's message read as its reply goes, without holding
    /// the reply up (a receipt that fails is only logged).
    fn mark_read_with_reply(&self, send: &Send, msg: &OutboundMessage) {
        let graph = self.graph.clone();
        let (pnid, token) = (send.pnid.clone(), send.token.clone());
        let body = meta::read_receipt_body(&msg.in_reply_to, false);
        tokio::spawn(async move {
            if let Err(failure) = graph.mark_read(&pnid, &token, &body).await {
                tracing::debug!(?failure, "read receipt with the reply failed");
            }
        });
    }

    /// What a failed post leads to.
    async fn after_send_failure(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        failure: Failure,
        mode: Mode,
        delivered: i64,
    ) -> Outcome {
        match failure {
            Failure::Transport { reason, maybe_sent } => {
                self.release(send.tenant.id, &msg.outbound_id, &reason)
                    .await;
                decide::after_failure(delivered, reason, maybe_sent, self.reconcile_wait)
            }
            Failure::Meta {
                class: SendFailure::Retry,
                error,
                maybe_sent: true,
            } => {
                let reason = decide::meta_reason(&error);
                self.release(send.tenant.id, &msg.outbound_id, &reason)
                    .await;
                decide::after_failure(delivered, reason, true, self.reconcile_wait)
            }
            Failure::Meta { class, error, .. } => {
                let reason = decide::refusal_reason(&error, msg, mode);
                if error.code == meta::WINDOW_CLOSED || meta::is_template_error(error.code) {
                    tracing::error!(tenant_id = %send.tenant.id, alert = "whatsapp_window_or_template", %reason, "ALERT: Meta refused the message");
                }
                match decide::on_meta_error(class, delivered, reason.clone()) {
                    MetaAction::Retry(outcome) => {
                        self.release(send.tenant.id, &msg.outbound_id, &reason)
                            .await;
                        outcome
                    }
                    MetaAction::HoldTenant(outcome) => {
                        self.release(send.tenant.id, &msg.outbound_id, &reason)
                            .await;
                        self.hold_tenant(send.tenant.id).await;
                        outcome
                    }
                    MetaAction::Fail => self.fail(&send.tenant, msg, reason, delivered).await,
                }
            }
        }
    }

    /// Records a reply Meta refused for good, logs it, and dead-letters it.
    async fn fail(
        &self,
        tenant: &SenderTenant,
        msg: &OutboundMessage,
        reason: String,
        delivered: i64,
    ) -> Outcome {
        if let Err(e) = store::fail(&self.db, tenant.id, &msg.outbound_id, &reason).await {
            return decide::retry(
                delivered,
                format!("recording a permanent failure: {}", Report(&e)),
            );
        }
        if tenant.log_conversations {
            let error = if tenant.log_errors {
                reason.clone()
            } else {
                "send failed".to_owned()
            };
            if let Err(e) = self
                .publish_log(msg, String::new(), 0, error, msg.text.is_empty())
                .await
            {
                return decide::retry(delivered, Report(&e).to_string());
            }
        }
        Outcome::Poison { reason }
    }

    /// Records a send Meta accepted. Only this process knows it happened,
    /// so a database outage is waited out here (the message keeps telling
    /// JetStream it is being worked on) rather than handed back, which
    /// would send it again once the claim expired.
    async fn record(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        progress: &Progress,
        total: usize,
        delivered: i64,
    ) -> Step<()> {
        let req = (
            send.tenant.id,
            msg.outbound_id.clone(),
            progress.parts_sent,
            progress.first_wamid.clone(),
            total as i32,
        );
        let deadline = std::time::Instant::now() + RECORD_PATIENCE;
        let mut wait = Duration::from_millis(200);
        loop {
            let result = match self.records.call(req.clone()).await {
                Some(()) => Ok(()),
                None => store::record(&self.db, &req).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() + wait > deadline => {
                    // Sent but not recorded even after waiting: the one
                    // window where a redelivery may repeat this part.
                    tracing::error!(error = %Report(&e), "send succeeded but could not be recorded");
                    return Err(decide::retry(
                        delivered,
                        format!("recording the send: {}", Report(&e)),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %Report(&e), "send succeeded; recording it failed, trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Releases the reply's claim (it expires by itself when this fails).
    async fn release(&self, tenant: Uuid, id: &str, reason: &str) {
        if let Err(e) = store::release(&self.db, tenant, id, reason).await {
            tracing::warn!(error = %Report(&e), "could not release the claim; it expires by itself");
        }
    }

    /// Marks the tenant's token invalid (Meta error 190): its sends are held
    /// until the token is replaced, and the alert is raised.
    async fn hold_tenant(&self, id: Uuid) {
        match tenant::store::mark_token_invalid(&self.db, id).await {
            Ok(true) => {
                tracing::error!(tenant_id = %id, alert = "whatsapp_token_invalid", "ALERT: Meta rejected the tenant's WhatsApp token (190); its sends are held until `alphadome tenant apply` sets a new token");
                tenant::announce_change(&self.bus, id).await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(tenant_id = %id, error = %Report(&e), "could not mark the tenant's token invalid")
            }
        }
    }

    /// Step 5: the outgoing log row (when the tenant logs conversations).
    async fn log_sent(
        &self,
        tenant: &SenderTenant,
        msg: &OutboundMessage,
        wamid: String,
        parts: i32,
        as_template: bool,
        delivered: i64,
    ) -> Outcome {
        if tenant.log_conversations {
            if let Err(e) = self
                .publish_log(msg, wamid, parts, String::new(), as_template)
                .await
            {
                return decide::retry(delivered, Report(&e).to_string());
            }
        }
        Outcome::Ack
    }

    async fn publish_log(
        &self,
        msg: &OutboundMessage,
        wamid: String,
        parts: i32,
        error: String,
        as_template: bool,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let log = decide::log_event(
            msg,
            wamid,
            parts,
            error,
            as_template,
            now_ms(),
            telemetry::current_trace(),
        );
        let id = log.dedup_key.clone();
        self.bus
            .publish(
                self.bus
                    .subject(alphadome_core::bus::StreamKind::Log, &msg.tenant_id),
                &id,
                log.encode_to_vec().into(),
            )
            .await
            .map(|_| ())
    }
}

/// The bodies to post for `msg`: its list or buttons, or each part of its
/// text (only the first quoting the customer's message), or its template.
/// Each carries its callback data, echoed in its status webhooks: how a
/// send whose answer never came is found to have gone out.
fn bodies(msg: &OutboundMessage, mode: Mode) -> Vec<serde_json::Value> {
    let interactive = (!msg.interactive_json.is_empty())
        .then(|| serde_json::from_str::<serde_json::Value>(&msg.interactive_json).ok())
        .flatten();
    match (mode, &msg.template, interactive) {
        (Mode::Template, Some(t), _) => vec![meta::template_body(
            &msg.to,
            &msg.to_user_id,
            t,
            &decide::callback_data(&msg.outbound_id, 0),
        )],
        (_, _, Some(i)) => vec![meta::interactive_body(
            &msg.to,
            &msg.to_user_id,
            &i,
            &msg.in_reply_to,
            &decide::callback_data(&msg.outbound_id, 0),
        )],
        _ => meta::split_text(&msg.text, MAX_TEXT_CHARS)
            .iter()
            .enumerate()
            .map(|(i, part)| {
                meta::text_reply_body(
                    &msg.to,
                    &msg.to_user_id,
                    part,
                    if i == 0 { msg.in_reply_to.as_str() } else { "" },
                    &decide::callback_data(&msg.outbound_id, i),
                )
            })
            .collect(),
    }
}
