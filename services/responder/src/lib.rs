//! responder: turns each inbound message into at most one reply.
//!
//! It keeps every tenant's context (settings, templates, FAQ index) in
//! memory, refreshed when the tenant changes, and for each message decides
//! (in this order): log only (tenant inactive, bot disabled, auto-reply off,
//! reaction); an active handoff silences the bot; a request for a person
//! starts one; the tenant's FAQ; the tenant's LLM when nothing matches and
//! AI is on; else the fallback reply; last, the limits. The reply is
//! published with an id derived from the inbound wamid, so the sender sends
//! it at most once however often the message is redelivered.
//!
//! Layout: [`consumer`] is the transport (the inbound stream, the steps of
//! one message, publishing), [`decide`] the decisions as plain functions,
//! [`store`] the SQL; [`context`], [`matcher`], [`llm`], [`prompt`],
//! [`limits`] and [`escalation`] are the parts a decision uses.

pub mod consumer;
pub mod context;
pub mod decide;
pub mod embed;
pub mod escalation;
pub mod limits;
pub mod llm;
pub mod matcher;
pub mod prompt;
pub mod semantic;
pub mod store;
pub mod teach;

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::{Bus, BusError, ConsumerSettings, StreamKind};
use alphadome_core::config::Config;
use alphadome_core::crypto::Keyring;
use alphadome_core::tenant::{RefreshError, TenantCache};
use alphadome_core::{CancellationToken, Report};
use sqlx::PgPool;
use uuid::Uuid;

pub use context::TenantContext;
pub use decide::{outbound_id, Decision, MEDIA_REPLY};

/// How long a decrypted AI key is reused before it is decrypted again.
pub const AI_KEY_CACHE_AGE: Duration = Duration::from_secs(300);

/// The responder's durable consumer on the inbound stream.
pub const CONSUMER: &str = "responder";

/// How long per-message limit records are kept: longer than Meta retries a
/// webhook (7 days), so a late retry is still recognised.
pub const LIMIT_RECORD_DAYS: i32 = 8;

/// Why the responder could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("loading the tenants' contexts")]
    Tenants(#[from] RefreshError),
    #[error("building the LLM client")]
    Http(#[source] reqwest::Error),
    #[error("consuming the inbound stream")]
    Bus(#[from] BusError),
}

/// The running responder's state.
pub struct Responder {
    /// One gate per tenant for its LLM calls (`ALPHADOME_AI_CALLS_PER_TENANT`).
    ai_gates: alphadome_core::gate::KeyedGates<Uuid>,
    bus: Bus,
    db: PgPool,
    contexts: Arc<TenantCache<TenantContext>>,
    default_fallback: String,
    keyring: Arc<Keyring>,
    llm: llm::LlmClient,
    escalator: escalation::Escalator,
    admission: limits::Admission,
    /// Each message recorded in its customer's session (the window, new
    /// conversations, opt-outs, flow states).
    sessions: alphadome_core::conversation::Sessions,
    /// Decrypted AI keys, by tenant, with the ciphertext they came from and
    /// when: held at most [`AI_KEY_CACHE_AGE`].
    ai_keys: std::sync::Mutex<
        std::collections::HashMap<Uuid, (String, secrecy::SecretString, std::time::Instant)>,
    >,
    /// The embedding model, when it loaded.
    model: Option<Arc<semantic::Model>>,
    /// Computes entry vectors in the background, with the model.
    backfill: Option<Arc<semantic::Backfill>>,
    /// What `/readyz` says of the model.
    model_status: String,
    /// Messages this instance handled (for tests).
    pub handled: std::sync::atomic::AtomicU64,
    /// Messages whose meaning was asked of the model.
    pub semantic_asked: std::sync::atomic::AtomicU64,
}

impl Responder {
    /// Loads every tenant's context and keeps it current until `shutdown`;
    /// removes expired limit records hourly.
    pub async fn start(
        config: &Config,
        db: PgPool,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ResponderError> {
        let (model, model_status) =
            load_model(config.embedding_model.as_deref(), config.embedding_budget);
        let contexts = TenantCache::new(|_: &TenantContext| Vec::new(), None);
        let backfill = model
            .clone()
            .map(|m| semantic::Backfill::new(db.clone(), bus.clone(), m));
        let b = backfill.clone();
        let load = move |db: PgPool, id: Uuid| {
            let b = b.clone();
            async move { context::load(&db, b.as_ref(), id).await }
        };
        contexts.refresh(&db, &load).await?;
        if let Some(b) = &backfill {
            b.started();
        }
        contexts.spawn_refresher(
            db.clone(),
            bus.clone(),
            config.tenant_refresh,
            shutdown.clone(),
            load,
        );
        spawn_housekeeping(db.clone(), shutdown);
        Ok(Arc::new(Self {
            bus: bus.clone(),
            db: db.clone(),
            contexts,
            default_fallback: config.default_fallback_reply.clone(),
            keyring: config.keyring.clone(),
            llm: llm::LlmClient::new(config.ai.clone()).map_err(ResponderError::Http)?,
            escalator: escalation::Escalator::new(
                db.clone(),
                bus.clone(),
                config.smtp_url.as_ref(),
                &config.smtp_from,
            ),
            admission: limits::Admission::new(db.clone()),
            sessions: alphadome_core::conversation::Sessions::new(db.clone()),
            ai_keys: Default::default(),
            ai_gates: alphadome_core::gate::KeyedGates::new(config.ai.calls_per_tenant),
            model,
            backfill,
            model_status,
            handled: Default::default(),
            semantic_asked: Default::default(),
        }))
    }

    /// What `/readyz` says of the embedding model.
    pub fn model_status(&self) -> &str {
        &self.model_status
    }

    /// The embedding model, when it runs.
    pub fn model(&self) -> Option<&Arc<semantic::Model>> {
        self.model.as_ref()
    }

    /// Consumes the inbound stream until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        settings: ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Result<(), ResponderError> {
        let me = self.clone();
        alphadome_core::bus::run_consumer(
            self.bus.clone(),
            StreamKind::Inbound,
            CONSUMER,
            settings,
            shutdown,
            move |payload, meta| {
                let me = me.clone();
                async move { me.handle(payload, meta).await }
            },
        )
        .await?;
        if let Some(m) = &self.model {
            use std::sync::atomic::Ordering::Relaxed;
            tracing::info!(
                messages = self.handled.load(Relaxed),
                asked_the_model = self.semantic_asked.load(Relaxed),
                remembered = m.remembered_hits.load(Relaxed),
                late = m.late.load(Relaxed),
                texts_embedded = m.texts.load(Relaxed),
                forward_passes = m.batches.load(Relaxed),
                "embedding model use"
            );
        }
        Ok(())
    }
}

/// Loads the embedding model in `dir`, saying clearly at start-up what
/// happens without it; returns it and the line `/readyz` shows.
fn load_model(
    dir: Option<&std::path::Path>,
    budget: Duration,
) -> (Option<Arc<semantic::Model>>, String) {
    let Some(dir) = dir else {
        tracing::warn!("ALPHADOME_EMBEDDING_MODEL is not set: FAQs are matched by their words only (bash scripts/setup.sh installs the model)");
        return (
            None,
            "not loaded (ALPHADOME_EMBEDDING_MODEL is not set); FAQs matched by their words only"
                .into(),
        );
    };
    let started = std::time::Instant::now();
    match semantic::Model::start(dir, budget) {
        Ok(m) => {
            tracing::info!(model = semantic::MODEL_NAME, dir = %dir.display(), secs = started.elapsed().as_secs_f32(), "embedding model loaded: FAQs are matched by meaning");
            (Some(m), format!("{} loaded", semantic::MODEL_NAME))
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %Report(&e), "the embedding model could not be loaded: FAQs are matched by their words only");
            (
                None,
                format!(
                    "not loaded ({}: {}); FAQs matched by their words only",
                    dir.display(),
                    Report(&e)
                ),
            )
        }
    }
}

/// Removes limit records older than [`LIMIT_RECORD_DAYS`], hourly until
/// `shutdown` (every replica does it; deleting what another just deleted
/// costs nothing).
fn spawn_housekeeping(db: PgPool, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match store::purge_limit_records(&db, LIMIT_RECORD_DAYS).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "expired limit records removed"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %Report(&e), "removing expired limit records failed; will retry in an hour")
                }
            }
        }
    })
}
