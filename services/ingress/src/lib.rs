//! ingress: Meta's webhook endpoint.
//!
//! `GET /webhook` answers Meta's verification handshake. `POST /webhook`
//! verifies `X-Hub-Signature-256` over the raw bytes, resolves each item's
//! tenant by `metadata.phone_number_id`, publishes every message and status
//! to JetStream (`Nats-Msg-Id` = wamid, or wamid:status) and answers 200
//! only once every publish is acknowledged; 503 when NATS is down, so Meta
//! retries. It does no business logic.
//!
//! Layout: [`http`] is the transport (the routes and handlers),
//! [`webhook`] the decisions as plain functions, [`store`] the reads of
//! tenant routes, [`guard`] the per-address refusal of failing sources.

pub mod guard;
pub mod http;
pub mod store;
pub mod webhook;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use alphadome_core::bus::Bus;
use alphadome_core::config::Config;
use alphadome_core::crypto::Keyring;
use alphadome_core::tenant::{RefreshError, TenantCache};
use alphadome_core::{CancellationToken, Report};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

pub use guard::{BLOCK_FOR, FAILURES_PER_SEC, FAILURE_BURST};
pub use http::{router, MAX_BODY_BYTES};
use store::Route;

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("loading the tenants' routes")]
    Routes(#[from] RefreshError),
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
    guard: guard::SourceGuard,
    pub counters: Counters,
}

impl Ingress {
    /// Builds the state, fills the tenant cache and keeps it current until
    /// `shutdown`.
    pub async fn start(
        config: &Config,
        db: PgPool,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, IngressError> {
        let routes = TenantCache::new(|r: &Route| r.phone_number_id.clone(), None);
        let keyring = config.keyring.clone();
        let load = {
            let keyring = keyring.clone();
            move |db: PgPool, id: Uuid| {
                let keyring = keyring.clone();
                async move { store::load_route(&db, &keyring, id).await }
            }
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
            guard: guard::SourceGuard::new(config.trust_x_forwarded_for),
            counters: Counters::default(),
        }))
    }

    /// The route for a phone number id: from the cache, else straight from
    /// the database (a tenant created since the last refresh).
    async fn route(&self, phone_number_id: &str) -> Option<Arc<Route>> {
        if let Some(r) = self.routes.get_by_key(phone_number_id) {
            return Some(r);
        }
        store::lookup_route(&self.db, &self.keyring, phone_number_id)
            .await
            .map_err(|e| tracing::warn!(error = %Report(&e), "tenant lookup failed"))
            .ok()
            .flatten()
            .map(Arc::new)
    }
}
