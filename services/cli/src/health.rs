//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub db: PgPool,
    pub nats: async_nats::Client,
    /// Lines the services add about how they run (for example whether the
    /// embedding model is loaded); shown, never failing the check.
    pub details: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Router with `/healthz` and `/readyz`.
pub fn router(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(ready))
}

async fn readyz(State(r): State<Arc<Readiness>>) -> (StatusCode, String) {
    let db = sqlx::query("SELECT 1").execute(&r.db).await.is_ok();
    let nats = r.nats.connection_state() == async_nats::connection::State::Connected;
    let mut body = format!("database: {}\nnats: {}\n", ok(db), ok(nats));
    if let Ok(details) = r.details.lock() {
        for d in details.iter() {
            body.push_str(d);
            body.push('\n');
        }
    }
    if db && nats {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "unavailable"
    }
}
