//! ingress: Meta's webhook endpoint.
//!
//! `GET /webhook` answers Meta's verification handshake. `POST /webhook`
//! verifies `X-Hub-Signature-256` over the raw bytes, resolves each item's
//! tenant by `metadata.phone_number_id`, publishes every message and status
//! to JetStream (`Nats-Msg-Id` = wamid, or wamid:status) and answers 200
//! only once every publish is acknowledged; 503 when NATS is down, so Meta
//! retries. It does no business logic.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_core::bus::{Bus, StreamKind};
use alphadome_core::config::Config;
use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_core::events::v1::{InboundMessage, StatusUpdate};
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::meta::{self, ParsedWebhook};
use alphadome_core::telemetry;
use alphadome_core::tenant::TenantCache;
use alphadome_core::CancellationToken;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::future::join_all;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tracing::Instrument;
use uuid::Uuid;

/// Meta's payloads are at most 3 MB; allow some slack for encoding.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What ingress needs to know about a tenant.
pub struct Route {
    pub tenant_id: Uuid,
    pub phone_number_id: Option<String>,
    pub is_active: bool,
    pub verify_token: Option<String>,
    /// The tenant's own Meta app secret, decrypted.
    pub app_secret: Option<SecretString>,
}

/// Refuses, before doing any work, sources that keep failing
/// authentication (bad or missing signatures, wrong verify tokens): past
/// [`FAILURES_PER_SEC`] failures a second (bursts of [`FAILURE_BURST`]) a
/// source is refused with 429 for [`BLOCK_FOR`]. Correctly signed requests
/// never count, so a flood of unsigned requests cannot starve Meta's
/// deliveries, which come from other addresses.
pub struct SourceGuard {
    failures: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: std::sync::Mutex<HashMap<IpAddr, Instant>>,
    trust_forwarded: bool,
}

/// Sustained authentication failures allowed per source and second.
pub const FAILURES_PER_SEC: u32 = 5;
/// Burst of authentication failures allowed per source.
pub const FAILURE_BURST: u32 = 20;
/// How long a source that exceeded the failure rate is refused.
pub const BLOCK_FOR: Duration = Duration::from_secs(60);

impl SourceGuard {
    fn new() -> Self {
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(FAILURES_PER_SEC).unwrap_or(std::num::NonZeroU32::MIN),
        )
        .allow_burst(std::num::NonZeroU32::new(FAILURE_BURST).unwrap_or(std::num::NonZeroU32::MIN));
        Self {
            failures: governor::RateLimiter::keyed(quota),
            blocked: std::sync::Mutex::new(HashMap::new()),
            // Behind a reverse proxy, the client is the last X-Forwarded-For hop.
            trust_forwarded: std::env::var("ALPHADOME_TRUST_X_FORWARDED_FOR")
                .is_ok_and(|v| v == "1" || v == "true"),
        }
    }

    fn source(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        if self.trust_forwarded {
            let last = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            if let Some(ip) = last {
                return ip;
            }
        }
        peer.ip()
    }

    fn is_blocked(&self, ip: IpAddr) -> bool {
        let Ok(mut b) = self.blocked.lock() else {
            return false;
        };
        match b.get(&ip) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                b.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn record_failure(&self, ip: IpAddr) {
        if self.failures.check_key(&ip).is_err() {
            if let Ok(mut b) = self.blocked.lock() {
                if b.len() > 100_000 {
                    let now = Instant::now();
                    b.retain(|_, until| *until > now);
                }
                b.insert(ip, Instant::now() + BLOCK_FOR);
            }
            tracing::warn!(source = %ip, "source refused for {} s after repeated authentication failures", BLOCK_FOR.as_secs());
        }
    }
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

/// Counters exposed on `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub accepted_messages: AtomicU64,
    pub accepted_statuses: AtomicU64,
    pub duplicates: AtomicU64,
    pub unknown_tenant: AtomicU64,
    pub bad_signature: AtomicU64,
    pub rejected_items: AtomicU64,
    pub publish_failures: AtomicU64,
    pub refused_sources: AtomicU64,
}

/// Shared state of the ingress handlers.
pub struct Ingress {
    db: PgPool,
    bus: Bus,
    keyring: Arc<Keyring>,
    routes: Arc<TenantCache<Route>>,
    platform_secret: Option<SecretString>,
    guard: SourceGuard,
    pub counters: Counters,
}

async fn load_route(
    db: PgPool,
    keyring: Arc<Keyring>,
    id: Uuid,
) -> Result<Option<Route>, sqlx::Error> {
    let t = alphadome_core::tenant::load_tenant_config(&db, id).await?;
    Ok(match t {
        Some(t) => Some(audited_route(&db, &keyring, t).await?),
        None => None,
    })
}

/// The route of `t`, recording the decryption of its app secret.
async fn audited_route(
    db: &PgPool,
    keyring: &Keyring,
    mut t: alphadome_core::tenant::Tenant,
) -> Result<Route, sqlx::Error> {
    t.whatsapp_app_secret =
        alphadome_core::tenant::load_credential(db, t.id, SecretColumn::WhatsappAppSecret).await?;
    let route = route_of(keyring, t);
    if route.app_secret.is_some() {
        alphadome_core::audit::record_use(
            db,
            route.tenant_id,
            SecretColumn::WhatsappAppSecret,
            "service:ingress",
            "verify webhook signatures (cache fill)",
        )
        .await;
    }
    Ok(route)
}

fn route_of(keyring: &Keyring, t: alphadome_core::tenant::Tenant) -> Route {
    let app_secret = t.whatsapp_app_secret.as_deref().and_then(|s| {
        keyring
            .decrypt(t.id, SecretColumn::WhatsappAppSecret, s)
            .map_err(|e| tracing::error!(tenant_id = %t.id, error = %e, "cannot decrypt the tenant's app secret"))
            .ok()
    });
    Route {
        tenant_id: t.id,
        phone_number_id: t.whatsapp_phone_number_id,
        is_active: t.is_active,
        verify_token: t.webhook_verify_token,
        app_secret,
    }
}

impl Ingress {
    /// Builds the state, fills the tenant cache and keeps it current until
    /// `shutdown`.
    pub async fn start(
        config: &Config,
        db: PgPool,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let routes = TenantCache::new(|r: &Route| r.phone_number_id.clone(), None);
        let keyring = config.keyring.clone();
        let load = {
            let keyring = keyring.clone();
            move |db: PgPool, id: Uuid| load_route(db, keyring.clone(), id)
        };
        routes.refresh(&db, &load).await?;
        routes.spawn_refresher(
            db.clone(),
            bus.clone(),
            config.tenant_refresh,
            shutdown,
            load,
        );
        Ok(Arc::new(Self {
            db,
            bus,
            keyring,
            routes,
            platform_secret: config.meta_app_secret.clone(),
            guard: SourceGuard::new(),
            counters: Counters::default(),
        }))
    }

    /// The route for a phone number id: from the cache, else straight from
    /// the database (a tenant created since the last refresh).
    async fn route(&self, phone_number_id: &str) -> Option<Arc<Route>> {
        if let Some(r) = self.routes.get_by_key(phone_number_id) {
            return Some(r);
        }
        // The narrow cross-tenant path: which tenant owns this number.
        let id: Option<Uuid> = sqlx::query_scalar("SELECT alphadome.tenant_by_phone_number_id($1)")
            .bind(phone_number_id)
            .fetch_one(&self.db)
            .await
            .map_err(|e| tracing::warn!(error = %e, "tenant lookup failed"))
            .ok()?;
        let t = alphadome_core::tenant::load_tenant_config(&self.db, id?)
            .await
            .map_err(|e| tracing::warn!(error = %e, "tenant lookup failed"))
            .ok()??;
        let route = audited_route(&self.db, &self.keyring, t)
            .await
            .map_err(|e| tracing::warn!(error = %e, "tenant lookup failed"))
            .ok()?;
        Some(Arc::new(route))
    }
}

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
    let matched = match_verify_token(&s, &token).await;
    match matched {
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

/// Finds the tenant whose verify token (or, during its grace period, its
/// previous token) is `token`. Only digests are stored; every tenant's is
/// compared in constant time.
async fn match_verify_token(s: &Ingress, token: &str) -> Option<Uuid> {
    let rows: Vec<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, current_digest, previous_digest FROM alphadome.verify_token_digests()",
    )
    .fetch_all(&s.db)
    .await
    .map_err(|e| tracing::warn!(error = %e, "verify token lookup failed"))
    .ok()?;
    let digest = alphadome_core::crypto::verify_token_digest(token);
    let mut found = None;
    for (id, current, previous) in rows {
        for stored in [current, previous].into_iter().flatten() {
            if bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
                found = Some(id);
            }
        }
    }
    found
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{msg}\n"),
    )
        .into_response()
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
    let pnids: Vec<String> = match &parsed {
        Ok(p) => p
            .messages
            .iter()
            .map(|m| m.phone_number_id.clone())
            .chain(p.statuses.iter().map(|st| st.phone_number_id.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut routes = Vec::with_capacity(pnids.len());
    for p in &pnids {
        routes.push((p.clone(), s.route(p).await));
    }
    // Which secret verified the body: the tenant's own or the platform's.
    let verified_by = verify_with_candidates(&s, &routes, &body, signature);
    let Some(verified_by) = verified_by else {
        return unauthorized(&s, source, "X-Hub-Signature-256 does not match the body");
    };
    // One body comes from one Meta app: every tenant it names must be one
    // whose applicable secret is the one that verified it.
    if routes
        .iter()
        .any(|(_, r)| r.as_ref().is_some_and(|r| !signed_for(r, &verified_by)))
    {
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
                &format!("invalid webhook payload: {e}"),
            )
        }
    };
    match publish_all(&s, parsed, &routes, &verified_by).await {
        Ok(()) => plain(StatusCode::OK, "ok"),
        Err(e) => {
            s.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "webhook not accepted: publish failed; Meta will retry");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unavailable, retry later",
            )
        }
    }
}

/// The secret a body was signed with: `Some(Some(tenant))` for a tenant's
/// own app secret, `Some(None)` for the platform's.
fn verify_with_candidates(
    s: &Ingress,
    routes: &[(String, Option<Arc<Route>>)],
    body: &[u8],
    signature: Option<&str>,
) -> Option<Option<Uuid>> {
    for (_, r) in routes {
        if let Some(r) = r {
            if let Some(secret) = &r.app_secret {
                if meta::verify_signature(secret.expose_secret().as_bytes(), body, signature) {
                    return Some(Some(r.tenant_id));
                }
            }
        }
    }
    let platform = s.platform_secret.as_ref()?;
    meta::verify_signature(platform.expose_secret().as_bytes(), body, signature).then_some(None)
}

/// Whether the secret that verified the body is the one that applies to `r`.
fn signed_for(r: &Route, verified_by: &Option<Uuid>) -> bool {
    match (verified_by, &r.app_secret) {
        (Some(id), Some(_)) => *id == r.tenant_id,
        (None, None) => true,
        _ => false,
    }
}

async fn publish_all(
    s: &Ingress,
    parsed: ParsedWebhook,
    routes: &[(String, Option<Arc<Route>>)],
    verified_by: &Option<Uuid>,
) -> Result<(), alphadome_core::bus::BusError> {
    let route_for = |pnid: &str| -> Option<&Arc<Route>> {
        routes
            .iter()
            .find(|(p, _)| p == pnid)
            .and_then(|(_, r)| r.as_ref())
    };
    for reason in &parsed.rejected {
        s.counters.rejected_items.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%reason, "webhook item dropped");
    }
    for (pnid, err) in &parsed.errors {
        tracing::warn!(phone_number_id = %pnid, code = err.code, title = %err.title, "out-of-band error from Meta");
    }
    let received_at_ms = now_ms();
    let mut publishes = Vec::new();
    for m in parsed.messages {
        let Some(r) = route_for(&m.phone_number_id) else {
            s.counters.unknown_tenant.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(phone_number_id = %m.phone_number_id, "message for unknown phone number id dropped");
            continue;
        };
        if !signed_for(r, verified_by) {
            s.counters.bad_signature.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant_id = %r.tenant_id, "message signed with another app's secret dropped");
            continue;
        }
        let tenant_id = r.tenant_id.to_string();
        let span = tracing::info_span!("ingress.message", tenant_id = %tenant_id, wamid = %m.wamid);
        let subject = s.bus.subject(StreamKind::Inbound, &tenant_id);
        let bus = s.bus.clone();
        publishes.push(
            async move {
                let event = InboundMessage {
                    tenant_id,
                    wamid: m.wamid.clone(),
                    phone_number_id: m.phone_number_id,
                    from: m.from,
                    from_user_id: m.from_user_id,
                    profile_name: m.profile_name,
                    kind: m.kind as i32,
                    type_name: m.type_name,
                    text: m.text,
                    reply_id: m.reply_id,
                    context_wamid: m.context_wamid,
                    sent_at: m.sent_at,
                    received_at_ms,
                    raw_json: m.raw_json,
                    trace: Some(telemetry::current_trace()),
                };
                bus.publish(subject, &m.wamid, event.encode_to_vec().into())
                    .await
                    .map(|dup| (true, dup))
            }
            .instrument(span),
        );
    }
    let mut status_publishes = Vec::new();
    for st in parsed.statuses {
        let Some(r) = route_for(&st.phone_number_id) else {
            s.counters.unknown_tenant.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(phone_number_id = %st.phone_number_id, "status for unknown phone number id dropped");
            continue;
        };
        if !signed_for(r, verified_by) {
            s.counters.bad_signature.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let tenant_id = r.tenant_id.to_string();
        let span = tracing::info_span!("ingress.status", tenant_id = %tenant_id, wamid = %st.wamid, status = %st.status);
        let subject = s.bus.subject(StreamKind::Status, &tenant_id);
        let bus = s.bus.clone();
        status_publishes.push(
            async move {
                let id = format!("{}:{}", st.wamid, st.status);
                let event = StatusUpdate {
                    tenant_id,
                    wamid: st.wamid,
                    status: st.status,
                    recipient_id: st.recipient_id,
                    timestamp: st.timestamp,
                    error_code: st.error_code,
                    error_title: st.error_title,
                    error_details: st.error_details,
                    callback_data: st.callback_data,
                    raw_json: st.raw_json,
                    received_at_ms,
                    trace: Some(telemetry::current_trace()),
                };
                bus.publish(subject, &id, event.encode_to_vec().into())
                    .await
                    .map(|dup| (false, dup))
            }
            .instrument(span),
        );
    }
    let results = futures_util::future::join(join_all(publishes), join_all(status_publishes)).await;
    let mut first_err = None;
    for r in results.0.into_iter().chain(results.1) {
        match r {
            Ok((is_message, dup)) => {
                if dup {
                    s.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                let c = if is_message {
                    &s.counters.accepted_messages
                } else {
                    &s.counters.accepted_statuses
                };
                c.fetch_add(1, Ordering::Relaxed);
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
