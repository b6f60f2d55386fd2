//! The ingress's transport: `GET /webhook` (Meta's verification
//! handshake), `POST /webhook` (verify, resolve, publish, answer), both
//! behind the per-address guard, and `/metrics`.
//!
//! What an unauthenticated request can cost is bounded before any work: a
//! blocked address is refused at once, an address has at most
//! `ALPHADOME_MAX_REQUESTS_PER_SOURCE` requests in flight, a request that
//! does not finish within `ALPHADOME_REQUEST_TIMEOUT_MS` is answered 408 and
//! counts as a failure of its address, a signature header that cannot be a
//! signature fails without a look at the body, and a body's signers are
//! looked for among at most [`MAX_IDS_PER_BODY`](crate::MAX_IDS_PER_BODY)
//! ids, of which at most [`MAX_LOOKUPS_PER_BODY`](crate::MAX_LOOKUPS_PER_BODY)
//! go to the database.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use alphadome_core::bus::{BusError, StreamKind};
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::guard::{Refusal, BLOCK_FOR};
use alphadome_core::meta::{self, ParsedWebhook};
use alphadome_core::{crypto, telemetry, Report};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::future::join_all;
use tracing::Instrument;

use crate::store::{self, Route};
use crate::webhook::{self, SignedBy};
use crate::{Ingress, MAX_IDS_PER_BODY, MAX_LOOKUPS_PER_BODY};

/// Meta's payloads are at most 3 MB; allow some slack for encoding.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The webhook routes (`/webhook`, behind the guard) and `/metrics`.
pub fn router(state: Arc<Ingress>) -> Router {
    let webhook = Router::new()
        .route("/webhook", get(verify).post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Refuses an oversized body from its Content-Length, before reading it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        // The guard sees the request before its body is read, so a body
        // sent slowly is counted too.
        .layer(middleware::from_fn_with_state(state.clone(), guarded))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout,
        ));
    Router::new()
        .merge(webhook)
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The request's client address, as the guard sees it.
#[derive(Clone, Copy)]
struct Source(IpAddr);

/// Set by a handler once the request authenticated (a verified signature,
/// a matching verify token).
#[derive(Clone)]
struct Authenticated(Arc<AtomicBool>);

impl Authenticated {
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Admits the request past its address's guard (or refuses it at once), and
/// keeps it in flight until it is answered: a request dropped before then
/// (by the time-out, or by its client) and before it authenticated counts
/// as a failure of its address.
async fn guarded(
    State(s): State<Arc<Ingress>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let source = s.guard.source(peer, req.headers());
    let flight = match s.guard.admit(source) {
        Ok(f) => f,
        Err(Refusal::Blocked) => {
            s.counters.refused_sources.fetch_add(1, Ordering::Relaxed);
            return refused(
                "too many failed requests from this source; retry later",
                BLOCK_FOR.as_secs(),
            );
        }
        Err(Refusal::Busy) => {
            s.counters.busy_sources.fetch_add(1, Ordering::Relaxed);
            return refused("too many requests in flight from this source", 1);
        }
    };
    req.extensions_mut().insert(Source(source));
    req.extensions_mut()
        .insert(Authenticated(flight.authenticated()));
    let response = next.run(req).await;
    flight.finish();
    response
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

fn refused(why: &str, retry_after_secs: u64) -> Response {
    let mut r = plain(StatusCode::TOO_MANY_REQUESTS, why);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from(retry_after_secs),
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
    Extension(Source(source)): Extension<Source>,
    Extension(authenticated): Extension<Authenticated>,
    Query(q): Query<Handshake>,
) -> Response {
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
            authenticated.mark();
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
    Extension(Source(source)): Extension<Source>,
    Extension(authenticated): Extension<Authenticated>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    let Some(signature) = signature else {
        return unauthorized(&s, source, "missing X-Hub-Signature-256");
    };
    if !webhook::is_signature(signature) {
        return unauthorized(
            &s,
            source,
            "X-Hub-Signature-256 is not sha256=<64 hex digits>",
        );
    }
    let Some(signed_by) = signer(&s, &body, signature).await else {
        return unauthorized(&s, source, "X-Hub-Signature-256 does not match the body");
    };
    authenticated.mark();
    // Meta signed it: from here on, nothing is refused. A body (or an item
    // of it) that JSON parsers refuse is repaired and read again.
    let parsed = match meta::parse_webhook(&body) {
        Ok(p) if p.rejected.is_empty() => Ok(p),
        first => match meta::repair_json(&body) {
            Some(repaired) => {
                tracing::warn!("signed webhook repaired before parsing (invalid UTF-8, control characters or lone surrogates)");
                meta::parse_webhook(&repaired)
            }
            None => first,
        },
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            // Answered 200 all the same: a redelivery would not read better,
            // and refusals make Meta slow down or drop the subscription.
            s.counters.unreadable_bodies.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %Report(&e), "signed webhook that cannot be read accepted and dropped");
            return plain(
                StatusCode::OK,
                &format!("accepted, nothing to process: {}", Report(&e)),
            );
        }
    };
    match publish_all(&s, parsed, signed_by).await {
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

/// Which secret signed the body: the app secret of a tenant the body names
/// (by phone number id or business account id), else the platform's. The
/// cached tenants are tried first; the database only when none verifies,
/// and then for a bounded number of ids.
async fn signer(s: &Ingress, body: &[u8], signature: &str) -> Option<SignedBy> {
    let ids = meta::candidate_ids(body, MAX_IDS_PER_BODY);
    let cached = s.cached_routes(&ids);
    let platform = s.platform_secret.as_ref();
    if let Some(by) = webhook::signed_by(&cached, platform, body, Some(signature)) {
        return Some(by);
    }
    let looked_up = s.looked_up_routes(&ids, MAX_LOOKUPS_PER_BODY).await;
    webhook::signed_by(&looked_up, None, body, Some(signature))
}

/// Publishes every message, status and account change of the webhook at
/// once, and waits for all acknowledgements; the first error, if any.
async fn publish_all(
    s: &Ingress,
    parsed: ParsedWebhook,
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
    let mut messages = Vec::new();
    for m in parsed.messages {
        let Some(tenant) = tenant_for(
            s,
            s.route_of_number(&m.phone_number_id).await,
            &m.phone_number_id,
            signed_by,
            "message",
        ) else {
            continue;
        };
        let span = tracing::info_span!("ingress.message", tenant_id = %tenant, wamid = %m.wamid);
        let (bus, subject) = (
            s.bus.clone(),
            s.bus.subject(StreamKind::Inbound, &tenant.to_string()),
        );
        messages.push(
            async move {
                let id = m.wamid.clone();
                let event =
                    webhook::inbound_event(tenant, m, received_at_ms, telemetry::current_trace());
                bus.publish(subject, &id, event.encode_to_vec().into())
                    .await
            }
            .instrument(span),
        );
    }
    let mut statuses = Vec::new();
    for st in parsed.statuses {
        let Some(tenant) = tenant_for(
            s,
            s.route_of_number(&st.phone_number_id).await,
            &st.phone_number_id,
            signed_by,
            "status",
        ) else {
            continue;
        };
        let span = tracing::info_span!("ingress.status", tenant_id = %tenant, wamid = %st.wamid, status = %st.status);
        let (bus, subject) = (
            s.bus.clone(),
            s.bus.subject(StreamKind::Status, &tenant.to_string()),
        );
        statuses.push(
            async move {
                let id = webhook::status_id(&st);
                let event =
                    webhook::status_event(tenant, st, received_at_ms, telemetry::current_trace());
                bus.publish(subject, &id, event.encode_to_vec().into())
                    .await
            }
            .instrument(span),
        );
    }
    let mut changes = Vec::new();
    for change in parsed.account_changes {
        let routes = s.routes_of_account(&change.business_account_id).await;
        let tenants: Vec<_> = routes
            .iter()
            .filter(|r| spoken_for(s, r, signed_by, "account change"))
            .map(|r| r.tenant_id)
            .collect();
        if tenants.is_empty() {
            s.counters.unknown_tenant.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(business_account_id = %change.business_account_id, field = %change.field, "account change for no known tenant dropped");
        }
        for tenant in tenants {
            let event =
                webhook::account_event(tenant, &change, received_at_ms, telemetry::current_trace());
            let span = tracing::info_span!("ingress.account_change", tenant_id = %tenant, field = %change.field, event = %change.event);
            let (bus, subject) = (
                s.bus.clone(),
                s.bus.subject(StreamKind::Account, &tenant.to_string()),
            );
            changes.push(
                async move {
                    let id = event.dedup_key.clone();
                    bus.publish(subject, &id, event.encode_to_vec().into())
                        .await
                }
                .instrument(span),
            );
        }
    }
    let (messages, statuses, changes) =
        futures_util::future::join3(join_all(messages), join_all(statuses), join_all(changes))
            .await;
    let first = tally(s, messages, &s.counters.accepted_messages);
    let second = tally(s, statuses, &s.counters.accepted_statuses);
    let third = tally(s, changes, &s.counters.accepted_account_changes);
    first.and(second).and(third)
}

/// The tenant an item goes to: its phone number id's, when that tenant is
/// known and the body's signature speaks for it; else the item is counted
/// and dropped.
fn tenant_for(
    s: &Ingress,
    route: Option<Arc<Route>>,
    pnid: &str,
    signed_by: SignedBy,
    what: &str,
) -> Option<uuid::Uuid> {
    let Some(r) = route else {
        s.counters.unknown_tenant.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(phone_number_id = %pnid, "{what} for unknown phone number id dropped");
        return None;
    };
    spoken_for(s, &r, signed_by, what).then_some(r.tenant_id)
}

/// Whether the secret that verified the body speaks for `r`'s tenant; an
/// item of another app's tenant is counted and dropped.
fn spoken_for(s: &Ingress, r: &Route, signed_by: SignedBy, what: &str) -> bool {
    let ok = webhook::speaks_for(r, signed_by);
    if !ok {
        s.counters.foreign_items.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant_id = %r.tenant_id, "{what} signed with another app's secret dropped");
    }
    ok
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
        line(
            "accepted_account_changes_total",
            &c.accepted_account_changes,
        ),
        line("duplicate_publishes_total", &c.duplicates),
        line("unknown_tenant_total", &c.unknown_tenant),
        line("bad_signature_total", &c.bad_signature),
        line("foreign_items_total", &c.foreign_items),
        line("rejected_items_total", &c.rejected_items),
        line("unreadable_bodies_total", &c.unreadable_bodies),
        line("publish_failures_total", &c.publish_failures),
        line("refused_sources_total", &c.refused_sources),
        line("busy_sources_total", &c.busy_sources),
        line("tenant_lookups_total", &c.tenant_lookups),
    ]
    .concat()
}
