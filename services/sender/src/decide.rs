//! The sender's decisions as plain functions (no database, no network):
//! what a claim's answer means, how long a failed send waits before its
//! next try, what Meta's error classes lead to, and the outgoing log row.

use std::time::Duration;

use alphadome_core::bus::Outcome;
use alphadome_core::conversation::{self, Window};
use alphadome_core::events::v1::{Direction, LogEvent, OutboundMessage, TraceContext};
use alphadome_core::meta::{self, GraphError, SendFailure};
use chrono::{DateTime, Utc};
use rand::Rng;

use crate::store::ClaimRow;

/// What claiming a reply found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This worker may send, starting at part `parts_sent`.
    Mine {
        parts_sent: i32,
        first_wamid: Option<String>,
    },
    /// Already sent (with Meta's wamid): only make sure it is logged.
    Sent { wamid: Option<String>, parts: i32 },
    /// Already failed permanently.
    Failed,
    /// Another worker holds a live claim (or the row is not visible).
    Busy,
}

impl Claim {
    /// The claim functions' answer as a [`Claim`].
    pub fn of(row: Option<ClaimRow>) -> Self {
        let Some((claimed, state, parts_sent, wamid)) = row else {
            return Claim::Busy;
        };
        match (claimed, state.as_str()) {
            (true, _) => Claim::Mine {
                parts_sent,
                first_wamid: wamid,
            },
            (false, "sent") => Claim::Sent {
                wamid,
                parts: parts_sent,
            },
            (false, "failed") => Claim::Failed,
            _ => Claim::Busy,
        }
    }
}

/// Deliveries during which a send finding its number crowded goes back
/// (after 2, 4, 8, 16, then 30 s: about two and a half minutes of backlog
/// in all); after that it waits its turn. Below the sender's max_deliver.
pub const NUMBER_REQUEUES: i64 = 8;

/// Exponential backoff with jitter: 1 s, 2 s, 4 s ... up to 60 s.
pub fn retry(delivered: i64, reason: String) -> Outcome {
    let n = (delivered - 1).clamp(0, 6) as u32;
    Outcome::Retry {
        delay: jitter(Duration::from_secs(1u64 << n).min(Duration::from_secs(60))),
        reason,
    }
}

/// `d` give or take 20 %, so retries of many sends spread out.
pub fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.8..1.2);
    d.mul_f64(f)
}

/// A send that failed without a usable answer. When Meta may have it
/// (`maybe_sent`: a time-out, a 5xx), the next try waits at least
/// `reconcile_wait`, time for the part's status webhook to show it went
/// out, so the try sends only what Meta does not have; without a status by
/// then it is sent again, since a lost reply is worse than a repeated one.
pub fn after_failure(
    delivered: i64,
    reason: String,
    maybe_sent: bool,
    reconcile_wait: Duration,
) -> Outcome {
    match retry(delivered, reason) {
        Outcome::Retry { delay, reason } if maybe_sent => Outcome::Retry {
            delay: delay.max(reconcile_wait),
            reason,
        },
        other => other,
    }
}

/// A send whose number is flooded past its rate goes back with a growing
/// delay.
pub fn number_crowded(delivered: i64) -> Outcome {
    let n = (delivered - 1).clamp(0, NUMBER_REQUEUES) as u32;
    Outcome::Retry {
        delay: jitter(Duration::from_secs((2u64 << n).min(30))),
        reason: "this number's send rate is taken: many sends wait for it".into(),
    }
}

/// What a Meta error class leads to.
#[derive(Debug)]
pub enum MetaAction {
    /// Release the claim and try again after the outcome's delay.
    Retry(Outcome),
    /// Release the claim, hold the tenant's sends (its token is rejected),
    /// and try again after the outcome's delay.
    HoldTenant(Outcome),
    /// The send can never succeed: record it failed, log it, dead-letter it.
    Fail,
}

/// What to do about a send Meta refused with `class`.
pub fn on_meta_error(class: SendFailure, delivered: i64, reason: String) -> MetaAction {
    match class {
        SendFailure::Retry => MetaAction::Retry(retry(delivered, reason)),
        SendFailure::PairRate => {
            let n = (delivered - 1).clamp(0, 4) as u32;
            MetaAction::Retry(Outcome::Retry {
                delay: jitter(Duration::from_secs(4u64.pow(n))),
                reason,
            })
        }
        SendFailure::TokenInvalid => MetaAction::HoldTenant(Outcome::Retry {
            delay: Duration::from_secs(60),
            reason,
        }),
        SendFailure::Permanent => MetaAction::Fail,
    }
}

/// How a Meta error is told in logs and dead letters.
pub fn meta_reason(err: &GraphError) -> String {
    format!(
        "Graph API error {}: {} (fbtrace_id {})",
        err.code,
        err.message,
        err.fbtrace_id.as_deref().unwrap_or_default()
    )
}

/// The `biz_opaque_callback_data` of part `part` of reply `outbound_id`
/// (read back by the logger: `alphadome.apply_status_batch`).
pub fn callback_data(outbound_id: &str, part: usize) -> String {
    format!("{outbound_id}#{part}")
}

/// Who a reply goes to: the customer's phone, or their user id.
pub fn recipient(msg: &OutboundMessage) -> &str {
    if msg.to.is_empty() {
        &msg.to_user_id
    } else {
        &msg.to
    }
}

/// How a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Its text, in parts (inside the recipient's 24-hour window).
    Text,
    /// The approved template it carries.
    Template,
}

/// Why a message may not go at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The recipient wrote STOP: no proactive message goes to them.
    OptedOut(String),
    /// Outside the recipient's window, with no template to send instead.
    WindowClosed(String),
}

/// Whether `msg` is proactive: not the answer to a customer's message.
pub fn is_proactive(msg: &OutboundMessage) -> bool {
    msg.in_reply_to.is_empty()
}

/// How `msg` may go at `now` (Meta refuses free-form messages outside the
/// recipient's 24-hour window, protocols.md 2.8): a reply while the
/// message it answers is less than 24 hours old; a proactive message as
/// text inside the recipient's window (`window`: their session), else as
/// its template; a template-only message (empty text) as its template.
/// Nothing proactive goes to a recipient who opted out, but an agent's
/// message inside the window of a conversation the customer is in.
pub fn mode(
    msg: &OutboundMessage,
    window: Option<&Window>,
    now: DateTime<Utc>,
) -> Result<Mode, Refusal> {
    let has_template = msg.template.is_some();
    if !is_proactive(msg) {
        let asked = DateTime::from_timestamp_millis(msg.inbound_received_at_ms);
        if msg.inbound_received_at_ms == 0 || conversation::open_at(asked, now) {
            return Ok(Mode::Text);
        }
        return Err(Refusal::WindowClosed(format!(
            "the customer's 24-hour window closed before the reply could go (their message came at {}); a reply is never sent outside it",
            asked.map(|t| t.to_rfc3339()).unwrap_or_default()
        )));
    }
    let open = window.is_some_and(|w| w.is_open(now));
    if let Some(at) = window.and_then(|w| w.opted_out_at) {
        if !(open && msg.purpose == "agent") {
            return Err(Refusal::OptedOut(format!(
                "the recipient wrote STOP at {}: no proactive message goes to them until they write START",
                at.to_rfc3339()
            )));
        }
    }
    match (open, has_template, msg.text.trim().is_empty()) {
        (_, true, true) | (false, true, false) => Ok(Mode::Template),
        (true, _, false) => Ok(Mode::Text),
        (_, false, true) => Err(Refusal::WindowClosed(
            "the message has neither text nor template".into(),
        )),
        (false, false, false) => Err(Refusal::WindowClosed(format!(
            "{} outside the recipient's 24-hour window ({}), and the tenant has no approved WhatsApp template for {} (whatsapp_templates, use_for)",
            purpose_of(msg),
            window
                .map(|w| format!("they last wrote at {}", w.last_inbound_at.to_rfc3339()))
                .unwrap_or_else(|| "they have never written to this number".into()),
            if msg.purpose.is_empty() { "it" } else { &msg.purpose },
        ))),
    }
}

fn purpose_of(msg: &OutboundMessage) -> String {
    if msg.purpose.is_empty() {
        "a proactive message".to_owned()
    } else {
        format!("a proactive {} message", msg.purpose.replace('_', " "))
    }
}

/// Why Meta refused a send, told as what it is: a free-form message
/// outside the window (131047), a template Meta refuses (132000-132016),
/// or the error as Meta gave it.
pub fn refusal_reason(err: &GraphError, msg: &OutboundMessage, mode: Mode) -> String {
    let meta = meta_reason(err);
    if err.code == meta::WINDOW_CLOSED {
        return format!(
            "Meta refused a free-form message outside the recipient's 24-hour window, and {}: {meta}",
            if msg.template.is_some() {
                "the template sent instead failed too"
            } else {
                "the tenant has no approved WhatsApp template for it (whatsapp_templates, use_for)"
            }
        );
    }
    if mode == Mode::Template && meta::is_template_error(err.code) {
        let t = msg.template.as_ref();
        return format!(
            "Meta refused the WhatsApp template {} ({}) or its {} parameters; fix it in the tenant's whatsapp_templates: {meta}",
            t.map(|t| t.name.as_str()).unwrap_or_default(),
            t.map(|t| t.language.as_str()).unwrap_or_default(),
            t.map(|t| t.parameters.len()).unwrap_or_default(),
        );
    }
    meta
}

/// Whether a read receipt's typing indicator still makes sense: its first
/// delivery, within a few seconds of being asked (the indicator shows for
/// up to 25 s, and must not outlast the reply it announces).
pub fn typing_still_useful(msg: &OutboundMessage, delivered: i64, now_ms: i64) -> bool {
    msg.typing && delivered <= 1 && now_ms - msg.created_at_ms < 5_000
}

/// The outgoing message's log row: sent as `wamid` in `parts` parts, or
/// failed with `error`.
pub fn log_event(
    msg: &OutboundMessage,
    wamid: String,
    parts: i32,
    error: String,
    as_template: bool,
    now_ms: i64,
    trace: TraceContext,
) -> LogEvent {
    let mut metadata: serde_json::Value =
        serde_json::from_str(&msg.metadata_json).unwrap_or_else(|_| serde_json::json!({}));
    if !metadata.is_object() {
        metadata = serde_json::json!({});
    }
    metadata["in_reply_to"] = serde_json::Value::String(msg.in_reply_to.clone());
    metadata["outbound_id"] = serde_json::Value::String(msg.outbound_id.clone());
    metadata["parts"] = serde_json::json!(parts);
    if msg.inbound_received_at_ms > 0 {
        metadata["latency_ms"] = serde_json::json!(now_ms - msg.inbound_received_at_ms);
    }
    let key = if msg.in_reply_to.is_empty() {
        &msg.outbound_id
    } else {
        &msg.in_reply_to
    };
    if let Some(t) = msg.template.as_ref().filter(|_| as_template) {
        metadata["whatsapp_template"] = serde_json::json!({
            "name": t.name, "language": t.language, "parameters": t.parameters,
        });
    }
    let text = if msg.text.is_empty() {
        msg.template
            .as_ref()
            .map(|t| format!("[template {}] {}", t.name, t.parameters.join(" | ")))
            .unwrap_or_default()
    } else {
        msg.text.clone()
    };
    LogEvent {
        tenant_id: msg.tenant_id.clone(),
        direction: Direction::Outgoing as i32,
        dedup_key: format!("out:{key}"),
        wamid,
        user_phone: msg.to.clone(),
        message_text: text,
        ai_processed: msg.ai_processed,
        ai_response: if msg.ai_processed {
            msg.text.clone()
        } else {
            String::new()
        },
        error_message: error,
        template_used: msg.template_used.clone(),
        training_data_id: msg.training_data_id.clone(),
        metadata_json: metadata.to_string(),
        occurred_at_ms: now_ms,
        raw_json: String::new(),
        trace: Some(trace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_read_as_what_the_row_says() {
        assert_eq!(
            Claim::of(Some((true, "sending".into(), 1, Some("w".into())))),
            Claim::Mine {
                parts_sent: 1,
                first_wamid: Some("w".into())
            }
        );
        assert_eq!(
            Claim::of(Some((false, "sent".into(), 2, None))),
            Claim::Sent {
                wamid: None,
                parts: 2
            }
        );
        assert_eq!(
            Claim::of(Some((false, "failed".into(), 0, None))),
            Claim::Failed
        );
        assert_eq!(
            Claim::of(Some((false, "sending".into(), 0, None))),
            Claim::Busy
        );
        assert_eq!(Claim::of(None), Claim::Busy);
    }

    fn delay(o: &Outcome) -> Duration {
        match o {
            Outcome::Retry { delay, .. } => *delay,
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[test]
    fn backoff_grows_and_waits_for_reconciliation_when_meta_may_have_it() {
        assert!(delay(&retry(1, "x".into())) < Duration::from_millis(1300));
        assert!(delay(&retry(4, "x".into())) >= Duration::from_millis(6400));
        assert!(delay(&retry(50, "x".into())) <= Duration::from_secs(72));
        let wait = Duration::from_secs(15);
        assert!(delay(&after_failure(1, "x".into(), true, wait)) >= wait);
        assert!(delay(&after_failure(1, "x".into(), false, wait)) < wait);
        assert!(delay(&number_crowded(20)) <= Duration::from_secs(36));
    }

    #[test]
    fn meta_error_classes() {
        assert!(matches!(
            on_meta_error(SendFailure::Permanent, 1, "x".into()),
            MetaAction::Fail
        ));
        assert!(matches!(
            on_meta_error(SendFailure::TokenInvalid, 1, "x".into()),
            MetaAction::HoldTenant(Outcome::Retry { delay, .. }) if delay == Duration::from_secs(60)
        ));
        match on_meta_error(SendFailure::PairRate, 3, "x".into()) {
            MetaAction::Retry(o) => assert!(delay(&o) >= Duration::from_millis(12_800)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_log_row_names_the_reply_and_its_latency() {
        let msg = OutboundMessage {
            outbound_id: "reply:wamid.1".into(),
            tenant_id: "t".into(),
            in_reply_to: "wamid.1".into(),
            to: "254711000111".into(),
            text: "hi".into(),
            inbound_received_at_ms: 1_000,
            metadata_json: r#"{"reason":"faq_match"}"#.into(),
            ..Default::default()
        };
        let log = log_event(
            &msg,
            "wamid.out".into(),
            1,
            String::new(),
            false,
            1_250,
            TraceContext::default(),
        );
        assert_eq!(log.dedup_key, "out:wamid.1");
        let meta: serde_json::Value = serde_json::from_str(&log.metadata_json).unwrap();
        assert_eq!(meta["latency_ms"], 250);
        assert_eq!(meta["reason"], "faq_match");
        assert_eq!(meta["outbound_id"], "reply:wamid.1");
        assert_eq!(callback_data("reply:wamid.1", 2), "reply:wamid.1#2");
    }
}
