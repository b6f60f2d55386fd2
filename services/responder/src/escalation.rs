//! Handing a conversation to a human: when a customer asks for one, when
//! the bot could not answer twice in a row, or when the tenant's AI keeps
//! failing. The tenant's `escalation_phone` is told over WhatsApp through
//! the tenant's own number, `escalation_email` by SMTP, and the bot stays
//! quiet in that conversation for `handoff_pause_minutes`, or until
//! `alphadome conversation resume` ([`alphadome_core::handoff::resume_handoff`]).

use alphadome_core::bus::Bus;
use alphadome_core::events::v1::InboundMessage;
use alphadome_core::handoff;
use alphadome_core::notify::{self, Mailer};
use alphadome_core::Report;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::context::TenantContext;
use crate::decide::customer;

/// What the customer is told when the conversation goes to a human.
pub const HANDOFF_REPLY: &str =
    "Sure, I've asked a member of our team to take over this chat. They'll reply here as soon as they can.";

const HUMAN_WORDS: &[&str] = &[
    "human",
    "agent",
    "person",
    "real person",
    "someone",
    "somebody",
    "staff",
    "representative",
    "operator",
    "manager",
    "customer service",
    "customer care",
    "support team",
    "mtu",
    "binadamu",
];
const ASK_WORDS: &[&str] = &[
    "talk", "speak", "chat", "connect", "call", "want", "need", "get", "transfer", "contact",
    "nataka", "ongea",
];

/// Whether the customer is asking for a human.
pub fn wants_human(text: &str) -> bool {
    let t = text.to_lowercase();
    let words: Vec<&str> = t
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |needle: &str| {
        if needle.contains(' ') {
            t.contains(needle)
        } else {
            words.contains(&needle)
        }
    };
    HUMAN_WORDS.iter().any(|w| has(w)) && (ASK_WORDS.iter().any(|w| has(w)) || words.len() <= 3)
}

/// Sends escalations.
pub struct Escalator {
    db: PgPool,
    bus: Bus,
    mailer: Mailer,
}

impl Escalator {
    pub fn new(db: PgPool, bus: Bus, smtp_url: Option<&SecretString>, from: &str) -> Self {
        Self {
            db,
            bus,
            mailer: Mailer::new(smtp_url, from),
        }
    }

    /// Starts a handoff for `msg`'s conversation and tells the tenant's
    /// escalation contacts. Idempotent per message: a redelivery notifies
    /// again only where the first delivery could not (WhatsApp sends are
    /// deduplicated by id; the e-mail is marked once sent).
    pub async fn escalate(
        &self,
        ctx: &TenantContext,
        msg: &InboundMessage,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        let tenant = ctx.tenant.id;
        let user = customer(msg);
        let pause = ctx.settings.handoff_pause_minutes.max(0);
        let Some(started) =
            handoff::start_handoff(&self.db, tenant, user, reason, &msg.wamid, pause).await?
        else {
            return Ok(()); // a handoff started by another message is running
        };
        tracing::info!(tenant_id = %tenant, reason, "conversation handed to a human");
        let text = alert_text(&msg.profile_name, user, reason, &msg.text, pause);
        if let Some(phone) = ctx
            .settings
            .escalation_phone
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            let id = format!("escalation:{}", msg.wamid);
            let customer = if msg.from.is_empty() {
                user.to_owned()
            } else {
                format!("+{user}")
            };
            let template = ctx.template_for(
                "escalation",
                &[
                    ("customer", &customer),
                    ("customer_name", &msg.profile_name),
                    ("reason", reason),
                    ("message", &msg.text),
                    ("text", &text),
                ],
            );
            if let Err(e) =
                notify::whatsapp(&self.bus, tenant, phone, &id, &text, "escalation", template).await
            {
                tracing::error!(error = %Report(&e), "escalation WhatsApp message not queued");
            }
        }
        if let (Some(to), None) = (
            ctx.settings
                .escalation_email
                .as_deref()
                .filter(|e| !e.is_empty()),
            started.email_sent_at,
        ) {
            let subject = format!(
                "[{}] {} needs a person",
                ctx.tenant.client_name,
                who(&msg.profile_name, user)
            );
            let error = match self.mailer.send(to, &subject, &text).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!(tenant_id = %tenant, error = %Report(&e), "escalation e-mail not sent");
                    Some(Report(&e).to_string())
                }
            };
            handoff::record_handoff_email(
                &self.db,
                tenant,
                user,
                error.is_none(),
                error.as_deref(),
            )
            .await?;
        }
        Ok(())
    }
}

/// How the customer is named to staff.
fn who(profile_name: &str, user: &str) -> String {
    if profile_name.is_empty() {
        format!("+{user}")
    } else {
        format!("{profile_name} (+{user})")
    }
}

/// What the tenant's staff are told.
pub fn alert_text(profile_name: &str, user: &str, reason: &str, text: &str, pause: i32) -> String {
    format!(
        "Alphadome: customer {} needs a person ({reason}). Their message: \"{}\". The bot is paused in this chat for {pause} minutes.",
        who(profile_name, user),
        text.chars().take(500).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_requests_for_a_person() {
        for t in [
            "I want to talk to a human",
            "can I speak to someone please",
            "agent",
            "Nataka kuongea na mtu",
            "connect me to customer service",
            "human!",
        ] {
            assert!(wants_human(t), "{t}");
        }
        for t in [
            "what are your opening hours",
            "do you sell drums",
            "is someone's guitar ready for pickup at the shop tomorrow",
        ] {
            assert!(!wants_human(t), "{t}");
        }
    }

    #[test]
    fn alerts_name_the_customer_and_cut_long_messages() {
        let t = alert_text("Amina", "254711000111", "asked", &"x".repeat(900), 60);
        assert!(t.contains("Amina (+254711000111)") && t.contains("60 minutes"));
        assert!(t.len() < 700);
        assert!(alert_text("", "254711000111", "asked", "hi", 5).contains("customer +254711000111"));
    }
}
