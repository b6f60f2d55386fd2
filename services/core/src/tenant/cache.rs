//! [`TenantCache`]: per-tenant values kept in memory that follow the
//! database. It polls the tenants' versions (`bot_tenants.updated_at`,
//! which triggers bump on any change to a tenant's templates, training data
//! or settings) and reloads at once when a change is announced on NATS.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::Report;

type Loaded<T> = (Arc<T>, DateTime<Utc>, Instant);

/// A map of per-tenant values that follows the database. Values are built
/// by a loader; secondary keys (a phone number id, a business account id
/// several tenants may share) can be derived from each value.
pub struct TenantCache<T> {
    by_id: RwLock<HashMap<Uuid, Loaded<T>>>,
    by_key: RwLock<HashMap<String, Vec<Uuid>>>,
    keys_of: fn(&T) -> Vec<String>,
    max_age: Option<Duration>,
}

impl<T: Send + Sync + 'static> TenantCache<T> {
    /// An empty cache. `keys_of` derives the secondary keys; entries older
    /// than `max_age` are reloaded even when unchanged.
    pub fn new(keys_of: fn(&T) -> Vec<String>, max_age: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            by_id: RwLock::new(HashMap::new()),
            by_key: RwLock::new(HashMap::new()),
            keys_of,
            max_age,
        })
    }

    /// The value for tenant `id`.
    pub fn get(&self, id: Uuid) -> Option<Arc<T>> {
        self.by_id.read().ok()?.get(&id).map(|(v, _, _)| v.clone())
    }

    /// Every value with the secondary key `key`.
    pub fn get_by_key(&self, key: &str) -> Vec<Arc<T>> {
        let ids = self
            .by_key
            .read()
            .ok()
            .and_then(|k| k.get(key).cloned())
            .unwrap_or_default();
        ids.into_iter().filter_map(|id| self.get(id)).collect()
    }

    /// Number of tenants held.
    pub fn len(&self) -> usize {
        self.by_id.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no tenant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put(&self, id: Uuid, value: Option<T>, version: DateTime<Utc>) {
        let mut by_id = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let mut by_key = self.by_key.write().unwrap_or_else(|p| p.into_inner());
        if let Some((old, _, _)) = by_id.remove(&id) {
            for k in (self.keys_of)(&old) {
                if let Some(ids) = by_key.get_mut(&k) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        by_key.remove(&k);
                    }
                }
            }
        }
        if let Some(v) = value {
            for k in (self.keys_of)(&v) {
                let ids = by_key.entry(k).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            by_id.insert(id, (Arc::new(v), version, Instant::now()));
        }
    }

    /// Brings the cache in line with the database: loads new and changed
    /// tenants, drops deleted ones. Returns how many were (re)loaded.
    pub async fn refresh<L, Fut, E>(&self, pool: &PgPool, load: &L) -> Result<usize, RefreshError>
    where
        L: Fn(PgPool, Uuid) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let versions = super::store::versions(pool)
            .await
            .map_err(RefreshError::Versions)?;
        let (stale, gone) = {
            let held = self.by_id.read().unwrap_or_else(|p| p.into_inner());
            let stale: Vec<(Uuid, DateTime<Utc>)> = versions
                .iter()
                .filter(|(id, v)| match held.get(id) {
                    None => true,
                    Some((_, seen, at)) => {
                        seen != v || self.max_age.is_some_and(|m| at.elapsed() > m)
                    }
                })
                .copied()
                .collect();
            let gone: Vec<Uuid> = held
                .keys()
                .filter(|id| !versions.iter().any(|(v, _)| v == *id))
                .copied()
                .collect();
            (stale, gone)
        };
        for id in gone {
            self.put(id, None, DateTime::<Utc>::MIN_UTC);
        }
        let n = stale.len();
        for (id, version) in stale {
            let value = load(pool.clone(), id)
                .await
                .map_err(|e| RefreshError::Load {
                    tenant: id,
                    source: Box::new(e),
                })?;
            self.put(id, value, version);
        }
        Ok(n)
    }

    /// Keeps the cache current until `shutdown`: refreshes every `every`
    /// and at once when a tenant change is announced on NATS.
    pub fn spawn_refresher<L, Fut, E>(
        self: &Arc<Self>,
        pool: PgPool,
        bus: Bus,
        every: Duration,
        shutdown: CancellationToken,
        load: L,
    ) -> tokio::task::JoinHandle<()>
    where
        L: Fn(PgPool, Uuid) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut changes = bus
                .client
                .subscribe(bus.tenant_changed_subject())
                .await
                .ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    Some(_) = async {
                        match changes.as_mut() {
                            Some(s) => s.next().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                if let Err(e) = cache.refresh(&pool, &load).await {
                    tracing::warn!(error = %Report(&e), "tenant cache refresh failed; keeping the last known state");
                }
            }
        })
    }
}

/// Why a cache refresh stopped (the cache keeps what it held).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("reading the tenants' versions")]
    Versions(#[source] sqlx::Error),
    #[error("loading tenant {tenant}")]
    Load {
        tenant: Uuid,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
