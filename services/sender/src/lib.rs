//! sender: delivers replies through the Graph API with each tenant's own
//! token, exactly once where the protocol allows it.
//!
//! Each reply goes through the steps of [`deliver`]: pace (per number and
//! per customer), claim (its row in `alphadome.outbound_messages`, keyed by
//! the id derived from the inbound wamid: a reply already sent is never
//! sent again), post (each part of a long reply), record (after each part
//! Meta accepted), log. Meta's errors are handled by code: throughput,
//! generic and server errors back off with jitter; the pair rate limit
//! backs off 4^n seconds; an invalid token (190) holds the tenant's sends
//! and raises an alert; permanent errors are dead-lettered.
//!
//! Layout: [`consumer`] is the transport, [`deliver`] the steps,
//! [`decide`] the decisions as plain functions, [`store`] the SQL,
//! [`pacing`] and [`graph`] the limits and the Graph API client.

pub mod consumer;
pub mod decide;
pub mod deliver;
pub mod graph;
pub mod pacing;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::batch::Coalescer;
use alphadome_core::bus::{Bus, BusError, ConsumerSettings, StreamKind};
use alphadome_core::config::Config;
use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_core::tenant::{self, RefreshError, TenantCache};
use alphadome_core::{audit, CancellationToken, Report};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

pub use decide::callback_data;

/// The sender's durable consumer on the outbound stream.
pub const CONSUMER: &str = "sender";

/// How long a decrypted token is cached before it is decrypted again.
pub const TOKEN_CACHE_AGE: Duration = Duration::from_secs(300);

/// How long a send Meta accepted keeps trying to be recorded through a
/// database outage.
pub const RECORD_PATIENCE: Duration = Duration::from_secs(600);

/// Why the sender could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("loading the tenants' tokens")]
    Tenants(#[from] RefreshError),
    #[error("building the Graph API client")]
    Http(#[source] reqwest::Error),
    #[error("consuming the outbound stream")]
    Bus(#[from] BusError),
}

/// What the sender knows about a tenant. The token is decrypted and held
/// for at most [`TOKEN_CACHE_AGE`].
pub struct SenderTenant {
    pub id: Uuid,
    pub phone_number_id: Option<String>,
    pub token: Option<SecretString>,
    pub token_invalid: bool,
    pub log_conversations: bool,
    pub log_errors: bool,
}

/// Loads what the sender needs of a tenant, decrypting (and auditing) its
/// token.
async fn load_tenant(
    db: PgPool,
    keyring: Arc<Keyring>,
    id: Uuid,
) -> Result<Option<SenderTenant>, sqlx::Error> {
    let Some(t) = tenant::store::load_config(&db, id).await? else {
        return Ok(None);
    };
    let stored = tenant::store::load_credential(&db, id, SecretColumn::WhatsappAccessToken).await?;
    let settings = tenant::store::load_settings(&db, id).await?;
    let token = stored.as_deref().and_then(|s| {
        keyring
            .decrypt(id, SecretColumn::WhatsappAccessToken, s)
            .map_err(|e| tracing::error!(tenant_id = %id, error = %Report(&e), "cannot decrypt the tenant's WhatsApp token"))
            .ok()
    });
    if token.is_some() {
        audit::record_use(
            &db,
            id,
            SecretColumn::WhatsappAccessToken,
            "service:sender",
            "send replies (cache fill)",
        )
        .await;
    }
    Ok(Some(SenderTenant {
        id,
        phone_number_id: t.whatsapp_phone_number_id,
        token,
        token_invalid: t.whatsapp_token_invalid_at.is_some(),
        log_conversations: settings.log_conversations,
        log_errors: settings.log_errors,
    }))
}

/// The running sender's state.
pub struct Sender {
    bus: Bus,
    db: PgPool,
    keyring: Arc<Keyring>,
    graph: Arc<graph::GraphClient>,
    tenants: Arc<TenantCache<SenderTenant>>,
    pacer: pacing::Pacer,
    /// A claim outlives any request it covers (the time-out), with margin.
    claim_lease: Duration,
    /// Claims and records made at the same moment share one call.
    claims: Coalescer<store::ClaimRequest, store::ClaimRow>,
    records: Coalescer<store::RecordRequest, ()>,
    /// How long a send that may have reached Meta waits for its status
    /// webhook before it is tried again (`ALPHADOME_SEND_RECONCILE_WAIT_MS`).
    reconcile_wait: Duration,
}

impl Sender {
    /// Builds the sender and keeps its tenant cache current until `shutdown`.
    pub async fn start(
        config: &Config,
        db: PgPool,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, SenderError> {
        let tenants = TenantCache::new(|_: &SenderTenant| Vec::new(), Some(TOKEN_CACHE_AGE));
        let keyring = config.keyring.clone();
        let load = {
            let keyring = keyring.clone();
            move |db: PgPool, id: Uuid| load_tenant(db, keyring.clone(), id)
        };
        tenants.refresh(&db, &load).await?;
        tenants.spawn_refresher(
            db.clone(),
            bus.clone(),
            config.tenant_refresh,
            shutdown,
            load,
        );
        let claim_lease = config.send_timeout * 2 + Duration::from_secs(5);
        Ok(Arc::new(Self {
            bus,
            claims: store::claim_batcher(db.clone(), claim_lease),
            records: store::record_batcher(db.clone()),
            reconcile_wait: config.send_reconcile_wait,
            db,
            keyring,
            graph: Arc::new(
                graph::GraphClient::new(&config.graph_url, config.send_timeout)
                    .map_err(SenderError::Http)?,
            ),
            tenants,
            pacer: pacing::Pacer::new(config.send_mps, config.pair_burst),
            claim_lease,
        }))
    }

    /// Consumes the outbound stream until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        settings: ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Result<(), SenderError> {
        let me = self.clone();
        alphadome_core::bus::run_consumer(
            self.bus.clone(),
            StreamKind::Outbound,
            CONSUMER,
            settings,
            shutdown,
            move |payload, meta| {
                let me = me.clone();
                async move { me.handle(payload, meta).await }
            },
        )
        .await?;
        Ok(())
    }

    async fn tenant(&self, id: Uuid) -> Result<Option<Arc<SenderTenant>>, sqlx::Error> {
        if let Some(t) = self.tenants.get(id) {
            return Ok(Some(t));
        }
        Ok(load_tenant(self.db.clone(), self.keyring.clone(), id)
            .await?
            .map(Arc::new))
    }
}
