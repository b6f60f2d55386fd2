//! The ingress's transport: `GET /webhook` (Meta's verification
//! handshake), `POST /webhook` (verify, resolve, publish, answer), and
//! `/metrics`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::{BusError, StreamKind};
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::meta::{self, ParsedWebhook};
use alphadome_core::{crypto, telemetry, Report};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::future::join_all;
use tracing::Instrument;

use crate::guard::BLOCK_FOR;
use crate::store::{self, Route};
use crate::webhook::{self, SignedBy};
use crate::Ingress;

/// Meta's payloads are at most 3 MB; allow some slack for encoding.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The webhook routes (`/webhook`) and `/metrics`.
pub fn router(state: Arc<Ingress>) -> Router {
    Router::new()
        .route("/webhook", get(verify).post(receive))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Refuses an oversized body from its Content-Length, before reading it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(15),
        ))
        .with_state(state)
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{msg}\n"),
    )
        .into_response()
}

fn unauthorized(s: &Ingress, source: IpAddr, why: &str) -> Response {
    s.counters.bad_signature.fetch_add(1, Ordering::Relaxed);
    s.guard.record_failure(source);
    tracing::warn!(%source, reason = why, "webhook refused");
    plain(StatusCode::UNAUTHORIZED, why)
}

fn too_many() -> Response {
    let mut r = plain(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed requests from this source; retry later",
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from(BLOCK_FOR.as_secs()),
    );
    r
}

#[derive(serde::Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn verify(
    State(s): State<Arc<Ingress>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Handshake>,
) -> Response {
    let source = s.guard.source(peer, &headers);
    if s.guard.is_blocked(source) {
        s.counters.refused_sources.fetch_add(1, Ordering::Relaxed);
        return too_many();
    }
    let (Some(mode), Some(token), Some(challenge)) = (q.mode, q.verify_token, q.challenge) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing hub.mode, hub.verify_token or hub.challenge\n",
        )
            .into_response();
    };
    if mode != "subscribe" {
        return (StatusCode::FORBIDDEN, "hub.mode must be subscribe\n").into_response();
    }
    let digests = match store::verify_token_digests(&s.db).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %Report(&e), "verify token lookup failed");
            Vec::new()
        }
    };
    match webhook::match_verify_token(&crypto::verify_token_digest(&token), &digests) {
        Some(tenant_id) => {
            tracing::info!(%tenant_id, "webhook verification handshake accepted");
            ([(header::CONTENT_TYPE, "text/plain")], challenge).into_response()
        }
        None => {
            s.guard.record_failure(source);
            tracing::warn!("webhook verification handshake refused: unknown verify token");
            (StatusCode::FORBIDDEN, "verify token does not match\n").into_response()
        }
    }
}

async fn receive(
    State(s): State<Arc<Ingress>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let source = s.guard.source(peer, &headers);
    if s.guard.is_blocked(source) {
        s.counters.refused_sources.fetch_add(1, Ordering::Relaxed);
        return too_many();
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if signature.is_none() {
        return unauthorized(&s, source, "missing X-Hub-Signature-256");
    }
    // Parsing here is untrusted: it only tells which app secrets may apply.
    let parsed = meta::parse_webhook(&body);
    let pnids = parsed
        .as_ref()
        .map(webhook::phone_number_ids)
        .unwrap_or_default();
    let mut routes = Vec::with_capacity(pnids.len());
    for p in pnids {
        let r = s.route(&p).await;
        routes.push((p, r));
    }
    let Some(signed_by) = webhook::signed_by(&routes, s.platform_secret.as_ref(), &body, signature)
    else {
        return unauthorized(&s, source, "X-Hub-Signature-256 does not match the body");
    };
    if routes.iter().any(|(_, r)| {
        r.as_ref()
            .is_some_and(|r| !webhook::speaks_for(r, signed_by))
    }) {
        return unauthorized(
            &s,
            source,
            "X-Hub-Signature-256 does not match the tenant's app secret",
        );
    }
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("invalid webhook payload: {}", Report(&e)),
            )
        }
    };
    match publish_all(&s, parsed, &routes, signed_by).await {
        Ok(()) => plain(StatusCode::OK, "ok"),
        Err(e) => {
            s.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %Report(&e), "webhook not accepted: publish failed; Meta will retry");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unavailable, retry later",
            )
        }
    }
}

/// Publishes every message and status of the webhook at once, and waits
/// for all acknowledgements; the first error, if any.
async fn publish_all(
    s: &Ingress,
    parsed: ParsedWebhook,
    routes: &[(String, Option<Arc<Route>>)],
    signed_by: SignedBy,
) -> Result<(), BusError> {
    for reason in &parsed.rejected {
        s.counters.rejected_items.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%reason, "webhook item dropped");
    }
    for (pnid, err) in &parsed.errors {
        tracing::warn!(phone_number_id = %pnid, code = err.code, title = %err.title, "out-of-band error from Meta");
    }
    let received_at_ms = now_ms();
    let messages = parsed.messages.into_iter().filter_map(|m| {
        let tenant = tenant_for(s, routes, &m.phone_number_id, signed_by, "message")?;
        let span = tracing::info_span!("ingress.message", tenant_id = %tenant, wamid = %m.wamid);
        let (bus, subject) = (
            s.bus.clone(),
            s.bus.subject(StreamKind::Inbound, &tenant.to_string()),
        );
        Some(
            async move {
                let id = m.wamid.clone();
                let event =
                    webhook::inbound_event(tenant, m, received_at_ms, telemetry::current_trace());
                bus.publish(subject, &id, event.encode_to_vec().into())
                    .await
            }
            .instrument(span),
        )
    });
    let messages: Vec<_> = messages.collect();
    let statuses = parsed.statuses.into_iter().filter_map(|st| {
        let tenant = tenant_for(s, routes, &st.phone_number_id, signed_by, "status")?;
        let span = tracing::info_span!("ingress.status", tenant_id = %tenant, wamid = %st.wamid, status = %st.status);
        let (bus, subject) = (s.bus.clone(), s.bus.subject(StreamKind::Status, &tenant.to_string()));
        Some(
            async move {
                let id = webhook::status_id(&st);
                let event =
                    webhook::status_event(tenant, st, received_at_ms, telemetry::current_trace());
                bus.publish(subject, &id, event.encode_to_vec().into()).await
            }
            .instrument(span),
        )
    });
    let statuses: Vec<_> = statuses.collect();
    let (messages, statuses) =
        futures_util::future::join(join_all(messages), join_all(statuses)).await;
    let first = tally(s, messages, &s.counters.accepted_messages);
    let second = tally(s, statuses, &s.counters.accepted_statuses);
    first.and(second)
}

/// The tenant an item goes to: its phone number id's, when that tenant is
/// known and the body's signature speaks for it; else the item is counted
/// and dropped.
fn tenant_for(
    s: &Ingress,
    routes: &[(String, Option<Arc<Route>>)],
    pnid: &str,
    signed_by: SignedBy,
    what: &str,
) -> Option<uuid::Uuid> {
    let route = routes
        .iter()
        .find(|(p, _)| p == pnid)
        .and_then(|(_, r)| r.as_ref());
    let Some(r) = route else {
        s.counters.unknown_tenant.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(phone_number_id = %pnid, "{what} for unknown phone number id dropped");
        return None;
    };
    if !webhook::speaks_for(r, signed_by) {
        s.counters.bad_signature.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant_id = %r.tenant_id, "{what} signed with another app's secret dropped");
        return None;
    }
    Some(r.tenant_id)
}

/// Counts the acknowledged publishes (and the duplicates among them); the
/// first failure, if any.
fn tally(
    s: &Ingress,
    results: Vec<Result<bool, BusError>>,
    accepted: &AtomicU64,
) -> Result<(), BusError> {
    let mut first_err = None;
    for r in results {
        match r {
            Ok(duplicate) => {
                if duplicate {
                    s.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn metrics(State(s): State<Arc<Ingress>>) -> String {
    let c = &s.counters;
    let line = |name: &str, v: &AtomicU64| {
        format!("alphadome_ingress_{name} {}\n", v.load(Ordering::Relaxed))
    };
    [
        line("accepted_messages_total", &c.accepted_messages),
        line("accepted_statuses_total", &c.accepted_statuses),
        line("duplicate_publishes_total", &c.duplicates),
        line("unknown_tenant_total", &c.unknown_tenant),
        line("bad_signature_total", &c.bad_signature),
        line("rejected_items_total", &c.rejected_items),
        line("publish_failures_total", &c.publish_failures),
        line("refused_sources_total", &c.refused_sources),
    ]
    .concat()
}
