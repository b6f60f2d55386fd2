//! The read-only admin API: `GET /admin/tenants` and
//! `GET /admin/tenants/{id-or-phone}`, guarded by the bearer token in
//! `ALPHADOME_ADMIN_TOKEN` (the API is off when it is unset). A client
//! address that keeps presenting wrong tokens is refused for a while, as
//! the webhook's failing sources are. Errors are JSON `{"error": ...}`:
//! bad input is a 4xx; internal errors are logged with their cause and
//! shown as unavailable.

use std::net::SocketAddr;
use std::sync::Arc;

use alphadome_core::guard::{Refusal, SourceGuard, BLOCK_FOR};
use alphadome_core::Report;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::{tenants, AdminError};

/// State of the admin API.
struct Api {
    db: PgPool,
    token: SecretString,
    country_code: String,
    verify_token_max_age_days: u32,
    guard: Arc<SourceGuard>,
}

/// What the admin API needs besides the database.
#[derive(Clone)]
pub struct ApiSettings {
    /// `ALPHADOME_ADMIN_TOKEN`; the API is off without it.
    pub token: Option<SecretString>,
    pub country_code: String,
    pub verify_token_max_age_days: u32,
    /// Take the client address from `X-Forwarded-For` (behind a proxy).
    pub trust_x_forwarded_for: bool,
}

/// The admin API routes; `None` without a token.
pub fn router(db: PgPool, settings: ApiSettings) -> Option<Router> {
    let token = settings.token?;
    Some(
        Router::new()
            .route("/admin/tenants", get(list))
            .route("/admin/tenants/{id}", get(show))
            .with_state(Arc::new(Api {
                db,
                token,
                country_code: settings.country_code,
                verify_token_max_age_days: settings.verify_token_max_age_days,
                guard: SourceGuard::new(settings.trust_x_forwarded_for, usize::MAX),
            })),
    )
}

/// The refusal of a request without the token (`None`: it has it); a wrong
/// or missing token counts as a failure of its address, and an address past
/// its failures is refused.
fn refusal(api: &Api, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    let source = api.guard.source(peer, headers);
    let flight = match api.guard.admit(source) {
        Ok(f) => f,
        Err(Refusal::Blocked | Refusal::Busy) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed requests from this source; retry later".into(),
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(BLOCK_FOR.as_secs()),
            );
            return Some(r);
        }
    };
    flight.finish();
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(api.token.expose_secret().as_bytes())) {
        None
    } else {
        api.guard.record_failure(source);
        tracing::warn!(%source, "admin API request with a missing or wrong token");
        Some(unauthorized())
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::NotFound(x) => error(
                StatusCode::NOT_FOUND,
                format!("no tenant with id or phone {x:?}"),
            ),
            other => {
                tracing::error!(error = %Report(&other), "admin API request failed");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable".into(),
                )
            }
        }
    }
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token".into(),
    )
}

async fn list(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&api, peer, &headers) {
        return refused;
    }
    match tenants::list(&api.db, api.verify_token_max_age_days).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn show(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = refusal(&api, peer, &headers) {
        return refused;
    }
    match tenants::show(&api.db, &id, &api.country_code).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
