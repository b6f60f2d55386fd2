//! The inbox: a tenant's message log (search, cursor pages) and its
//! conversations (one per customer: the last message, the handoff, Meta's
//! 24-hour window).

use std::collections::HashMap;
use std::sync::Arc;

use alphadome_core::conversation::{self as conversation_store, Window};
use alphadome_core::handoff::{self as handoff_store, Handoff};
use alphadome_core::tenant::{messaging, store::edits};
use alphadome_logger::store::{self as log_store, ConversationRow, MessageFilter};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Api, Caller, Problem, Scope};
use crate::people::Principal;

/// How long after a customer's last message a business may write freely
/// (Meta's customer service window).
pub const WINDOW: Duration = Duration::hours(24);

/// A logged message.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub user_phone: Option<String>,
    /// `incoming` or `outgoing`.
    pub direction: String,
    pub message_text: Option<String>,
    pub whatsapp_message_id: Option<String>,
    pub ai_processed: bool,
    pub ai_response: Option<String>,
    pub error_message: Option<String>,
    pub template_used: Option<String>,
    pub training_data_id: Option<Uuid>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// `sent`, `delivered`, `read`, `played` or `failed` (outgoing rows).
    pub delivery_status: Option<String>,
    pub delivery_status_at: Option<DateTime<Utc>>,
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Which messages: all filters optional.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageQuery {
    /// Only this customer's (phone, international digits).
    pub user: Option<String>,
    /// `incoming` or `outgoing`.
    pub direction: Option<String>,
    /// Text the message or reply contains (any case).
    pub q: Option<String>,
    /// From this time (RFC 3339) or day (YYYY-MM-DD).
    pub since: Option<String>,
    /// Before this time or day.
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Messages per page, 1 to 500 (default 50).
    pub limit: Option<String>,
}

/// `value` as a time: RFC 3339, or a day (its start, UTC).
fn parse_time(field: &str, value: &str) -> Result<DateTime<Utc>, Problem> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            Problem::invalid(
                field,
                format!("{value:?} is not a time (RFC 3339) or a day (YYYY-MM-DD)"),
            )
        })
}

/// The cursor after `m`: its time and id.
fn cursor_of(m: &Message) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        m.created_at.to_rfc3339(),
        m.id
    ))
}

fn parse_cursor(value: &str) -> Result<(DateTime<Utc>, Uuid), Problem> {
    let bad = || Problem::invalid("cursor", "is not a cursor this API gave");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = text.split_once('|').ok_or_else(bad)?;
    let t = DateTime::parse_from_rfc3339(t).map_err(|_| bad())?;
    Ok((
        t.with_timezone(&Utc),
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

impl MessageQuery {
    fn filter(&self) -> Result<MessageFilter<'_>, Problem> {
        let direction = match self.direction.as_deref() {
            None | Some("") => None,
            Some(d @ ("incoming" | "outgoing")) => Some(d),
            Some(d) => {
                return Err(Problem::invalid(
                    "direction",
                    format!("{d:?} is neither incoming nor outgoing"),
                ))
            }
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => 50,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=500).contains(l))
                .ok_or_else(|| Problem::invalid("limit", format!("{l:?} is not 1 to 500")))?,
        };
        let time = |field: &str, v: &Option<String>| {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| parse_time(field, v))
                .transpose()
        };
        Ok(MessageFilter {
            user: self.user.as_deref().filter(|u| !u.is_empty()),
            direction,
            text: self.q.as_deref().filter(|q| !q.is_empty()),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            before: self
                .cursor
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(parse_cursor)
                .transpose()?,
            limit,
        })
    }
}

/// One page of `f`'s messages, read in `conn`.
async fn page(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    f: &MessageFilter<'_>,
) -> Result<MessagePage, Problem> {
    let mut probe = f.clone();
    probe.limit = f.limit + 1;
    let mut messages: Vec<Message> = log_store::messages(conn, tenant, &probe).await?;
    let more = messages.len() as i64 > f.limit;
    messages.truncate(f.limit as usize);
    let next_cursor = more.then(|| messages.last().map(cursor_of)).flatten();
    Ok(MessagePage {
        messages,
        next_cursor,
    })
}

/// A tenant's messages, newest first: filter by customer, direction,
/// text and time; page with `cursor`.
#[utoipa::path(get, path = "/tenants/{tenant}/messages", tag = "conversations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"), MessageQuery),
    responses((status = 200, body = MessagePage), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn messages(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Result<Response, Problem> {
    Ok(Json(load_messages(&api, &caller.principal, &tenant, &q).await?).into_response())
}

/// A page of a tenant's messages, as `who` may see them.
pub async fn load_messages(
    api: &Api,
    who: &Principal,
    tenant: &str,
    q: &MessageQuery,
) -> Result<MessagePage, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let f = q.filter()?;
    let p = page(&mut tx, tenant, &f).await?;
    tx.commit().await?;
    Ok(p)
}

/// One customer's conversation as the inbox lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    #[serde(flatten)]
    pub last: ConversationRow,
    /// Whether the business may write to the customer now (their last
    /// message is less than 24 hours old).
    pub in_window: bool,
    /// When the window closes (or closed).
    pub window_closes_at: Option<DateTime<Utc>>,
    /// The handoff to a person, while the bot is paused for it.
    pub handoff: Option<Handoff>,
    /// When the customer wrote STOP (no proactive message reaches them
    /// until they write START).
    pub opted_out_at: Option<DateTime<Utc>>,
    /// The flow the conversation is in (`idle` when none).
    pub state: String,
}

fn conversation(
    row: ConversationRow,
    handoffs: &mut HashMap<String, Handoff>,
    sessions: &mut HashMap<String, Window>,
) -> Conversation {
    let session = sessions.remove(&row.user_phone);
    let last_in = row
        .last_incoming_at
        .max(session.as_ref().map(|s| s.last_inbound_at));
    let closes = last_in.map(|t| t + WINDOW);
    Conversation {
        in_window: closes.is_some_and(|c| c > Utc::now()),
        window_closes_at: closes,
        handoff: handoffs.remove(&row.user_phone),
        opted_out_at: session.as_ref().and_then(|s| s.opted_out_at),
        state: session
            .map(|s| s.state)
            .unwrap_or_else(|| conversation_store::IDLE.to_owned()),
        last: row,
    }
}

async fn sessions(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    rows: &[ConversationRow],
) -> Result<HashMap<String, Window>, Problem> {
    let customers: Vec<String> = rows.iter().map(|r| r.user_phone.clone()).collect();
    Ok(conversation_store::windows_in(conn, tenant, &customers)
        .await?
        .into_iter()
        .collect())
}

async fn handoffs(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
) -> Result<HashMap<String, Handoff>, Problem> {
    Ok(handoff_store::active_handoffs_in(conn, tenant)
        .await?
        .into_iter()
        .map(|h| (h.user_phone.clone(), h))
        .collect())
}

/// A tenant's conversations, the most recent first (at most 200).
#[utoipa::path(get, path = "/tenants/{tenant}/conversations", tag = "conversations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = [Conversation]), (status = 404, body = Problem)))]
pub async fn conversations(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_conversations(&api, &caller.principal, &tenant).await?).into_response())
}

/// A tenant's conversations, as `who` may see them.
pub async fn load_conversations(
    api: &Api,
    who: &Principal,
    tenant: &str,
) -> Result<Vec<Conversation>, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let rows = log_store::conversations(&mut tx, tenant, None, 200).await?;
    let mut h = handoffs(&mut tx, tenant).await?;
    let mut s = sessions(&mut tx, tenant, &rows).await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| conversation(r, &mut h, &mut s))
        .collect())
}

/// A conversation with its newest messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationDetail {
    pub conversation: Conversation,
    #[serde(flatten)]
    pub page: MessagePage,
}

/// One customer's conversation: its state and newest messages (page older
/// ones with `cursor`).
#[utoipa::path(get, path = "/tenants/{tenant}/conversations/{user}", tag = "conversations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("user" = String, Path, description = "The customer's phone (international digits)"),
           MessageQuery),
    responses((status = 200, body = ConversationDetail), (status = 404, body = Problem)))]
pub async fn conversation_detail(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
    Query(q): Query<MessageQuery>,
) -> Result<Response, Problem> {
    Ok(Json(load_conversation(&api, &caller.principal, &tenant, &user, &q).await?).into_response())
}

/// One customer's conversation and a page of its messages, as `who` may
/// see them.
pub async fn load_conversation(
    api: &Api,
    who: &Principal,
    tenant: &str,
    user: &str,
    q: &MessageQuery,
) -> Result<ConversationDetail, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let found = log_store::conversations(&mut tx, tenant, Some(user), 1).await?;
    let row = found
        .into_iter()
        .next()
        .ok_or_else(|| Problem::not_found(format!("no conversation with {user:?}")))?;
    let mut h = handoffs(&mut tx, tenant).await?;
    let mut s = sessions(&mut tx, tenant, std::slice::from_ref(&row)).await?;
    let mut f = q.filter()?;
    f.user = Some(user);
    let page = page(&mut tx, tenant, &f).await?;
    tx.commit().await?;
    Ok(ConversationDetail {
        conversation: conversation(row, &mut h, &mut s),
        page,
    })
}

/// Whether a handoff ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resumed {
    /// `false` when the bot was not paused for this customer.
    pub resumed: bool,
}

/// Gives a conversation back to the bot: it answers the customer again.
#[utoipa::path(post, path = "/tenants/{tenant}/conversations/{user}/resume", tag = "conversations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("user" = String, Path, description = "The customer's phone")),
    responses((status = 200, body = Resumed), (status = 404, body = Problem)))]
pub async fn resume(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let resumed = handoff_store::resume_handoff_in(&mut tx, tenant, &user).await?;
    if !resumed
        && log_store::conversations(&mut tx, tenant, Some(&user), 1)
            .await?
            .is_empty()
    {
        return Err(Problem::not_found(format!("no conversation with {user:?}")));
    }
    if resumed {
        super::tenants::record_change(
            &mut tx,
            &caller,
            tenant,
            "conversation.resume",
            &user,
            Some(&serde_json::json!({"handoff": true})),
            Some(&serde_json::json!({"handoff": false})),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(Resumed { resumed }).into_response())
}

/// An agent's reply: a text inside the customer's 24-hour window, or one
/// of the tenant's approved WhatsApp templates at any time.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyInput {
    /// The text to send (1 to 4096 characters).
    pub text: Option<String>,
    /// A template of the tenant's `whatsapp_templates` instead.
    pub template: Option<TemplateInput>,
}

/// One of the tenant's templates with its parameters.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    pub name: String,
    /// Its language (the first of that name when left out).
    pub language: Option<String>,
    /// The body's parameters, in order: as many as the template has.
    #[serde(default)]
    pub parameters: Vec<String>,
}

/// The template message an agent asked for, checked against the tenant's
/// templates.
fn agent_template(
    stored: &serde_json::Value,
    input: &TemplateInput,
) -> Result<alphadome_core::events::v1::TemplateMessage, Problem> {
    let templates = messaging::templates_of(stored);
    let t = templates
        .iter()
        .find(|t| t.name == input.name && input.language.as_ref().is_none_or(|l| *l == t.language))
        .ok_or_else(|| {
            Problem::invalid(
                "template.name",
                format!(
                    "{:?} is not one of the tenant's whatsapp_templates{}",
                    input.name,
                    input
                        .language
                        .as_ref()
                        .map(|l| format!(" in {l:?}"))
                        .unwrap_or_default()
                ),
            )
        })?;
    if input.parameters.len() != t.parameters.len() {
        return Err(Problem::invalid(
            "template.parameters",
            format!(
                "{} takes {} parameters, not {}",
                t.name,
                t.parameters.len(),
                input.parameters.len()
            ),
        ));
    }
    if let Some(i) = input.parameters.iter().position(|p| p.trim().is_empty()) {
        return Err(Problem::invalid(
            format!("template.parameters[{i}]"),
            "must not be empty",
        ));
    }
    Ok(alphadome_core::events::v1::TemplateMessage {
        name: t.name.clone(),
        language: t.language.clone(),
        parameters: input
            .parameters
            .iter()
            .map(|p| messaging::fit_parameter(p))
            .collect(),
    })
}

/// A reply on its way to the customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplyAccepted {
    /// The reply's id: the sender's idempotency key; its log row carries
    /// it in `metadata.outbound_id`.
    pub outbound_id: String,
    pub to: String,
    /// Who wrote it (`user:<email>` or `token:<name>`), kept in the log
    /// row's `metadata.author`.
    pub author: String,
}

/// The longest text a WhatsApp message may carry.
const MAX_TEXT: usize = 4096;

/// Sends an agent's reply to the customer with the tenant's own WhatsApp
/// number and token, and logs it with the agent as its author; the bot
/// pauses in the conversation (the tenant's `handoff_pause_minutes`) until
/// it is given back. A `text` goes only inside Meta's 24-hour customer
/// service window; a `template` of the tenant's `whatsapp_templates` goes
/// at any time (never to a customer who wrote STOP, outside the window).
#[utoipa::path(post, path = "/tenants/{tenant}/conversations/{user}/messages", tag = "conversations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("user" = String, Path, description = "The customer's phone")),
    request_body = ReplyInput,
    responses((status = 202, body = ReplyAccepted), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "A text outside the 24-hour window, or anything to a customer who wrote STOP outside it"),
              (status = 422, body = Problem)))]
pub async fn reply(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let found = log_store::conversations(&mut tx, tenant, Some(&user), 1).await?;
    let row = found
        .into_iter()
        .next()
        .ok_or_else(|| Problem::not_found(format!("no conversation with {user:?}")))?;
    let input: ReplyInput = super::problem::parse_json(&body)?;
    let text = input.text.as_deref().map(str::trim).unwrap_or_default();
    let template = match (&input.template, text.is_empty()) {
        (Some(_), false) => {
            return Err(Problem::invalid(
                "template",
                "send either a text or a template, not both",
            ))
        }
        (Some(t), true) => Some(agent_template(
            &edits::whatsapp_templates(&mut tx, tenant).await?,
            t,
        )?),
        (None, true) => return Err(Problem::invalid("text", "must not be empty")),
        (None, false) => None,
    };
    if text.chars().count() > MAX_TEXT {
        return Err(Problem::invalid(
            "text",
            format!("is longer than WhatsApp's {MAX_TEXT} characters"),
        ));
    }
    let now = Utc::now();
    let session = conversation_store::window_in(&mut tx, tenant, &user).await?;
    let last_in = row
        .last_incoming_at
        .max(session.as_ref().map(|s| s.last_inbound_at));
    let in_window = last_in.is_some_and(|t| t + WINDOW > now);
    if !in_window {
        if let Some(at) = session.as_ref().and_then(|s| s.opted_out_at) {
            return Err(Problem::outside_window(format!(
                "the customer wrote STOP at {} and is outside the 24-hour window: nothing may be sent until they write again",
                at.to_rfc3339()
            )));
        }
        if template.is_none() {
            let since = last_in
                .map(|t| format!("the customer last wrote at {}", t.to_rfc3339()))
                .unwrap_or_else(|| "the customer has not written".to_owned());
            return Err(Problem::outside_window(format!(
                "outside WhatsApp's 24-hour window: {since}; only an approved template may be sent now (`template`)"
            )));
        }
    }
    // The bot stays quiet while a person handles the conversation.
    let settings: super::tenants::Settings =
        alphadome_core::tenant::store::edits::settings(&mut tx, tenant).await?;
    if settings.handoff_pause_minutes > 0 {
        handoff_store::pause_for_agent_in(&mut tx, tenant, &user, settings.handoff_pause_minutes)
            .await?;
    }
    let author = caller.principal.actor.clone();
    let outbound_id = format!("agent:{}", Uuid::new_v4());
    let message = alphadome_core::events::v1::OutboundMessage {
        outbound_id: outbound_id.clone(),
        tenant_id: tenant.to_string(),
        to: user.clone(),
        text: text.to_owned(),
        created_at_ms: now.timestamp_millis(),
        metadata_json: serde_json::json!({"reason": "agent", "author": author}).to_string(),
        template,
        purpose: "agent".to_owned(),
        ..Default::default()
    };
    let subject = api.bus.subject(
        alphadome_core::bus::StreamKind::Outbound,
        &message.tenant_id,
    );
    let bytes = alphadome_core::events::Message::encode_to_vec(&message);
    // Published before the pause commits: a reply that could not be queued
    // leaves the bot answering as before.
    api.bus
        .publish(subject, &outbound_id, bytes.into())
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    tx.commit().await?;
    tracing::info!(tenant_id = %tenant, %outbound_id, "agent reply queued");
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(ReplyAccepted {
            outbound_id,
            to: user,
            author,
        }),
    )
        .into_response())
}
