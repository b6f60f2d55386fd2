//! Training mode (`enable_training_mode`): questions the bot could not
//! answer with confidence become candidates ([`alphadome_core::training`]),
//! grouped by meaning; each new one is offered on WhatsApp to the tenant's
//! point of contact, whose next message is taken as its answer, shown back
//! to them, and saved as an active FAQ entry once they reply YES (SKIP
//! dismisses it). The saved entry is in the tenant's context within a
//! second (the change is announced), so the next customer asking the same
//! thing in other words gets it.

use alphadome_core::bus::Bus;
use alphadome_core::db::scoped;
use alphadome_core::events::v1::InboundMessage;
use alphadome_core::training::{self, Recorded, TeachError};
use alphadome_core::{notify, tenant, Report};
use sqlx::PgPool;

use crate::context::TenantContext;
use crate::decide::{customer, Decision};
use crate::semantic::SAME_MEANING;

/// Digits of a phone number.
fn digits(p: &str) -> String {
    p.chars().filter(char::is_ascii_digit).collect()
}

/// Whether `msg` comes from the tenant's point of contact while training
/// mode is on (their messages teach rather than ask).
pub fn from_contact(ctx: &TenantContext, msg: &InboundMessage) -> bool {
    ctx.settings.enable_training_mode
        && !msg.from.is_empty()
        && ctx
            .tenant
            .point_of_contact_phone
            .as_deref()
            .is_some_and(|p| !digits(p).is_empty() && digits(p) == digits(&msg.from))
}

fn quoted(q: &str) -> String {
    let short: String = q.chars().take(200).collect();
    format!("\u{201c}{short}\u{201d}")
}

/// The text offering candidate `question` to the point of contact.
pub fn offer_text(question: &str) -> String {
    format!(
        "A customer asked {} and I had no answer. Reply with the answer to teach me (I will show it to you before saving), or SKIP.",
        quoted(question)
    )
}

/// Records `msg` as a training candidate and offers a new one to the
/// point of contact. Counts each message once; the offer's id is derived
/// from the message, so a redelivery does not offer it twice.
pub async fn record(
    db: &PgPool,
    bus: &Bus,
    ctx: &TenantContext,
    msg: &InboundMessage,
    vector: Option<&[f32]>,
) -> Result<(), sqlx::Error> {
    let tenant = ctx.tenant.id;
    let mut tx = scoped(db, tenant).await?;
    let recorded =
        training::record_ask(&mut tx, tenant, &msg.wamid, &msg.text, vector, SAME_MEANING).await?;
    let offer = matches!(
        recorded,
        Recorded::New(_) | Recorded::Again { created: true, .. }
    );
    if offer {
        training::mark_offered(&mut tx, tenant, recorded.id()).await?;
    }
    tx.commit().await?;
    tracing::info!(candidate = %recorded.id(), ?recorded, "training candidate recorded");
    if let (true, Some(contact)) = (
        offer,
        ctx.tenant
            .point_of_contact_phone
            .as_deref()
            .filter(|p| !p.is_empty()),
    ) {
        let id = format!("teach:{}", msg.wamid);
        let text = offer_text(&msg.text);
        let template = ctx.template_for("training", &[("message", &msg.text), ("text", &text)]);
        if let Err(e) =
            notify::whatsapp(bus, tenant, contact, &id, &text, "training", template).await
        {
            tracing::error!(error = %Report(&e), "training offer not queued");
        }
    }
    Ok(())
}

/// What the contact's word means.
fn word(text: &str) -> &'static str {
    match text
        .trim()
        .trim_end_matches(['.', '!'])
        .to_lowercase()
        .as_str()
    {
        "yes" | "y" | "ok" | "okay" | "save" | "confirm" => "yes",
        "skip" | "no answer" | "dismiss" => "skip",
        "no" | "cancel" => "no",
        _ => "",
    }
}

/// The point of contact's message in the teach flow: the answer to the
/// candidate offered last, their confirmation, or SKIP. `None` when no
/// candidate waits (they are then answered like anyone).
pub async fn handle_contact(
    db: &PgPool,
    bus: &Bus,
    ctx: &TenantContext,
    msg: &InboundMessage,
) -> Result<Option<Decision>, sqlx::Error> {
    let tenant = ctx.tenant.id;
    let mut tx = scoped(db, tenant).await?;
    let Some(c) = training::offered(&mut tx, tenant).await? else {
        return Ok(None);
    };
    let q = quoted(&c.question);
    let (text, reason) = match (word(&msg.text), &c.proposed_answer) {
        ("yes", Some(answer)) => {
            let by = format!("whatsapp:{}", customer(msg));
            match training::teach(&mut tx, tenant, c.id, answer, &by).await {
                Ok(_) => (
                    format!("Saved. Customers asking {q} (in any words) now get that answer."),
                    "training_taught",
                ),
                Err(TeachError::Db(e)) => return Err(e),
                Err(e) => (format!("Not saved: {e}."), "training_refused"),
            }
        }
        ("yes", None) => (
            format!("Send me the answer to {q} first, then I will ask you to confirm it."),
            "training_waiting",
        ),
        ("skip", _) => {
            training::dismiss(&mut tx, tenant, c.id).await?;
            (format!("Skipped {q}."), "training_skipped")
        }
        ("no", Some(_)) => {
            training::propose(&mut tx, tenant, c.id, "").await?;
            (
                format!("Not saved. Send a better answer to {q}, or SKIP."),
                "training_waiting",
            )
        }
        _ if msg.text.trim().is_empty() => (
            format!("Please answer {q} in text, or SKIP."),
            "training_waiting",
        ),
        _ => {
            training::propose(&mut tx, tenant, c.id, &msg.text).await?;
            (
                format!(
                    "Customers asking {q} will get:\n\n{}\n\nReply YES to save it, SKIP to leave it, or send a better answer.",
                    msg.text.trim()
                ),
                "training_proposed",
            )
        }
    };
    // After a save or a skip, the next question waiting.
    let next = match reason {
        "training_taught" | "training_skipped" => training::offered(&mut tx, tenant).await?,
        _ => None,
    };
    tx.commit().await?;
    if reason == "training_taught" {
        tenant::announce_change(bus, tenant).await;
    }
    let text = match next {
        Some(n) => format!("{text}\n\nNext: {}", offer_text(&n.question)),
        None => text,
    };
    Ok(Some(Decision::reply(text, reason)))
}
