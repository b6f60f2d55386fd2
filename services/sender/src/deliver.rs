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
use alphadome_core::events::v1::OutboundMessage;
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::meta::{self, SendFailure, MAX_TEXT_CHARS};
use alphadome_core::{telemetry, tenant, Report};
use secrecy::SecretString;
use uuid::Uuid;

use crate::decide::{self, Claim, MetaAction, NUMBER_REQUEUES};
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
        match self.steps(&msg, delivered, replayed).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn steps(&self, msg: &OutboundMessage, delivered: i64, replayed: bool) -> Step<Outcome> {
        let send = self.prepare(msg, delivered).await?;
        self.pace(&send, delivered).await?;
        let progress = self.claim(&send, msg, delivered, replayed).await?;
        let parts = meta::split_text(&msg.text, MAX_TEXT_CHARS);
        let progress = self
            .post_parts(&send, msg, &parts, progress, delivered)
            .await?;
        Ok(self
            .log_sent(
                &send.tenant,
                msg,
                progress.first_wamid.unwrap_or_default(),
                parts.len() as i32,
                delivered,
            )
            .await)
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
            }),
            Claim::Sent { wamid, parts } => {
                tracing::info!("reply already sent; not sending again");
                Err(self
                    .log_sent(
                        &send.tenant,
                        msg,
                        wamid.unwrap_or_default(),
                        parts,
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
    async fn post_parts(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        parts: &[String],
        mut progress: Progress,
        delivered: i64,
    ) -> Step<Progress> {
        let total = parts.len();
        if progress.parts_sent > 0 && progress.parts_sent as usize >= total {
            // Every part went out, as their status webhooks showed after
            // sends whose answers never came: record it, send nothing.
            tracing::info!("reply found sent from its status webhooks; not sending again");
            self.record(send, msg, &progress, total, delivered).await?;
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
            // Only the first part quotes the customer's message. Each part
            // carries its callback data, echoed in its status webhooks: how
            // a send whose answer never came is found to have gone out.
            let context = if i == 0 { msg.in_reply_to.as_str() } else { "" };
            let body = meta::text_reply_body(
                &msg.to,
                &msg.to_user_id,
                &parts[i],
                context,
                &decide::callback_data(&msg.outbound_id, i),
            );
            match self.graph.send(&send.pnid, &send.token, &body).await {
                Ok(wamid) => {
                    progress.parts_sent += 1;
                    progress.first_wamid.get_or_insert(wamid);
                    self.record(send, msg, &progress, total, delivered).await?;
                }
                Err(failure) => {
                    return Err(self.after_send_failure(send, msg, failure, delivered).await)
                }
            }
        }
        Ok(progress)
    }

    /// What a failed post leads to.
    async fn after_send_failure(
        &self,
        send: &Send,
        msg: &OutboundMessage,
        failure: Failure,
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
                let reason = decide::meta_reason(&error);
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
            if let Err(e) = self.publish_log(msg, String::new(), 0, error).await {
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
        delivered: i64,
    ) -> Outcome {
        if tenant.log_conversations {
            if let Err(e) = self.publish_log(msg, wamid, parts, String::new()).await {
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
    ) -> Result<(), alphadome_core::bus::BusError> {
        let log = decide::log_event(
            msg,
            wamid,
            parts,
            error,
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
