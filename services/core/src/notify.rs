//! Telling a tenant's people: e-mail through `SMTP_URL` (lettre), and
//! WhatsApp messages queued on the tenant's own outbound subject, so they go
//! out through the tenant's number with the sender's guarantees.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use prost::Message as _;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::bus::{Bus, BusError, StreamKind};
use crate::events::{
    now_ms,
    v1::{OutboundMessage, TemplateMessage},
};
use crate::telemetry;
use crate::Report;

/// Why an e-mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP_URL is not configured")]
    NotConfigured,
    #[error("{0:?} is not a mailbox")]
    BadAddress(String, #[source] lettre::address::AddressError),
    #[error("the e-mail could not be built")]
    Build(#[source] lettre::error::Error),
    #[error("the SMTP server did not take the e-mail")]
    Smtp(#[source] lettre::transport::smtp::Error),
}

/// Sends e-mail; without `SMTP_URL` every send fails with a clear reason.
pub struct Mailer {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
}

impl Mailer {
    pub fn new(smtp_url: Option<&SecretString>, from: &str) -> Self {
        let smtp = smtp_url.and_then(|u| {
            match AsyncSmtpTransport::<Tokio1Executor>::from_url(u.expose_secret()) {
                Ok(b) => Some(b.timeout(Some(Duration::from_secs(10))).build()),
                Err(e) => {
                    tracing::error!(error = %Report(&e), "SMTP_URL is not usable; e-mails are off");
                    None
                }
            }
        });
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| tracing::error!(error = %Report(&e), "ALPHADOME_SMTP_FROM is not a mailbox; e-mails are off"))
            .ok();
        Self { smtp, from }
    }

    /// Sends one plain-text e-mail.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let (Some(smtp), Some(from)) = (&self.smtp, &self.from) else {
            return Err(MailError::NotConfigured);
        };
        let to: Mailbox = to
            .parse()
            .map_err(|e| MailError::BadAddress(to.to_owned(), e))?;
        let mail = lettre::Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .body(body.to_owned())
            .map_err(MailError::Build)?;
        smtp.send(mail).await.map(|_| ()).map_err(MailError::Smtp)
    }
}

/// Queues a WhatsApp text from the tenant's own number to `to`; `id` makes
/// it idempotent (the sender sends one message per id, ever). `reason` is
/// its purpose (`escalation`, `token_alert`, `training`); `template`, the
/// tenant's approved template for it, goes instead of the text when `to`
/// has not written in 24 hours (without one such a message cannot go, and
/// the sender says so).
pub async fn whatsapp(
    bus: &Bus,
    tenant: Uuid,
    to: &str,
    id: &str,
    text: &str,
    reason: &str,
    template: Option<TemplateMessage>,
) -> Result<(), BusError> {
    let out = OutboundMessage {
        outbound_id: id.to_owned(),
        tenant_id: tenant.to_string(),
        in_reply_to: String::new(),
        to: to.to_owned(),
        to_user_id: String::new(),
        text: text.to_owned(),
        ai_processed: false,
        template_used: String::new(),
        training_data_id: String::new(),
        created_at_ms: now_ms(),
        inbound_received_at_ms: 0,
        trace: Some(telemetry::current_trace()),
        metadata_json: serde_json::json!({ "reason": reason }).to_string(),
        template,
        purpose: reason.to_owned(),
        ..Default::default()
    };
    bus.publish(
        bus.subject(StreamKind::Outbound, &tenant.to_string()),
        id,
        out.encode_to_vec().into(),
    )
    .await
    .map(|_| ())
}
