//! What a business watches: its traffic (per hour, replies by reason,
//! latency, the questions the bot could not answer) and its go-live
//! checklist.

use std::sync::Arc;

use alphadome_core::tenant::store::edits;
use alphadome_logger::store::{self as log_store, MessageFilter, Stats};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::content::{Template, Training};
use super::inbox::Message;
use super::{Api, Caller, Problem, Scope};
use crate::people::Principal;
use crate::tenants::TenantView;

/// From when.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Hours back from now, 1 to 720 (default 24).
    pub hours: Option<String>,
}

/// A tenant's traffic for the last `hours` hours.
pub async fn load_stats(
    api: &Api,
    who: &Principal,
    tenant: &str,
    hours: i64,
) -> Result<Stats, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let since = Utc::now() - Duration::hours(hours);
    let stats = log_store::stats(&mut tx, tenant, since).await?;
    tx.commit().await?;
    Ok(stats)
}

/// A tenant's traffic: messages and errors per hour, replies by reason
/// (FAQ, AI, fallback, agent, ...), reply latency, and the questions the
/// bot could not answer.
#[utoipa::path(get, path = "/tenants/{tenant}/stats", tag = "operations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"), StatsQuery),
    responses((status = 200, body = Stats), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn stats(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, Problem> {
    let hours = match q.hours.as_deref().filter(|h| !h.is_empty()) {
        None => 24,
        Some(h) => h
            .parse::<i64>()
            .ok()
            .filter(|h| (1..=720).contains(h))
            .ok_or_else(|| Problem::invalid("hours", format!("{h:?} is not 1 to 720")))?,
    };
    Ok(Json(load_stats(&api, &caller.principal, &tenant, hours).await?).into_response())
}

/// One step before going live.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// `webhook`, `token`, `templates`, `faq`, `answered`.
    pub key: &'static str,
    pub label: &'static str,
    pub done: bool,
    /// What is missing, or what was seen.
    pub detail: String,
}

/// A tenant's go-live checklist.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Checklist {
    pub tenant_id: Uuid,
    pub is_active: bool,
    /// Every check done.
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// How long before a token's expiry the checklist calls it near.
const TOKEN_MARGIN_DAYS: i64 = 7;

fn token_check(view: &TenantView, now: DateTime<Utc>) -> Check {
    let (done, detail) = if view.whatsapp_access_token == "(not set)" {
        (false, "no WhatsApp access token is set".to_owned())
    } else if let Some(at) = view.whatsapp_token_invalid_at {
        (
            false,
            format!(
                "Meta rejected the token at {}",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
        )
    } else {
        match view.whatsapp_token_expires_at {
            Some(exp) if exp <= now => (false, "the token has expired".to_owned()),
            Some(exp) if exp <= now + Duration::days(TOKEN_MARGIN_DAYS) => (
                false,
                format!("the token expires on {}", exp.format("%Y-%m-%d")),
            ),
            Some(exp) => (true, format!("valid until {}", exp.format("%Y-%m-%d"))),
            None => (true, "set; no expiry (a system user token)".to_owned()),
        }
    };
    Check {
        key: "token",
        label: "WhatsApp token valid and not near expiry",
        done,
        detail,
    }
}

/// A tenant's go-live checklist, as `who` may see it.
pub async fn load_checklist(
    api: &Api,
    who: &Principal,
    tenant: &str,
) -> Result<Checklist, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let templates: Vec<Template> = edits::templates(&mut tx, tenant).await?;
    let training: Vec<Training> = edits::training(&mut tx, tenant).await?;
    let received = !log_store::conversations(&mut tx, tenant, None, 1)
        .await?
        .is_empty();
    let replies: Vec<Message> = log_store::messages(
        &mut tx,
        tenant,
        &MessageFilter {
            direction: Some("outgoing"),
            limit: 50,
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    let view = crate::tenants::show(&api.db, &tenant.to_string(), &api.country_code).await?;
    let now = Utc::now();
    let active_templates = templates.iter().filter(|t| t.is_active).count();
    let faq = training
        .iter()
        .filter(|r| r.is_active && r.data_type == "faq")
        .count();
    let answered = replies
        .iter()
        .find(|m| m.error_message.as_deref().unwrap_or_default().is_empty());
    let checks = vec![
        Check {
            key: "webhook",
            label: "Webhook verified: Meta's messages arrive",
            done: received || view.is_verified,
            detail: if received {
                "messages have arrived from Meta".to_owned()
            } else if view.is_verified {
                "marked verified".to_owned()
            } else {
                "no message has arrived yet: subscribe the app's webhook in Meta's dashboard"
                    .to_owned()
            },
        },
        token_check(&view, now),
        Check {
            key: "templates",
            label: "An active template",
            done: active_templates > 0,
            detail: format!("{active_templates} active"),
        },
        Check {
            key: "faq",
            label: "FAQ entries",
            done: faq > 0,
            detail: format!("{faq} active"),
        },
        Check {
            key: "answered",
            label: "A test message answered",
            done: answered.is_some(),
            detail: match answered {
                Some(m) => format!("last at {}", m.created_at.format("%Y-%m-%d %H:%M UTC")),
                None => "send the number a message and watch it answered".to_owned(),
            },
        },
    ];
    Ok(Checklist {
        tenant_id: tenant,
        is_active: view.is_active,
        ready: checks.iter().all(|c| c.done),
        checks,
    })
}

/// A tenant's go-live checklist: webhook verified, token valid and not
/// near expiry, templates and FAQ present, a test message answered.
#[utoipa::path(get, path = "/tenants/{tenant}/checklist", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = Checklist), (status = 404, body = Problem)))]
pub async fn checklist(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_checklist(&api, &caller.principal, &tenant).await?).into_response())
}
