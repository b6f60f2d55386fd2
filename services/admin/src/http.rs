//! The read-only admin API: `GET /admin/tenants` and
//! `GET /admin/tenants/{id-or-phone}`, guarded by the bearer token in
//! `ALPHADOME_ADMIN_TOKEN` (the API is off when it is unset). Errors are
//! JSON `{"error": ...}`; internal ones are logged with their cause and
//! shown as unavailable.

use std::sync::Arc;

use alphadome_core::Report;
use axum::extract::{Path, State};
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
}

/// The admin API routes; `None` without a token.
pub fn router(
    db: PgPool,
    token: Option<SecretString>,
    country_code: &str,
    verify_token_max_age_days: u32,
) -> Option<Router> {
    let token = token?;
    Some(
        Router::new()
            .route("/admin/tenants", get(list))
            .route("/admin/tenants/{id}", get(show))
            .with_state(Arc::new(Api {
                db,
                token,
                country_code: country_code.to_owned(),
                verify_token_max_age_days,
            })),
    )
}

fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    bool::from(given.as_bytes().ct_eq(api.token.expose_secret().as_bytes()))
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

async fn list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    match tenants::list(&api.db, api.verify_token_max_age_days).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn show(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    match tenants::show(&api.db, &id, &api.country_code).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
