//! The JSON API under `/api/v1`, for programs (`Authorization: Bearer
//! TOKEN`) and for the dashboard's pages (the session cookie, with the
//! session's CSRF token in `X-CSRF-Token` on every change). Its OpenAPI
//! document, `/api/v1/openapi.json`, is generated from the handlers
//! themselves ([`utoipa`]), so it lists exactly the routes served.
//!
//! Every tenant-scoped request runs in one transaction of the dashboard
//! role acting for one tenant ([`Api::scope`]): a tenant-bound person's own
//! tenant, whatever the URL names, or for a platform admin the tenant the
//! URL names. Row-level security then shows that tenant's rows only, so
//! another tenant's id or row id finds nothing and answers 404, as if it
//! did not exist. Errors are problem details naming the field at fault
//! ([`problem`]); every change is recorded in the change audit and
//! announced, so the running services follow within a second.

pub mod auth;
pub mod content;
pub mod golive;
pub mod import;
pub mod inbox;
pub mod messaging;
pub mod ops;
pub mod problem;
pub mod tenants;
pub mod training;

use std::sync::Arc;

use alphadome_core::bus::Bus;
use alphadome_core::crypto::Keyring;
use alphadome_core::guard::SourceGuard;
use alphadome_core::tenant::{self, store::edits};
use axum::Router;
use secrecy::SecretString;
use sqlx::{PgPool, Postgres, Transaction};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::people::{Principal, Role};
use crate::phone;
pub use auth::Caller;
pub use problem::Problem;

/// What the API needs.
pub struct Api {
    /// The owner pool: people, sessions, tokens, the platform-wide lists.
    pub db: PgPool,
    /// A pool acting as `alphadome_dashboard`: every tenant-scoped request.
    pub tenant_db: PgPool,
    pub bus: Bus,
    pub keyring: Arc<Keyring>,
    pub admin_token: Option<SecretString>,
    pub country_code: String,
    pub verify_token_max_age_days: u32,
    pub guard: Arc<SourceGuard>,
}

/// A transaction acting for one tenant, and that tenant.
pub struct Scope {
    pub tx: Transaction<'static, Postgres>,
    pub tenant: Uuid,
}

/// What a request may do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read a tenant, its settings, conversations and messages; answer
    /// customers (every role).
    Agent,
    /// Change a tenant's settings, templates and training data.
    TenantAdmin,
    /// Create tenants, dead letters.
    Platform,
}

impl Access {
    fn of(role: Role) -> Self {
        match role {
            Role::Agent => Access::Agent,
            Role::TenantAdmin => Access::TenantAdmin,
            Role::PlatformAdmin => Access::Platform,
        }
    }
}

/// Refuses a caller whose role does not reach `need`.
pub fn require(who: &Principal, need: Access) -> Result<(), Problem> {
    if Access::of(who.role) >= need {
        Ok(())
    } else {
        Err(Problem::forbidden(format!(
            "a {} may not do this",
            who.role.as_str()
        )))
    }
}

impl Api {
    /// Begins the transaction acting for the tenant `named` (its id or
    /// client phone) on behalf of `who`; 404 when the caller may not see
    /// it or it does not exist.
    pub async fn scope(&self, who: &Principal, named: &str) -> Result<Scope, Problem> {
        let missing = || Problem::not_found(format!("no tenant {named:?}"));
        let (id, phone) = match Uuid::parse_str(named.trim()) {
            Ok(id) => (Some(id), None),
            Err(_) => match phone::normalize(named, &self.country_code) {
                Ok(p) => (None, Some(p)),
                Err(_) => return Err(missing()),
            },
        };
        let acting = match who.tenant {
            Some(own) => own,
            None => {
                crate::tenants::find(&self.db, named, &self.country_code)
                    .await
                    .map_err(|e| match e {
                        crate::AdminError::NotFound(_) => missing(),
                        other => other.into(),
                    })?
                    .id
            }
        };
        let mut tx = alphadome_core::db::scoped(&self.tenant_db, acting).await?;
        match edits::tenant_id(&mut tx, id, phone.as_deref()).await? {
            Some(found) if found == acting => Ok(Scope { tx, tenant: acting }),
            _ => Err(missing()),
        }
    }

    /// Tells the running services that `tenant`'s configuration changed.
    pub async fn announce(&self, tenant: Uuid) {
        tenant::announce_change(&self.bus, tenant).await;
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Alphadome API",
        version = "1",
        description = "Tenants, their settings, templates, training data, conversations and usage. \
                       Authenticate with `Authorization: Bearer <token>` (`alphadome token create`) or \
                       the dashboard's session cookie (changes then need the session's `X-CSRF-Token`). \
                       `{tenant}` is a tenant's id or its client phone. Errors are problem details \
                       (`application/problem+json`) naming the field at fault."
    ),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "tenants"), (name = "settings"), (name = "templates"), (name = "training-data"),
        (name = "training-candidates"),
        (name = "conversations"), (name = "operations")
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::SESSION_COOKIE))),
        );
    }
}

/// The API's routes under `/api/v1`, and its OpenAPI document.
pub fn routes(api: Arc<Api>) -> (Router, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::show, tenants::patch))
        .routes(routes!(tenants::activate))
        .routes(routes!(tenants::deactivate))
        .routes(routes!(tenants::settings, tenants::patch_settings))
        .routes(routes!(
            messaging::whatsapp_templates,
            messaging::put_whatsapp_templates
        ))
        .routes(routes!(messaging::opt_outs))
        .routes(routes!(content::templates, content::create_template))
        .routes(routes!(content::patch_template, content::delete_template))
        .routes(routes!(content::training, content::create_training))
        .routes(routes!(content::patch_training, content::delete_training))
        .routes(routes!(training::candidates))
        .routes(routes!(training::teach))
        .routes(routes!(training::dismiss))
        .routes(routes!(import::import))
        .routes(routes!(import::export))
        .routes(routes!(inbox::messages))
        .routes(routes!(inbox::conversations))
        .routes(routes!(inbox::conversation_detail))
        .routes(routes!(inbox::reply))
        .routes(routes!(inbox::resume))
        .routes(routes!(ops::usage))
        .routes(routes!(golive::stats))
        .routes(routes!(golive::checklist))
        .routes(routes!(ops::audit))
        .routes(routes!(ops::dead_letters))
        .routes(routes!(ops::replay))
        .with_state(api)
        .split_for_parts();
    let mut doc = doc;
    doc.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    let doc_json = doc.clone();
    let router = Router::new().nest("/api/v1", router).route(
        "/api/v1/openapi.json",
        axum::routing::get(move || {
            let d = doc_json.clone();
            async move { axum::Json(d) }
        }),
    );
    (router, doc)
}
