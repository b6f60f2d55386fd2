//! ingress: Meta's webhook endpoint.
//!
//! `GET /webhook` answers Meta's verification handshake. `POST /webhook`
//! verifies `X-Hub-Signature-256` over the raw bytes with the app secrets
//! of the tenants the body names (by phone number id or WhatsApp Business
//! Account id; the platform's secret last), publishes every message,
//! status and account change to JetStream (`Nats-Msg-Id` = wamid,
//! wamid:status, or the change's digest) and answers 200 only once every
//! publish is acknowledged; 503 when NATS is down, so Meta retries. A body
//! Meta signed is never refused; one that no candidate secret verifies is
//! an authentication failure of its client address. It does no business
//! logic.
//!
//! Layout: [`http`] is the transport (the routes, the per-address guard,
//! the handlers), [`webhook`] the decisions as plain functions, [`store`]
//! the reads of tenant routes, [`misses`] the memory of ids that name no
//! tenant.

pub mod http;
pub mod misses;
pub mod store;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::Bus;
use alphadome_core::config::Config;
use alphadome_core::crypto::Keyring;
use alphadome_core::guard::SourceGuard;
use alphadome_core::meta::CandidateIds;
use alphadome_core::tenant::{RefreshError, TenantCache};
use alphadome_core::{CancellationToken, Report};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

pub use http::{router, MAX_BODY_BYTES};
use store::Route;

/// Ids of a body considered when looking for its signers, at most: Meta's
/// webhooks name one or a few.
pub const MAX_IDS_PER_BODY: usize = 16;
/// Ids of an unverified body looked up in the database, at most (the
/// others are tried only from the cache).
pub const MAX_LOOKUPS_PER_BODY: usize = 4;

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
    pub accepted_account_changes: AtomicU64,
    pub duplicates: AtomicU64,
    pub unknown_tenant: AtomicU64,
    pub bad_signature: AtomicU64,
    /// Items of a verified body whose tenant the verifying secret does not
    /// speak for (dropped).
    pub foreign_items: AtomicU64,
    pub rejected_items: AtomicU64,
    /// Verified bodies that do not parse even once repaired (answered 200).
    pub unreadable_bodies: AtomicU64,
    pub publish_failures: AtomicU64,
    pub refused_sources: AtomicU64,
    /// Requests refused for having too many requests in flight.
    pub busy_sources: AtomicU64,
    /// Database lookups of ids that were not in the cache.
    pub tenant_lookups: AtomicU64,
}

/// Shared state of the ingress handlers.
pub struct Ingress {
    db: PgPool,
    bus: Bus,
    keyring: Arc<Keyring>,
    routes: Arc<TenantCache<Route>>,
    misses: misses::Misses,
    platform_secret: Option<SecretString>,
    guard: Arc<SourceGuard>,
    request_timeout: Duration,
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
        let routes = TenantCache::new(Route::keys, None);
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
            misses: misses::Misses::default(),
            platform_secret: config.meta_app_secret.clone(),
            guard: SourceGuard::new(config.trust_x_forwarded_for, config.max_requests_per_source),
            request_timeout: config.request_timeout,
            counters: Counters::default(),
        }))
    }

    /// The cached routes of the ids a body names, each tenant once.
    fn cached_routes(&self, ids: &CandidateIds) -> Vec<Arc<Route>> {
        let mut found: Vec<Arc<Route>> = Vec::new();
        let keys = ids
            .phone_number_ids
            .iter()
            .map(|p| store::phone_key(p))
            .chain(
                ids.business_account_ids
                    .iter()
                    .map(|a| store::account_key(a)),
            );
        for key in keys {
            for r in self.routes.get_by_key(&key) {
                if !found.iter().any(|f| f.tenant_id == r.tenant_id) {
                    found.push(r);
                }
            }
        }
        found
    }

    /// The routes of ids not in the cache, from the database: only the
    /// first `limit` such ids are considered, and none that named no tenant
    /// a moment ago is looked up again.
    async fn looked_up_routes(&self, ids: &CandidateIds, limit: usize) -> Vec<Arc<Route>> {
        let mut found = Vec::new();
        let mut left = limit;
        let wanted = ids
            .phone_number_ids
            .iter()
            .map(|p| (store::phone_key(p), p, true))
            .chain(
                ids.business_account_ids
                    .iter()
                    .map(|a| (store::account_key(a), a, false)),
            );
        for (key, id, is_phone) in wanted {
            if left == 0 {
                break;
            }
            if !self.routes.get_by_key(&key).is_empty() {
                continue;
            }
            left -= 1;
            if self.misses.remembers(&key) {
                continue;
            }
            self.counters.tenant_lookups.fetch_add(1, Ordering::Relaxed);
            let looked = if is_phone {
                store::lookup_route(&self.db, &self.keyring, id)
                    .await
                    .map(|r| r.into_iter().collect::<Vec<_>>())
            } else {
                store::lookup_account(&self.db, &self.keyring, id).await
            };
            match looked {
                Ok(routes) if routes.is_empty() => self.misses.remember(key),
                Ok(routes) => found.extend(routes.into_iter().map(Arc::new)),
                Err(e) => tracing::warn!(error = %Report(&e), "tenant lookup failed"),
            }
        }
        found
    }

    /// The route of the tenant owning a phone number id, for an item of a
    /// verified body: from the cache, else straight from the database (a
    /// tenant created since the cache's last refresh).
    async fn route_of_number(&self, phone_number_id: &str) -> Option<Arc<Route>> {
        if let Some(r) = self
            .routes
            .get_by_key(&store::phone_key(phone_number_id))
            .into_iter()
            .next()
        {
            return Some(r);
        }
        store::lookup_route(&self.db, &self.keyring, phone_number_id)
            .await
            .map_err(|e| tracing::warn!(error = %Report(&e), "tenant lookup failed"))
            .ok()
            .flatten()
            .map(Arc::new)
    }

    /// The routes of the tenants of an account, for a change of a verified
    /// body.
    async fn routes_of_account(&self, business_account_id: &str) -> Vec<Arc<Route>> {
        let cached = self
            .routes
            .get_by_key(&store::account_key(business_account_id));
        if !cached.is_empty() {
            return cached;
        }
        store::lookup_account(&self.db, &self.keyring, business_account_id)
            .await
            .map_err(|e| tracing::warn!(error = %Report(&e), "tenant lookup failed"))
            .unwrap_or_default()
            .into_iter()
            .map(Arc::new)
            .collect()
    }
}
