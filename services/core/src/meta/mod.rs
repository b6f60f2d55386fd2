//! Meta's WhatsApp Cloud API formats: the webhook payload (parsed from the
//! raw, signature-verified bytes), the signature itself, the send request
//! and the send API's errors, classified by code (protocols.md 1 and 2).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::events::v1::MessageKind;

mod untrusted;

pub use untrusted::{candidate_ids, repair_json, CandidateIds};

/// Verifies `X-Hub-Signature-256` (`sha256=<hex>`) over the raw body in
/// constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// `sha256=<hex>` signature of `body`, as Meta sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a webhook body was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("field `object` is {0:?}, expected \"whatsapp_business_account\"")]
    WrongObject(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    object: String,
    #[serde(default, borrow)]
    entry: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    /// The WhatsApp Business Account id.
    #[serde(default)]
    id: Option<IdValue>,
    #[serde(default, borrow)]
    changes: Vec<Change<'a>>,
}

/// An id Meta sends as a string (tolerating a number).
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    S(String),
    N(u64),
}

impl IdValue {
    fn into_string(self) -> String {
        match self {
            IdValue::S(s) => s,
            IdValue::N(n) => n.to_string(),
        }
    }
}

/// `value.event`, when a change has one.
#[derive(Deserialize)]
struct EventOnly {
    #[serde(default)]
    event: Option<String>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(default)]
    field: String,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Value<'a> {
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default, borrow)]
    messages: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    statuses: Vec<&'a RawValue>,
    #[serde(default)]
    errors: Vec<ErrorObject>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: String,
}

#[derive(Deserialize)]
struct Contact {
    wa_id: Option<String>,
    user_id: Option<String>,
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    name: Option<String>,
}

/// `{code, title, message, error_data{details}}` as in statuses and errors.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ErrorObject {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub message: String,
    pub error_data: Option<ErrorData>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ErrorData {
    #[serde(default)]
    pub details: String,
}

#[derive(Deserialize)]
struct RawMessage {
    id: String,
    from: Option<String>,
    from_user_id: Option<String>,
    #[serde(default)]
    timestamp: Timestamp,
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<TextBody>,
    interactive: Option<Interactive>,
    button: Option<ButtonTap>,
    image: Option<Media>,
    video: Option<Media>,
    document: Option<Media>,
    audio: Option<Media>,
    sticker: Option<Media>,
    context: Option<Context>,
}

#[derive(Deserialize)]
struct TextBody {
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(rename = "type", default)]
    kind: String,
    button_reply: Option<Reply>,
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: String,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
struct ButtonTap {
    #[serde(default)]
    payload: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct Media {
    caption: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    id: Option<String>,
}

/// Meta sends timestamps as strings of Unix seconds; tolerate numbers too.
#[derive(Default)]
struct Timestamp(i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(i64),
        }
        Ok(match Either::deserialize(d)? {
            Either::S(s) => Timestamp(s.trim().parse().unwrap_or(0)),
            Either::N(n) => Timestamp(n),
        })
    }
}

#[derive(Deserialize)]
struct RawStatus {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Timestamp,
    #[serde(default)]
    recipient_id: String,
    #[serde(default)]
    errors: Vec<ErrorObject>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
}

/// An inbound customer message, as far as the platform cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    pub phone_number_id: String,
    pub wamid: String,
    pub from: String,
    pub from_user_id: String,
    pub profile_name: String,
    pub kind: MessageKind,
    pub type_name: String,
    pub text: String,
    pub reply_id: String,
    pub context_wamid: String,
    pub sent_at: i64,
    pub raw_json: String,
}

/// A delivery status of a message the platform sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedStatus {
    pub phone_number_id: String,
    pub wamid: String,
    pub status: String,
    pub recipient_id: String,
    pub timestamp: i64,
    pub error_code: i64,
    pub error_title: String,
    pub error_details: String,
    /// `biz_opaque_callback_data`: what the sender set on the message.
    pub callback_data: String,
    pub raw_json: String,
}

/// A change to a WhatsApp Business Account that is not about messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountChange {
    /// `entry[].id` (empty when the entry names none).
    pub business_account_id: String,
    /// The webhook field (`message_template_status_update`, ...).
    pub field: String,
    /// `value.event`, when the change has one.
    pub event: String,
    /// The change's `value`, as sent (`null` when it had none).
    pub value_json: String,
}

/// Everything one webhook body holds.
#[derive(Debug, Default)]
pub struct ParsedWebhook {
    pub messages: Vec<ParsedMessage>,
    pub statuses: Vec<ParsedStatus>,
    /// Out-of-band errors (`value.errors[]`): phone number id and error.
    pub errors: Vec<(String, ErrorObject)>,
    /// Items that could not be understood, with the reason (logged, dropped).
    pub rejected: Vec<String>,
    /// Changes of fields other than `messages` (template status, quality,
    /// account updates, ...).
    pub account_changes: Vec<AccountChange>,
    /// Every WhatsApp Business Account id the body's entries name.
    pub business_account_ids: Vec<String>,
}

/// Parses a (signature-verified) webhook body. A body that is not a JSON
/// envelope is refused whole; a malformed item inside a valid envelope is
/// reported in `rejected` and the rest still parsed.
pub fn parse_webhook(body: &[u8]) -> Result<ParsedWebhook, WebhookError> {
    let env: Envelope<'_> = serde_json::from_slice(body)?;
    if env.object != "whatsapp_business_account" {
        return Err(WebhookError::WrongObject(env.object));
    }
    let mut out = ParsedWebhook::default();
    for entry in env.entry {
        let waba = entry.id.map(IdValue::into_string).unwrap_or_default();
        if !waba.is_empty() && !out.business_account_ids.contains(&waba) {
            out.business_account_ids.push(waba.clone());
        }
        for change in entry.changes {
            if change.field != "messages" {
                let value_json = change.value.map_or("null", |v| v.get()).to_owned();
                let event = serde_json::from_str::<EventOnly>(&value_json)
                    .ok()
                    .and_then(|e| e.event)
                    .unwrap_or_default();
                out.account_changes.push(AccountChange {
                    business_account_id: waba.clone(),
                    field: change.field,
                    event,
                    value_json,
                });
                continue;
            }
            let Some(raw) = change.value else {
                out.rejected.push("change without value".into());
                continue;
            };
            let value: Value<'_> = match serde_json::from_str(raw.get()) {
                Ok(v) => v,
                Err(e) => {
                    out.rejected.push(format!("change value: {e}"));
                    continue;
                }
            };
            let Some(meta) = value.metadata else {
                out.rejected
                    .push("change value without metadata.phone_number_id".into());
                continue;
            };
            let pnid = meta.phone_number_id;
            if pnid.trim().is_empty() {
                out.rejected
                    .push("change value with an empty metadata.phone_number_id".into());
                continue;
            }
            for m in value.messages {
                match parse_message(&pnid, &value.contacts, m) {
                    Ok(msg) => out.messages.push(msg),
                    Err(e) => out.rejected.push(format!("message: {e}")),
                }
            }
            for s in value.statuses {
                match serde_json::from_str::<RawStatus>(s.get()) {
                    Ok(st) if st.id.trim().is_empty() => {
                        out.rejected.push("status: empty status id".into())
                    }
                    Ok(st) => {
                        let err = st.errors.into_iter().next().unwrap_or_default();
                        out.statuses.push(ParsedStatus {
                            phone_number_id: pnid.clone(),
                            wamid: st.id,
                            status: st.status,
                            recipient_id: st.recipient_id,
                            timestamp: st.timestamp.0,
                            error_code: err.code,
                            error_title: err.title,
                            error_details: err.error_data.map(|d| d.details).unwrap_or_default(),
                            callback_data: st.biz_opaque_callback_data.unwrap_or_default(),
                            raw_json: s.get().to_owned(),
                        })
                    }
                    Err(e) => out.rejected.push(format!("status: {e}")),
                }
            }
            for e in value.errors {
                out.errors.push((pnid.clone(), e));
            }
        }
    }
    Ok(out)
}

fn parse_message(
    pnid: &str,
    contacts: &[Contact],
    raw: &RawValue,
) -> Result<ParsedMessage, serde_json::Error> {
    let m: RawMessage = serde_json::from_str(raw.get())?;
    let from = m.from.clone().unwrap_or_default();
    let contact = contacts
        .iter()
        .find(|c| c.wa_id.as_deref() == Some(from.as_str()) && !from.is_empty())
        .or(contacts.first());
    let profile_name = contact
        .and_then(|c| c.profile.as_ref())
        .and_then(|p| p.name.clone())
        .unwrap_or_default();
    let from_user_id = m
        .from_user_id
        .clone()
        .or_else(|| contact.and_then(|c| c.user_id.clone()))
        .unwrap_or_default();
    let (kind, text, reply_id) = content(&m);
    if m.id.trim().is_empty() {
        return Err(serde::de::Error::custom("empty message id"));
    }
    if from.is_empty() && from_user_id.is_empty() {
        return Err(serde::de::Error::custom(
            "message has neither `from` nor `from_user_id`",
        ));
    }
    Ok(ParsedMessage {
        phone_number_id: pnid.to_owned(),
        wamid: m.id,
        from,
        from_user_id,
        profile_name,
        kind,
        type_name: m.kind,
        text,
        reply_id,
        context_wamid: m.context.and_then(|c| c.id).unwrap_or_default(),
        sent_at: m.timestamp.0,
        raw_json: raw.get().to_owned(),
    })
}

/// What a message says: its kind, its text (the body, the tapped button's
/// title, a media caption) and the id of the reply or button tapped.
fn content(m: &RawMessage) -> (MessageKind, String, String) {
    let caption = |media: &Option<Media>| {
        media
            .as_ref()
            .and_then(|x| x.caption.clone())
            .unwrap_or_default()
    };
    let tapped = |r: &Option<Reply>| {
        r.as_ref()
            .map(|r| (r.title.clone(), r.id.clone()))
            .unwrap_or_default()
    };
    let none = String::new;
    match m.kind.as_str() {
        "text" => (
            MessageKind::Text,
            m.text.as_ref().map(|t| t.body.clone()).unwrap_or_default(),
            none(),
        ),
        "interactive" => match &m.interactive {
            Some(i) if i.kind == "button_reply" => {
                let (title, id) = tapped(&i.button_reply);
                (MessageKind::InteractiveButtonReply, title, id)
            }
            Some(i) if i.kind == "list_reply" => {
                let (title, id) = tapped(&i.list_reply);
                (MessageKind::InteractiveListReply, title, id)
            }
            _ => (MessageKind::Other, none(), none()),
        },
        "button" => match &m.button {
            Some(b) => (MessageKind::Button, b.text.clone(), b.payload.clone()),
            None => (MessageKind::Button, none(), none()),
        },
        "image" => (MessageKind::Image, caption(&m.image), none()),
        "video" => (MessageKind::Video, caption(&m.video), none()),
        "document" => (MessageKind::Document, caption(&m.document), none()),
        "audio" => (MessageKind::Audio, caption(&m.audio), none()),
        "sticker" => (MessageKind::Sticker, caption(&m.sticker), none()),
        "location" => (MessageKind::Location, none(), none()),
        "reaction" => (MessageKind::Reaction, none(), none()),
        "contacts" => (MessageKind::Contacts, none(), none()),
        "order" => (MessageKind::Order, none(), none()),
        "system" => (MessageKind::System, none(), none()),
        "unsupported" => (MessageKind::Unsupported, none(), none()),
        _ => (MessageKind::Other, none(), none()),
    }
}

/// Rank of a delivery status: a status never replaces one of higher rank.
/// `failed` is terminal.
pub fn status_rank(status: &str) -> i32 {
    match status {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "played" => 4,
        "failed" => 5,
        _ => 0,
    }
}

/// The send API's error body (`{"error": {...}}`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GraphError {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
    pub error_data: Option<ErrorData>,
    pub fbtrace_id: Option<String>,
}

#[derive(Deserialize)]
struct GraphErrorEnvelope {
    error: GraphError,
}

/// What to do about a failed send, by Meta's error code (protocols.md 2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// Throughput, generic, server errors and timeouts: back off and retry.
    Retry,
    /// 131056: pair rate limit to this recipient; back off 4^n seconds.
    PairRate,
    /// 190 (or 0): the tenant's token is invalid; hold its sends and alert.
    TokenInvalid,
    /// The request or recipient can never succeed: dead-letter it.
    Permanent,
}

/// Classifies a non-2xx send response.
pub fn classify_send_error(http_status: u16, body: &[u8]) -> (SendFailure, GraphError) {
    let err = serde_json::from_slice::<GraphErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let class = match err.code {
        190 | 0 if http_status == 401 || err.code == 190 => SendFailure::TokenInvalid,
        4 | 80007 | 130429 | 131000 | 131016 | 131057 | 133016 => SendFailure::Retry,
        131056 => SendFailure::PairRate,
        0 if http_status == 429 || http_status >= 500 || http_status == 408 => SendFailure::Retry,
        0 => SendFailure::Permanent,
        _ if err.code != 0 => SendFailure::Permanent,
        _ => SendFailure::Retry,
    };
    (class, err)
}

/// Extracts the wamid from a successful send response.
pub fn sent_wamid(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Ok {
        messages: Vec<Id>,
    }
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Ok>(body)
        .ok()?
        .messages
        .into_iter()
        .next()
        .map(|m| m.id)
}

/// Builds the body of a contextual text reply (protocols.md 2.2, 2.3).
pub fn text_reply_body(
    to: &str,
    to_user_id: &str,
    text: &str,
    in_reply_to: &str,
    callback: &str,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "type": "text",
        "text": { "body": text, "preview_url": false },
        "biz_opaque_callback_data": callback,
    });
    address(&mut body, to, to_user_id);
    if !in_reply_to.is_empty() {
        body["context"] = serde_json::json!({ "message_id": in_reply_to });
    }
    body
}

/// Meta's refusal of a free-form message outside the customer's 24-hour
/// window (protocols.md 2.7, 2.8): only a template may go.
pub const WINDOW_CLOSED: i64 = 131047;

/// Whether Meta's error `code` says the template or its parameters are
/// wrong (132000-132016: not retryable as it is).
pub fn is_template_error(code: i64) -> bool {
    (132000..=132016).contains(&code)
}

/// Builds the body of a template message (protocols.md 2.4a): the body's
/// text parameters in order.
pub fn template_body(
    to: &str,
    to_user_id: &str,
    template: &crate::events::v1::TemplateMessage,
    callback: &str,
) -> serde_json::Value {
    let mut t = serde_json::json!({
        "name": template.name,
        "language": { "code": template.language },
    });
    if !template.parameters.is_empty() {
        let parameters: Vec<serde_json::Value> = template
            .parameters
            .iter()
            .map(|p| serde_json::json!({ "type": "text", "text": p }))
            .collect();
        t["components"] = serde_json::json!([{ "type": "body", "parameters": parameters }]);
    }
    let mut body = serde_json::json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "type": "template",
        "template": t,
        "biz_opaque_callback_data": callback,
    });
    address(&mut body, to, to_user_id);
    body
}

/// Builds the body marking the customer's message `wamid` read, with the
/// typing indicator when `typing` (protocols.md 2.5).
pub fn read_receipt_body(wamid: &str, typing: bool) -> serde_json::Value {
    let mut body = serde_json::json!({
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": wamid,
    });
    if typing {
        body["typing_indicator"] = serde_json::json!({ "type": "text" });
    }
    body
}

/// Addresses `body` to the customer's phone (with its `+`) and, when given,
/// their business-scoped user id.
fn address(body: &mut serde_json::Value, to: &str, to_user_id: &str) {
    if !to.is_empty() {
        body["to"] = serde_json::Value::String(format!("+{}", to.trim_start_matches('+')));
    }
    if !to_user_id.is_empty() {
        body["recipient"] = serde_json::Value::String(to_user_id.to_owned());
    }
}

/// Meta's limits on interactive messages (protocols.md 2.4).
pub mod limits {
    /// Reply buttons per message.
    pub const BUTTONS: usize = 3;
    /// A reply button's title.
    pub const BUTTON_TITLE: usize = 20;
    /// The body of a reply-buttons message.
    pub const BUTTONS_BODY: usize = 1024;
    /// Rows of a list message, in all its sections.
    pub const ROWS: usize = 10;
    /// A row's title.
    pub const ROW_TITLE: usize = 24;
    /// A row's description.
    pub const ROW_DESCRIPTION: usize = 72;
    /// A row's id.
    pub const ROW_ID: usize = 200;
    /// The label of the button that opens a list, and a section's title.
    pub const LIST_BUTTON: usize = 20;
    pub const SECTION_TITLE: usize = 24;
    /// The body of a list message.
    pub const LIST_BODY: usize = 4096;
}

/// `s` in at most `max` characters (cut with an ellipsis).
pub fn fit(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out = out.trim_end().to_owned();
    out.push('…');
    out
}

/// One row of a list message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    pub description: String,
}

/// The `interactive` object of a list message with one section: at most
/// ten rows, every text cut to Meta's limits.
pub fn list_interactive(
    body: &str,
    button: &str,
    section: &str,
    rows: &[ListRow],
) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .take(limits::ROWS)
        .map(|r| {
            let mut row = serde_json::json!({
                "id": r.id.chars().take(limits::ROW_ID).collect::<String>(),
                "title": fit(&r.title, limits::ROW_TITLE),
            });
            if !r.description.trim().is_empty() {
                row["description"] =
                    serde_json::Value::String(fit(&r.description, limits::ROW_DESCRIPTION));
            }
            row
        })
        .collect();
    serde_json::json!({
        "type": "list",
        "body": { "text": fit(body, limits::LIST_BODY) },
        "action": {
            "button": fit(button, limits::LIST_BUTTON),
            "sections": [{ "title": fit(section, limits::SECTION_TITLE), "rows": rows }],
        },
    })
}

/// The `interactive` object of a reply-buttons message: at most three
/// buttons (id, title), titles cut to Meta's limit; `None` when the body
/// is longer than a buttons message takes (the text then goes alone).
pub fn buttons_interactive(body: &str, buttons: &[(&str, &str)]) -> Option<serde_json::Value> {
    if buttons.is_empty() || body.trim().chars().count() > limits::BUTTONS_BODY {
        return None;
    }
    let buttons: Vec<serde_json::Value> = buttons
        .iter()
        .take(limits::BUTTONS)
        .map(|(id, title)| {
            serde_json::json!({"type": "reply", "reply": {"id": id, "title": fit(title, limits::BUTTON_TITLE)}})
        })
        .collect();
    Some(serde_json::json!({
        "type": "button",
        "body": { "text": body.trim() },
        "action": { "buttons": buttons },
    }))
}

/// Builds the body of an interactive message (`interactive`: a list or
/// buttons object), quoting `in_reply_to`.
pub fn interactive_body(
    to: &str,
    to_user_id: &str,
    interactive: &serde_json::Value,
    in_reply_to: &str,
    callback: &str,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "type": "interactive",
        "interactive": interactive,
        "biz_opaque_callback_data": callback,
    });
    address(&mut body, to, to_user_id);
    if !in_reply_to.is_empty() {
        body["context"] = serde_json::json!({ "message_id": in_reply_to });
    }
    body
}

/// Maximum characters of a WhatsApp text body.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Splits `text` into parts of at most `max` characters, at sentence
/// boundaries where possible, else at whitespace, else hard.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while rest.chars().count() > max {
        let byte_max = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let window = &rest[..byte_max];
        let cut = window
            .rmatch_indices(['.', '!', '?', '\n'])
            .map(|(i, s)| i + s.len())
            .find(|&i| i > byte_max / 2)
            .or_else(|| window.rfind(char::is_whitespace).filter(|&i| i > 0))
            .unwrap_or(byte_max);
        parts.push(rest[..cut].trim().to_owned());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{
 "messaging_product":"whatsapp",
 "metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
 "contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],
 "messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
   "timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}]}}]}]}"#;

    #[test]
    fn parses_text_message() {
        let p = parse_webhook(TEXT.as_bytes()).unwrap();
        assert_eq!(p.messages.len(), 1);
        let m = &p.messages[0];
        assert_eq!(m.phone_number_id, "106540352242922");
        assert_eq!(m.from, "16505551234");
        assert_eq!(m.profile_name, "Sheena Nelson");
        assert_eq!(m.kind, MessageKind::Text);
        assert_eq!(m.text, "Does it come in another color?");
        assert_eq!(m.sent_at, 1749416383);
    }

    #[test]
    fn parses_button_and_failed_status() {
        let b = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
 "metadata":{"display_phone_number":"1","phone_number_id":"P"},
 "messages":[{"context":{"from":"1","id":"wamid.biz"},"from":"16505551234","id":"wamid.new","timestamp":"1714510003","type":"interactive",
   "interactive":{"type":"button_reply","button_reply":{"id":"change-button","title":"Change"}}}],
 "statuses":[{"id":"wamid.out","status":"failed","timestamp":"1751142888","recipient_id":"16505551234",
   "errors":[{"code":131049,"title":"t","message":"m","error_data":{"details":"d"}}]},
  {"id":"wamid.out2","status":"sent","timestamp":"1751142889","recipient_id":"16505551234",
   "biz_opaque_callback_data":"reply:wamid.in#1"}]}}]}]}"#;
        let p = parse_webhook(b.as_bytes()).unwrap();
        assert_eq!(p.messages[0].kind, MessageKind::InteractiveButtonReply);
        assert_eq!(p.messages[0].text, "Change");
        assert_eq!(p.messages[0].reply_id, "change-button");
        assert_eq!(p.messages[0].context_wamid, "wamid.biz");
        assert_eq!(p.statuses[0].error_code, 131049);
        assert_eq!(p.statuses[0].error_details, "d");
        assert_eq!(p.statuses[0].callback_data, "");
        assert_eq!(p.statuses[1].callback_data, "reply:wamid.in#1");
    }

    #[test]
    fn bad_items_are_rejected_alone() {
        let b = r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{
 "metadata":{"phone_number_id":"P"},
 "messages":[{"from":"1"},{"from":"2","id":"wamid.ok","type":"text","text":{"body":"hi"}}]}}]}]}"#;
        let p = parse_webhook(b.as_bytes()).unwrap();
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.rejected.len(), 1);
        assert!(parse_webhook(b"[1,2]").is_err());
        assert!(matches!(
            parse_webhook(br#"{"object":"page"}"#),
            Err(WebhookError::WrongObject(_))
        ));
    }

    #[test]
    fn signature_round_trip() {
        let body = "{\"t\":\"\\u00e4\\u00f6\\u00e5\"}".as_bytes();
        let sig = sign(b"secret", body);
        assert!(verify_signature(b"secret", body, Some(&sig)));
        assert!(!verify_signature(b"other", body, Some(&sig)));
        assert!(!verify_signature(b"secret", b"{}", Some(&sig)));
        assert!(!verify_signature(b"secret", body, None));
        assert!(!verify_signature(b"secret", body, Some("sha256=zz")));
    }

    #[test]
    fn classifies_send_errors() {
        let e =
            |code: i64| format!(r#"{{"error":{{"message":"m","code":{code},"fbtrace_id":"x"}}}}"#);
        assert_eq!(
            classify_send_error(400, e(130429).as_bytes()).0,
            SendFailure::Retry
        );
        assert_eq!(
            classify_send_error(400, e(131056).as_bytes()).0,
            SendFailure::PairRate
        );
        assert_eq!(
            classify_send_error(401, e(190).as_bytes()).0,
            SendFailure::TokenInvalid
        );
        assert_eq!(
            classify_send_error(400, e(131026).as_bytes()).0,
            SendFailure::Permanent
        );
        assert_eq!(
            classify_send_error(400, e(100).as_bytes()).0,
            SendFailure::Permanent
        );
        assert_eq!(classify_send_error(500, b"oops").0, SendFailure::Retry);
        assert_eq!(classify_send_error(503, b"").0, SendFailure::Retry);
    }

    #[test]
    fn splits_at_sentences() {
        let text = "One sentence here. Another one follows! And a third?";
        let parts = split_text(text, 25);
        assert!(parts.iter().all(|p| p.chars().count() <= 25), "{parts:?}");
        assert_eq!(parts.join(" "), text);
        assert_eq!(split_text("short", 4096), vec!["short".to_owned()]);
        let long = "x".repeat(9000);
        let parts = split_text(&long, MAX_TEXT_CHARS);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_TEXT_CHARS));
    }
}
