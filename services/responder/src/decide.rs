//! The responder's decisions as plain functions of the tenant's context and
//! the message (no database, no broker): whether and how to answer from
//! the FAQ, what a limit turns the answer into, and the events a decision
//! publishes (the incoming log row and the reply).

use alphadome_core::events::v1::{
    Direction, InboundMessage, LogEvent, MessageKind, OutboundKind, OutboundMessage, TraceContext,
};
use uuid::Uuid;

use alphadome_core::conversation::{self, Opt};

use alphadome_core::meta;

use crate::context::{TenantContext, Tier};
use crate::limits::{self, LimitDecision};
use crate::llm;
use crate::matcher::FaqEntry;

/// Outbound id (and JetStream message id) of the reply to `wamid`.
pub fn outbound_id(wamid: &str) -> String {
    format!("reply:{wamid}")
}

/// Polite answer to media and other messages the bot cannot read.
pub const MEDIA_REPLY: &str = "Thanks for sending that! I can only read text messages for now. Please type your question and I'll be happy to help.";

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
    /// How the FAQ entry was found, when one answered.
    pub tier: Option<Tier>,
    /// Set when the reply came from the tenant's LLM.
    pub ai: Option<llm::ChatAnswer>,
    /// Why the AI could not answer, when it could not.
    pub error: Option<String>,
    /// Whether the reply marks the customer's message read as it goes.
    pub mark_read: bool,
    /// Whether the reply opens with the tenant's greeting.
    pub greeted: bool,
    /// The list or reply buttons the reply is sent as (its body is the
    /// reply's first line; the reply's text, with the choices, is what the
    /// log shows).
    pub interactive: Option<serde_json::Value>,
}

impl Decision {
    /// No reply, for `reason`.
    pub fn silent(reason: &'static str) -> Self {
        Self {
            reply: None,
            reason,
            training_data_id: None,
            template_used: None,
            score: None,
            tier: None,
            ai: None,
            error: None,
            mark_read: false,
            greeted: false,
            interactive: None,
        }
    }

    /// Reply `text`, chosen for `reason`.
    pub fn reply(text: String, reason: &'static str) -> Self {
        Self {
            reply: Some(text),
            ..Self::silent(reason)
        }
    }

    /// Whether this is the tenant's fallback reply (nothing else answered).
    pub fn is_fallback(&self) -> bool {
        is_fallback_reason(Some(self.reason))
    }
}

/// Whether a reply chosen for `reason` was a fallback.
pub fn is_fallback_reason(reason: Option<&str>) -> bool {
    matches!(reason, Some("fallback" | "ai_failed_fallback"))
}

/// The customer who wrote `msg` (their phone, or their user id when
/// WhatsApp gives no phone).
pub fn customer(msg: &InboundMessage) -> &str {
    if msg.from.is_empty() {
        &msg.from_user_id
    } else {
        &msg.from
    }
}

/// Whether `msg` is a kind the bot answers from its text (the model and
/// training mode look only at these).
pub fn answers_text(msg: &InboundMessage) -> bool {
    let kind = MessageKind::try_from(msg.kind).unwrap_or(MessageKind::Other);
    !matches!(kind, MessageKind::Reaction | MessageKind::System) && !msg.text.trim().is_empty()
}

/// Decides how to answer `msg` from the tenant's own FAQ (the AI, limits
/// and handoff come after, in the consumer); `query` is the message's
/// vector when the model was asked ([`TenantContext::answer`]).
pub fn decide(
    ctx: &TenantContext,
    msg: &InboundMessage,
    default_fallback: &str,
    query: Option<&[f32]>,
) -> Decision {
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
    if let Some(d) = chosen(ctx, msg) {
        return d;
    }
    if let Some((m, tier)) = ctx.answer(&msg.text, query) {
        // Words that fit several entries as well, none preferred by its
        // priority: the customer picks rather than the bot guessing.
        if tier == Tier::Lexical && (m.score as f32) < crate::semantic::LEXICAL_SURE {
            if let Some(d) = tied(ctx, &msg.text, m.score, m.entry) {
                return d;
            }
        }
        return Decision {
            training_data_id: Some(m.entry.id),
            score: Some(m.score),
            tier: Some(tier),
            ..Decision::reply(m.entry.answer.clone(), "faq_match")
        };
    }
    // An unclear question close to several entries: the customer picks
    // (when the tenant's AI is on, it answers such questions instead).
    if !ctx.settings.enable_ai_responses {
        if let Some(d) = clarify(ctx, msg, query) {
            return d;
        }
    }
    Decision::reply(ctx.fallback_text(default_fallback), "fallback")
}

/// The id of the reply button that opens the menu.
pub const MENU_ID: &str = "menu";
/// The id of the reply button that asks for a person.
pub const PERSON_ID: &str = "person";
/// The menu's first line.
pub const MENU_BODY: &str = "Here's what I can help with. Pick a topic:";
/// A category's list's first line.
pub const TOPIC_BODY: &str = "Pick a question:";
/// The first line of the list offered for an unclear question.
pub const CLARIFY_BODY: &str = "I'm not sure which of these you mean. Pick one:";
/// Lowest score of an entry offered for an unclear question, and how many
/// are offered at most.
const CLARIFY_FLOOR: f64 = 0.35;
const CLARIFY_ROWS: usize = 5;

/// Whether `msg` asks for the menu ("menu", or its button).
pub fn wants_menu(msg: &InboundMessage) -> bool {
    msg.reply_id == MENU_ID
        || matches!(
            conversation::command_word(&msg.text).as_str(),
            "menu" | "main menu" | "orodha"
        )
}

/// What the customer chose from a menu, a list or a button: the menu, a
/// topic's questions, or an entry's answer (with buttons back to the menu
/// and to a person). `None` when `msg` chooses nothing the FAQ has.
pub fn chosen(ctx: &TenantContext, msg: &InboundMessage) -> Option<Decision> {
    if wants_menu(msg) {
        return menu(ctx);
    }
    let entries = ctx.index.entries();
    if let Some(topic) = msg.reply_id.strip_prefix("cat:") {
        let rows = question_rows(in_menu_order(
            entries
                .iter()
                .filter(|e| e.category.as_deref() == Some(topic)),
        ));
        return (!rows.is_empty()).then(|| list(TOPIC_BODY, topic, &rows, "menu"));
    }
    let id = msg.reply_id.strip_prefix("faq:")?;
    let e = entries.iter().find(|e| e.id.to_string() == id)?;
    let mut buttons = vec![(MENU_ID, "Menu")];
    if ctx.has_escalation_contacts() {
        buttons.push((PERSON_ID, "Talk to a person"));
    }
    Some(Decision {
        training_data_id: Some(e.id),
        score: Some(1.0),
        interactive: meta::buttons_interactive(&e.answer, &buttons),
        ..Decision::reply(e.answer.clone(), "faq_match")
    })
}

/// The menu: the tenant's FAQ topics (its categories, when it has two or
/// more), else its first questions. `None` for a tenant without FAQ.
pub fn menu(ctx: &TenantContext) -> Option<Decision> {
    let entries = ctx.index.entries();
    let mut topics: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.category.as_deref())
        .filter(|c| !c.trim().is_empty())
        .collect();
    topics.sort_unstable();
    topics.dedup();
    let rows: Vec<meta::ListRow> = if topics.len() >= 2 {
        topics
            .iter()
            .take(meta::limits::ROWS)
            .map(|t| {
                let n = entries
                    .iter()
                    .filter(|e| e.category.as_deref() == Some(*t))
                    .count();
                meta::ListRow {
                    id: format!("cat:{t}"),
                    title: (*t).to_owned(),
                    description: format!("{n} question{}", if n == 1 { "" } else { "s" }),
                }
            })
            .collect()
    } else {
        question_rows(in_menu_order(entries.iter()))
    };
    (!rows.is_empty()).then(|| list(MENU_BODY, "Topics", &rows, "menu"))
}

/// Entries as a menu shows them: by priority, then by question.
fn in_menu_order<'a>(
    entries: impl Iterator<Item = &'a FaqEntry>,
) -> impl Iterator<Item = &'a FaqEntry> {
    let mut v: Vec<&FaqEntry> = entries.collect();
    v.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.question.cmp(&b.question))
    });
    v.into_iter()
}

/// The list offered for an unclear question: the entries it is close to
/// (two or more), best first.
fn clarify(ctx: &TenantContext, msg: &InboundMessage, query: Option<&[f32]>) -> Option<Decision> {
    if !answers_text(msg) {
        return None;
    }
    let close: Vec<_> = ctx
        .retrieve(&msg.text, query, CLARIFY_ROWS)
        .into_iter()
        .filter(|m| m.score >= CLARIFY_FLOOR)
        .collect();
    if close.len() < 2 {
        return None;
    }
    let rows = question_rows(close.iter().map(|m| m.entry));
    Some(Decision {
        score: close.first().map(|m| m.score),
        ..list(CLARIFY_BODY, "Questions", &rows, "clarify")
    })
}

/// The list offered when the best entry found by words has rivals within
/// [`crate::matcher::TIE_BAND`] of the same priority and other answers.
fn tied(ctx: &TenantContext, text: &str, best: f64, entry: &FaqEntry) -> Option<Decision> {
    let mut rivals: Vec<&FaqEntry> = vec![entry];
    for m in ctx
        .index
        .ranked_above(text, best - crate::matcher::TIE_BAND)
    {
        if m.entry.priority == entry.priority && rivals.iter().all(|r| r.answer != m.entry.answer) {
            rivals.push(m.entry);
        }
    }
    if rivals.len() < 2 {
        return None;
    }
    let rows = question_rows(rivals.into_iter().take(CLARIFY_ROWS));
    Some(Decision {
        score: Some(best),
        ..list(CLARIFY_BODY, "Questions", &rows, "clarify")
    })
}

/// A list row per entry (its question as title, the whole question as
/// description when the title had to be cut).
fn question_rows<'a>(entries: impl Iterator<Item = &'a FaqEntry>) -> Vec<meta::ListRow> {
    entries
        .take(meta::limits::ROWS)
        .map(|e| {
            let cut = e.question.trim().chars().count() > meta::limits::ROW_TITLE;
            meta::ListRow {
                id: format!("faq:{}", e.id),
                title: e.question.clone(),
                description: if cut {
                    e.question.clone()
                } else {
                    String::new()
                },
            }
        })
        .collect()
}

/// A reply sent as a list of `rows` under `body`; its text (what the log
/// shows) lists the choices.
fn list(body: &str, section: &str, rows: &[meta::ListRow], reason: &'static str) -> Decision {
    let mut text = body.to_owned();
    for r in rows {
        text.push_str("\n• ");
        text.push_str(&r.title);
    }
    Decision {
        interactive: Some(meta::list_interactive(body, "Choose", section, rows)),
        ..Decision::reply(text, reason)
    }
}

/// What the customer is told out of hours when the tenant has no words
/// of its own.
pub const OUT_OF_HOURS_REPLY: &str =
    "Thanks for your message! We're closed right now; we'll get back to you as soon as we open.";

/// The answer to STOP.
pub const OPTED_OUT_REPLY: &str = "You won't get any more messages from us unless you write to us first. Reply START at any time to hear from us again.";

/// The answer to START.
pub const OPTED_IN_REPLY: &str =
    "Welcome back! You'll hear from us again. Reply STOP at any time to stop our messages.";

/// The answer to "cancel" (or "menu") in the middle of a flow.
pub const FLOW_CANCELLED_REPLY: &str = "No problem, I've cancelled that. How else can I help you?";

/// When the customer wrote `msg`.
pub fn written_at(msg: &InboundMessage) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(occurred_at_ms(msg)).unwrap_or_else(chrono::Utc::now)
}

/// The debounce time for `msg`: the tenant's, for text a customer writes
/// (taps on buttons and lists, media and the point of contact teaching
/// are answered at once).
pub fn debounce_ms(ctx: &TenantContext, msg: &InboundMessage) -> i32 {
    let kind = MessageKind::try_from(msg.kind).unwrap_or(MessageKind::Other);
    if kind != MessageKind::Text || crate::teach::from_contact(ctx, msg) {
        return 0;
    }
    ctx.settings.debounce_ms.max(0)
}

/// Whether `msg` is STOP or START (or the tenant's own words for them).
pub fn opt_word(ctx: &TenantContext, msg: &InboundMessage) -> Option<Opt> {
    let kind = MessageKind::try_from(msg.kind).unwrap_or(MessageKind::Other);
    if kind != MessageKind::Text {
        return None;
    }
    conversation::opt_word(
        &msg.text,
        &ctx.settings.opt_out_keywords,
        &ctx.settings.opt_in_keywords,
    )
}

/// The answer to STOP or START: its confirmation, when the bot answers at
/// all (the choice is recorded either way).
pub fn opt_decision(ctx: &TenantContext, opt: Opt) -> Decision {
    let (text, reason) = match opt {
        Opt::Out => (OPTED_OUT_REPLY, "opt_out"),
        Opt::In => (OPTED_IN_REPLY, "opt_in"),
    };
    if !ctx.tenant.is_active || !ctx.settings.is_bot_enabled {
        return Decision::silent(reason);
    }
    Decision::reply(text.to_owned(), reason)
}

/// Whether `text` asks to leave the flow the conversation is in.
pub fn leaves_flow(text: &str) -> bool {
    matches!(
        conversation::command_word(text).as_str(),
        "cancel" | "menu" | "exit" | "quit" | "ghairi"
    )
}

/// Reasons whose reply is the bot's answer (what opening hours, the
/// greeting and the out-of-hours note apply to).
fn is_answer(reason: &str) -> bool {
    matches!(
        reason,
        "faq_match" | "fallback" | "media" | "ai" | "ai_failed_fallback"
    )
}

/// Out of hours, when the tenant does not want the bot answering then: the
/// out-of-hours reply instead of the answer (before the AI is asked).
pub fn out_of_hours(ctx: &TenantContext, d: Decision) -> Decision {
    if ctx.settings.answer_out_of_hours || d.reply.is_none() || !is_answer(d.reason) {
        return d;
    }
    Decision {
        error: d.error,
        ..Decision::reply(out_of_hours_text(ctx).to_owned(), "out_of_hours")
    }
}

/// Out of hours, when the bot still answers: the answer with the
/// out-of-hours note after it.
pub fn note_out_of_hours(ctx: &TenantContext, mut d: Decision) -> Decision {
    if !ctx.settings.answer_out_of_hours || !is_answer(d.reason) {
        return d;
    }
    let note = out_of_hours_text(ctx).to_owned();
    if let Some(r) = &mut d.reply {
        r.push_str("\n\n");
        r.push_str(&note);
    }
    amend_interactive(&mut d, |body| format!("{body}\n\n{note}"));
    d
}

fn out_of_hours_text(ctx: &TenantContext) -> &str {
    ctx.settings
        .out_of_hours_reply
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(OUT_OF_HOURS_REPLY)
}

/// The first answer of a new conversation, with the tenant's greeting
/// before it.
pub fn greet(ctx: &TenantContext, mut d: Decision) -> Decision {
    let Some(greeting) = ctx
        .settings
        .greeting_message
        .as_deref()
        .map(str::trim)
        .filter(|g| !g.is_empty())
    else {
        return d;
    };
    if !(is_answer(d.reason) || matches!(d.reason, "out_of_hours" | "handoff" | "menu" | "clarify"))
    {
        return d;
    }
    if let Some(r) = &mut d.reply {
        *r = format!("{greeting}\n\n{r}");
        d.greeted = true;
    }
    if d.greeted {
        amend_interactive(&mut d, |body| format!("{greeting}\n\n{body}"));
    }
    d
}

/// Changes the body of the reply's list or buttons the way its text was
/// changed; a buttons message whose body grows past Meta's limit goes as
/// plain text.
fn amend_interactive(d: &mut Decision, f: impl Fn(&str) -> String) {
    let Some(i) = &mut d.interactive else {
        return;
    };
    let body = f(i["body"]["text"].as_str().unwrap_or_default());
    let max = if i["type"] == "button" {
        meta::limits::BUTTONS_BODY
    } else {
        meta::limits::LIST_BODY
    };
    if body.chars().count() > max {
        d.interactive = None;
    } else {
        i["body"]["text"] = serde_json::Value::String(body);
    }
}

/// What the limit decision makes of `d`: unchanged under the limits, the
/// window's one notice just past them, silence after (the AI's error, if
/// any, is kept for the log).
pub fn apply_limit(ctx: &TenantContext, d: Decision, limit: LimitDecision) -> Decision {
    match limit {
        LimitDecision::Allow => d,
        LimitDecision::Notice => {
            let contact = ctx
                .settings
                .escalation_phone
                .as_deref()
                .or(Some(ctx.tenant.client_phone.as_str()));
            Decision {
                error: d.error,
                ..Decision::reply(limits::notice_text(contact), "limit_notice")
            }
        }
        LimitDecision::Silent => Decision {
            error: d.error,
            ..Decision::silent("limit_reached")
        },
    }
}

/// Metadata of the reply's log row: how it was chosen, and the AI's usage.
fn reply_metadata(ctx: &TenantContext, d: &Decision) -> String {
    let mut m = serde_json::json!({"reason": d.reason, "match_score": d.score});
    if d.greeted {
        m["greeted"] = serde_json::json!(true);
    }
    if let Some(kind) = d.interactive.as_ref().and_then(|i| i["type"].as_str()) {
        m["interactive"] = serde_json::json!(kind);
    }
    if let Some(tier) = d.tier {
        m["match_tier"] = serde_json::json!(tier.name());
    }
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

/// When the customer wrote: Meta's timestamp (whole seconds), refined
/// with the millisecond the platform received it when that fell within the
/// same second, so a conversation's rows keep their order even when the
/// customer writes again in the second of the bot's reply.
fn occurred_at_ms(msg: &InboundMessage) -> i64 {
    if msg.sent_at > 0 {
        let sent = msg.sent_at * 1000;
        sent + (msg.received_at_ms - sent).clamp(0, 999)
    } else {
        msg.received_at_ms
    }
}

/// The incoming message's log row, when the tenant logs conversations.
pub fn log_event(
    ctx: &TenantContext,
    msg: &InboundMessage,
    d: &Decision,
    trace: TraceContext,
) -> Option<LogEvent> {
    if !ctx.settings.log_conversations {
        return None;
    }
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
    if let Some(tier) = d.tier {
        metadata["match_tier"] = serde_json::json!(tier.name());
    }
    Some(LogEvent {
        tenant_id: msg.tenant_id.clone(),
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
        occurred_at_ms: occurred_at_ms(msg),
        raw_json: msg.raw_json.clone(),
        trace: Some(trace),
    })
}

/// The reply to send, if the decision has one. Its id derives from the
/// inbound wamid, so it is sent at most once however often the message
/// is redelivered.
pub fn reply_event(
    ctx: &TenantContext,
    msg: &InboundMessage,
    d: &Decision,
    now_ms: i64,
    trace: TraceContext,
) -> Option<OutboundMessage> {
    let text = d.reply.as_ref()?;
    Some(OutboundMessage {
        outbound_id: outbound_id(&msg.wamid),
        tenant_id: msg.tenant_id.clone(),
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
        created_at_ms: now_ms,
        inbound_received_at_ms: msg.received_at_ms,
        trace: Some(trace),
        metadata_json: reply_metadata(ctx, d),
        mark_read: d.mark_read,
        interactive_json: d
            .interactive
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// A read receipt of `msg` for the sender to post (protocols.md 2.5),
/// with the typing indicator when `typing`.
pub fn receipt_event(
    ctx: &TenantContext,
    msg: &InboundMessage,
    typing: bool,
    now_ms: i64,
) -> OutboundMessage {
    OutboundMessage {
        outbound_id: format!("read:{}", msg.wamid),
        tenant_id: ctx.tenant.id.to_string(),
        in_reply_to: msg.wamid.clone(),
        to: msg.from.clone(),
        to_user_id: msg.from_user_id.clone(),
        created_at_ms: now_ms,
        inbound_received_at_ms: msg.received_at_ms,
        kind: OutboundKind::ReadReceipt as i32,
        typing,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::{FaqEntry, FaqIndex};
    use alphadome_core::tenant::ControlSettings;

    fn ctx(settings: ControlSettings) -> TenantContext {
        TenantContext {
            tenant: crate::context::fixtures::tenant(),
            settings,
            templates: Vec::new(),
            examples: Vec::new(),
            index: FaqIndex::build([FaqEntry {
                id: Uuid::new_v4(),
                question: "What are your opening hours?".into(),
                answer: "9 to 5".into(),
                category: None,
                priority: 0,
                confidence: 1.0,
            }]),
            semantic: None,
            hours: None,
            whatsapp_templates: Vec::new(),
        }
    }

    fn shop() -> TenantContext {
        let mut c = ctx(ControlSettings::default());
        let faq = |q: &str, a: &str, cat: &str| FaqEntry {
            id: Uuid::new_v4(),
            question: q.into(),
            answer: a.into(),
            category: Some(cat.into()),
            priority: 0,
            confidence: 1.0,
        };
        c.index = FaqIndex::build([
            faq("What are your opening hours?", "9 to 5", "Hours"),
            faq("Are you open on public holidays?", "10 to 4", "Hours"),
            faq(
                "Do you deliver to Mombasa by courier?",
                "Yes, in 2 days",
                "Delivery",
            ),
            faq(
                "Do you deliver to Kisumu by courier?",
                "Yes, in 1 to 3 days",
                "Delivery",
            ),
        ]);
        c
    }

    #[test]
    fn the_menu_lists_topics_then_questions_then_answers_with_buttons() {
        let c = shop();
        let d = decide(&c, &text("Menu", MessageKind::Text), "fb", None);
        assert_eq!(d.reason, "menu");
        let list = d.interactive.clone().unwrap();
        assert_eq!(list["type"], "list");
        let rows = list["action"]["sections"][0]["rows"].as_array().unwrap();
        assert_eq!(rows[0]["id"], "cat:Delivery");
        assert_eq!(rows[1]["id"], "cat:Hours");
        assert_eq!(rows[0]["description"], "2 questions");
        assert!(d.reply.unwrap().contains("• Delivery"));
        let mut pick = text("Delivery", MessageKind::InteractiveListReply);
        pick.reply_id = "cat:Delivery".into();
        let d = decide(&c, &pick, "fb", None);
        let rows = d.interactive.unwrap()["action"]["sections"][0]["rows"].clone();
        assert_eq!(rows.as_array().unwrap().len(), 2);
        // Titles cut to Meta's 24 characters, the whole question below.
        assert_eq!(rows[1]["title"], "Do you deliver to Momba…");
        assert_eq!(
            rows[1]["description"],
            "Do you deliver to Mombasa by courier?"
        );
        let mut pick = text(
            "Do you deliver to Momba…",
            MessageKind::InteractiveListReply,
        );
        pick.reply_id = rows[1]["id"].as_str().unwrap().into();
        let d = decide(&c, &pick, "fb", None);
        assert_eq!(d.reply.as_deref(), Some("Yes, in 2 days"));
        let buttons = d.interactive.unwrap();
        assert_eq!(buttons["type"], "button");
        assert_eq!(buttons["action"]["buttons"][0]["reply"]["id"], MENU_ID);
    }

    #[test]
    fn an_unclear_question_near_several_entries_offers_them() {
        let c = shop();
        let d = decide(&c, &text("courier delivery", MessageKind::Text), "fb", None);
        assert_eq!(d.reason, "clarify", "{d:?}");
        let rows = d.interactive.unwrap()["action"]["sections"][0]["rows"].clone();
        assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
        // Words near both, neither enough to answer: the same choice
        // (unless the tenant's AI answers such questions).
        let d = decide(&c, &text("courier", MessageKind::Text), "fb", None);
        assert_eq!(d.reason, "clarify", "{d:?}");
        let mut ai = shop();
        ai.settings.enable_ai_responses = true;
        let d = decide(&ai, &text("courier", MessageKind::Text), "fb", None);
        assert_eq!(d.reason, "fallback");
        // A clear question is answered.
        let d = decide(
            &c,
            &text("deliver to Kisumu by courier?", MessageKind::Text),
            "fb",
            None,
        );
        assert_eq!(d.reply.as_deref(), Some("Yes, in 1 to 3 days"));
        // Nothing near: the fallback.
        let d = decide(&shop(), &text("xyzzy plugh", MessageKind::Text), "fb", None);
        assert_eq!(d.reason, "fallback");
    }

    fn text(t: &str, kind: MessageKind) -> InboundMessage {
        InboundMessage {
            tenant_id: Uuid::new_v4().to_string(),
            wamid: "wamid.1".into(),
            from: "254711000111".into(),
            kind: kind as i32,
            text: t.into(),
            sent_at: 1_700_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn toggles_kinds_faq_and_fallback() {
        let c = ctx(ControlSettings::default());
        let d = decide(&c, &text("opening hours?", MessageKind::Text), "fb", None);
        assert_eq!(
            (d.reply.as_deref(), d.reason),
            (Some("9 to 5"), "faq_match")
        );
        let d = decide(
            &c,
            &text("do you sell drums", MessageKind::Text),
            "fb",
            None,
        );
        assert_eq!((d.reply.as_deref(), d.reason), (Some("fb"), "fallback"));
        assert!(d.is_fallback());
        let d = decide(&c, &text("", MessageKind::Image), "fb", None);
        assert_eq!((d.reply.as_deref(), d.reason), (Some(MEDIA_REPLY), "media"));
        let d = decide(&c, &text("opening hours", MessageKind::Image), "fb", None);
        assert_eq!(d.reason, "faq_match", "a caption is answered");
        assert_eq!(
            decide(&c, &text("👍", MessageKind::Reaction), "fb", None).reply,
            None
        );
        let off = ctx(ControlSettings {
            enable_auto_reply: false,
            ..ControlSettings::default()
        });
        assert_eq!(
            decide(&off, &text("opening hours", MessageKind::Text), "fb", None).reason,
            "auto_reply_disabled"
        );
    }

    #[test]
    fn limits_turn_replies_into_one_notice_then_silence() {
        let c = ctx(ControlSettings::default());
        let d = Decision {
            error: Some("ai down".into()),
            ..Decision::reply("answer".into(), "fallback")
        };
        let n = apply_limit(&c, d.clone(), LimitDecision::Notice);
        assert_eq!(n.reason, "limit_notice");
        assert!(n.reply.unwrap().contains("+254700000001"));
        assert_eq!(n.error.as_deref(), Some("ai down"));
        let s = apply_limit(&c, d.clone(), LimitDecision::Silent);
        assert_eq!((s.reply, s.reason), (None, "limit_reached"));
        assert_eq!(apply_limit(&c, d.clone(), LimitDecision::Allow), d);
    }

    #[test]
    fn events_carry_the_decision() {
        let c = ctx(ControlSettings::default());
        let msg = text("opening hours", MessageKind::Text);
        let d = decide(&c, &msg, "fb", None);
        let log = log_event(&c, &msg, &d, TraceContext::default()).unwrap();
        assert_eq!(log.dedup_key, "in:wamid.1");
        assert_eq!(log.occurred_at_ms, 1_700_000_000_000);
        let within = InboundMessage {
            received_at_ms: 1_700_000_000_250,
            ..msg.clone()
        };
        assert_eq!(occurred_at_ms(&within), 1_700_000_000_250);
        let late = InboundMessage {
            received_at_ms: 1_700_000_090_000,
            ..msg.clone()
        };
        assert_eq!(occurred_at_ms(&late), 1_700_000_000_999);
        assert!(log.metadata_json.contains("faq_match"));
        let out = reply_event(&c, &msg, &d, 5, TraceContext::default()).unwrap();
        assert_eq!(out.outbound_id, "reply:wamid.1");
        assert_eq!(
            (out.to.as_str(), out.text.as_str()),
            ("254711000111", "9 to 5")
        );
        assert!(
            reply_event(&c, &msg, &Decision::silent("x"), 5, TraceContext::default()).is_none()
        );
        let quiet = ctx(ControlSettings {
            log_conversations: false,
            ..ControlSettings::default()
        });
        assert!(log_event(&quiet, &msg, &d, TraceContext::default()).is_none());
    }
}
