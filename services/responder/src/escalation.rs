//! Handing a conversation to a human: when a customer asks for one, when
//! the bot could not answer twice in a row, or when the tenant's AI keeps
//! failing. The tenant's `escalation_phone` is told over WhatsApp through
//! the tenant's own number, `escalation_email` by SMTP, and the bot stays
//! quiet in that conversation for `handoff_pause_minutes`, or until
//! `alphadome conversation resume`.

use alphadome_core::bus::Bus;
use alphadome_core::db::scoped;
use alphadome_core::events::v1::InboundMessage;
use alphadome_core::notify::{self, Mailer};
use alphadome_core::tenant::TenantContext;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

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

/// Whether the conversation of `user` with `tenant` is with a human now.
/// Returns the wamid that started the handoff. (The responder asks in a
/// batch, with the limit check: [`crate::limits::Admission`].)
pub async fn active(db: &PgPool, tenant: Uuid, user: &str) -> Result<Option<String>, sqlx::Error> {
    // One round trip: alphadome.active_handoff (migration 0009).
    sqlx::query_scalar("SELECT alphadome.active_handoff($1, $2)")
        .bind(tenant)
        .bind(user)
        .fetch_one(db)
        .await
}

/// Ends a handoff: the bot answers again. Returns whether one was active.
pub async fn resume(db: &PgPool, tenant: Uuid, user: &str) -> Result<bool, sqlx::Error> {
    let mut tx = scoped(db, tenant).await?;
    let done = sqlx::query(
        "UPDATE alphadome.conversation_handoffs SET resumed_at = now() \
         WHERE bot_tenant_id = $1 AND user_phone = $2 AND resumed_at IS NULL AND paused_until > now()",
    )
    .bind(tenant)
    .bind(user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done > 0)
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
        let user = if msg.from.is_empty() {
            &msg.from_user_id
        } else {
            &msg.from
        };
        let pause = ctx.settings.handoff_pause_minutes.max(0);
        let mut tx = scoped(&self.db, tenant).await?;
        let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "INSERT INTO alphadome.conversation_handoffs AS h (bot_tenant_id, user_phone, reason, trigger_wamid, paused_until) \
             VALUES ($1, $2, $3, $4, now() + make_interval(mins => $5)) \
             ON CONFLICT (bot_tenant_id, user_phone) DO UPDATE SET reason = EXCLUDED.reason, \
               trigger_wamid = EXCLUDED.trigger_wamid, started_at = now(), paused_until = EXCLUDED.paused_until, \
               resumed_at = NULL, email_sent_at = NULL, email_error = NULL \
             WHERE h.trigger_wamid = EXCLUDED.trigger_wamid OR h.resumed_at IS NOT NULL OR h.paused_until <= now() \
             RETURNING h.trigger_wamid, h.email_sent_at::text",
        )
        .bind(tenant)
        .bind(user)
        .bind(reason)
        .bind(&msg.wamid)
        .bind(pause)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some((_, email_sent)) = row else {
            return Ok(()); // a handoff started by another message is running
        };
        tracing::info!(tenant_id = %tenant, reason, "conversation handed to a human");
        let who = if msg.profile_name.is_empty() {
            format!("+{user}")
        } else {
            format!("{} (+{user})", msg.profile_name)
        };
        let text = format!(
            "Alphadome: customer {who} needs a person ({reason}). Their message: \"{}\". The bot is paused in this chat for {pause} minutes.",
            msg.text.chars().take(500).collect::<String>()
        );
        if let Some(phone) = ctx
            .settings
            .escalation_phone
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            let id = format!("escalation:{}", msg.wamid);
            if let Err(e) =
                notify::whatsapp(&self.bus, tenant, phone, &id, &text, "escalation").await
            {
                tracing::error!(error = %e, "escalation WhatsApp message not queued");
            }
        }
        if let (Some(to), None) = (
            ctx.settings
                .escalation_email
                .as_deref()
                .filter(|e| !e.is_empty()),
            email_sent,
        ) {
            let subject = format!("[{}] {who} needs a person", ctx.tenant.client_name);
            let result = self.mailer.send(to, &subject, &text).await;
            let (sent, error) = match result {
                Ok(()) => (true, None),
                Err(e) => {
                    tracing::error!(tenant_id = %tenant, error = %e, "escalation e-mail not sent");
                    (false, Some(e))
                }
            };
            let mut tx = scoped(&self.db, tenant).await?;
            sqlx::query(
                "UPDATE alphadome.conversation_handoffs SET email_sent_at = CASE WHEN $3 THEN now() END, email_error = $4 \
                 WHERE bot_tenant_id = $1 AND user_phone = $2",
            )
            .bind(tenant)
            .bind(user)
            .bind(sent)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
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
}
