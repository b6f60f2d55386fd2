//! The read-only admin API: `GET /admin/tenants` and
//! `GET /admin/tenants/{id-or-phone}`, for a bearer API token
//! (`alphadome token create`) or the token in `ALPHADOME_ADMIN_TOKEN` (a
//! platform admin's). A tenant-bound token sees its own tenant only;
//! another tenant's answers 404, as if it did not exist. A client
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

use crate::people::{self, Principal, Role};
use crate::{tenants, AdminError};

/// State of the admin API.
struct Api {
    db: PgPool,
    token: Option<SecretString>,
    country_code: String,
    verify_token_max_age_days: u32,
    guard: Arc<SourceGuard>,
}

/// What the admin API needs besides the database.
#[derive(Clone)]
pub struct ApiSettings {
    /// `ALPHADOME_ADMIN_TOKEN`: a platform admin's token besides the
    /// stored API tokens.
    pub token: Option<SecretString>,
    pub country_code: String,
    pub verify_token_max_age_days: u32,
    /// Take the client address from `X-Forwarded-For` (behind a proxy).
    pub trust_x_forwarded_for: bool,
}

/// The admin API routes.
pub fn router(db: PgPool, settings: ApiSettings) -> Router {
    Router::new()
        .route("/admin/tenants", get(list))
        .route("/admin/tenants/{id}", get(show))
        .with_state(Arc::new(Api {
            db,
            token: settings.token,
            country_code: settings.country_code,
            verify_token_max_age_days: settings.verify_token_max_age_days,
            guard: SourceGuard::new(settings.trust_x_forwarded_for, usize::MAX),
        }))
}

/// Who the request's bearer token names, or its refusal: a wrong or
/// missing token counts as a failure of its address, and an address past
/// its failures is refused.
async fn authenticate(
    api: &Api,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
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
            return Err(r);
        }
    };
    flight.finish();
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let configured = api.token.as_ref().is_some_and(|t| {
        !given.is_empty() && bool::from(given.as_bytes().ct_eq(t.expose_secret().as_bytes()))
    });
    if configured {
        return Ok(Principal {
            actor: "admin-token".to_owned(),
            role: Role::PlatformAdmin,
            tenant: None,
        });
    }
    match people::authenticate_token(&api.db, given).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => {
            api.guard.record_failure(source);
            tracing::warn!(%source, "admin API request with a missing, wrong or revoked token");
            Err(unauthorized())
        }
        Err(e) => Err(AdminError::Database(e).into_response()),
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
    let who = match authenticate(&api, peer, &headers).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    match tenants::list(&api.db, api.verify_token_max_age_days).await {
        Ok(mut l) => {
            l.retain(|t| who.sees(t.id));
            Json(l).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn show(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match authenticate(&api, peer, &headers).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    match tenants::show(&api.db, &id, &api.country_code).await {
        // Another tenant's is answered as if it did not exist.
        Ok(v) if !who.sees(v.id) => AdminError::NotFound(id).into_response(),
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
