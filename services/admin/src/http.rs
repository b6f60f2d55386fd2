//! The admin service's HTTP face: the JSON API under `/api/v1` ([`api`])
//! with its OpenAPI document, and the dashboard's pages ([`web`]), on the
//! service's address.

use std::sync::Arc;

use alphadome_core::bus::Bus;
use alphadome_core::crypto::Keyring;
use alphadome_core::guard::SourceGuard;
use axum::Router;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::api::{self, Api};
use crate::web;

/// What the admin's HTTP face needs besides its connections.
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

/// The connections the admin's HTTP face uses.
pub struct Connections {
    /// The owner pool.
    pub db: PgPool,
    /// A pool acting as `alphadome_dashboard` (see [`api`]).
    pub tenant_db: PgPool,
    pub bus: Bus,
    pub keyring: Arc<Keyring>,
}

/// The admin's routes.
pub fn router(c: Connections, settings: ApiSettings) -> Router {
    let api = Arc::new(Api {
        db: c.db,
        tenant_db: c.tenant_db,
        bus: c.bus,
        keyring: c.keyring,
        admin_token: settings.token,
        country_code: settings.country_code,
        verify_token_max_age_days: settings.verify_token_max_age_days,
        guard: SourceGuard::new(settings.trust_x_forwarded_for, usize::MAX),
    });
    api::routes(api.clone())
        .0
        .merge(web::routes(web::Web::new(api)))
}
