//! Runs any set of services in one process: all of them for `alphadome up`,
//! one for `alphadome run <service>`. Every service is a library started
//! the same way here and in the tests.

use alphadome_core::bus::{Bus, ConsumerSettings};
use alphadome_core::config::Config;
use alphadome_core::{db, CancellationToken};
use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{health, server};

/// A service of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Ingress,
    Responder,
    Sender,
    Logger,
    Admin,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Ingress,
        Service::Responder,
        Service::Sender,
        Service::Logger,
        Service::Admin,
    ];

    /// The service's name in traces.
    pub fn telemetry_name(self) -> &'static str {
        match self {
            Service::Ingress => "alphadome-ingress",
            Service::Responder => "alphadome-responder",
            Service::Sender => "alphadome-sender",
            Service::Logger => "alphadome-logger",
            Service::Admin => "alphadome-admin",
        }
    }
}

/// Unacknowledged messages a consumer allows per message in hand.
const PENDING_PER_IN_HAND: i64 = 16;

/// The settings of a consumer that works on `in_hand` messages at once.
///
/// Messages mostly wait (a responder's for its tenant's LLM, a sender's
/// for Meta or for its number's rate), so each service keeps many in hand:
/// more keeps a tenant that waits from holding back the others; fewer uses
/// less memory under a backlog. `max_ack_pending` counts, besides the
/// messages in hand, those a service put back on the stream with a delay
/// (a tenant's crowded LLM, a number's crowded send rate): it is kept well
/// above the window, so one tenant's backlog waiting on the server never
/// stops the deliveries to everyone else. It costs no memory here; the
/// window does.
pub fn in_hand(in_hand: usize) -> ConsumerSettings {
    ConsumerSettings {
        concurrency: in_hand,
        max_ack_pending: PENDING_PER_IN_HAND * in_hand as i64,
        ..ConsumerSettings::default()
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub services: Vec<Service>,
    /// Apply pending migrations first (the local default).
    pub migrate: bool,
}

impl RunOptions {
    pub fn new(services: &[Service]) -> Self {
        Self {
            services: services.to_vec(),
            migrate: false,
        }
    }
}

/// The shared connections of one process.
struct Shared {
    config: Config,
    /// The owner pool (migrations, health, the admin path).
    pool: sqlx::PgPool,
    bus: Bus,
    shutdown: CancellationToken,
    /// What `/readyz` reports beyond its checks.
    details: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Shared {
    /// A pool of `max` connections acting as `role`: row-level security
    /// confines each service to the tenant each transaction sets.
    async fn pool_as(&self, role: db::ServiceRole, max: u32) -> anyhow::Result<sqlx::PgPool> {
        db::connect_as(&self.config.database_url, role, max)
            .await
            .with_context(|| format!("cannot connect to Postgres as {}", role.name()))
    }
}

type ServiceTask = anyhow::Result<()>;

/// Runs `opts.services` until `shutdown`, serving HTTP (webhook when
/// ingress runs, admin API when admin runs, `/healthz` and `/readyz`
/// always) on `listener`. In-flight work is finished before it returns.
pub async fn run(
    config: Config,
    opts: RunOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Postgres serves best with few busy connections (a few per core): the
    // pools are small, and every process stays far below max_connections.
    let pool = db::connect(&config.database_url, (config.db_pool_size / 2).max(2))
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    if opts.migrate {
        db::migrate(&pool).await.context("migrations failed")?;
    }
    let bus = Bus::connect(&config.nats_url, &config.nats_prefix).await?;
    bus.ensure_streams(config.duplicate_window).await?;
    let shared = Shared {
        config,
        pool,
        bus,
        shutdown,
        details: Default::default(),
    };
    let mut router = health::router(health::Readiness {
        db: shared.pool.clone(),
        nats: shared.bus.client.clone(),
        details: shared.details.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for service in &opts.services {
        if let Some(routes) = start(&shared, *service, &mut tasks).await? {
            router = router.merge(routes);
        }
    }
    let names: Vec<String> = opts
        .services
        .iter()
        .map(|s| format!("{s:?}").to_lowercase())
        .collect();
    tracing::info!(services = ?names, addr = %listener.local_addr()?, "alphadome running");
    serve_until_done(shared, listener, router, tasks).await
}

/// Starts one service: its routes to serve, if it has any; its consumer
/// loop, if it has one, into `tasks`.
async fn start(
    shared: &Shared,
    service: Service,
    tasks: &mut tokio::task::JoinSet<ServiceTask>,
) -> anyhow::Result<Option<axum::Router>> {
    let (config, bus, shutdown) = (&shared.config, &shared.bus, &shared.shutdown);
    let (size, small) = (config.db_pool_size, (config.db_pool_size / 2).max(2));
    match service {
        Service::Ingress => {
            let db = shared.pool_as(db::ServiceRole::Ingress, small).await?;
            let ingress =
                alphadome_ingress::Ingress::start(config, db, bus.clone(), shutdown.clone())
                    .await
                    .context("ingress start-up")?;
            Ok(Some(alphadome_ingress::router(ingress)))
        }
        Service::Admin => {
            alphadome_admin::tokens::TokenWatch::new(config, shared.pool.clone(), bus.clone())
                .context("admin start-up")?
                .spawn(config.token_check_every, shutdown.clone());
            let tenant_db = shared.pool_as(db::ServiceRole::Dashboard, small).await?;
            Ok(Some(alphadome_admin::http::router(
                alphadome_admin::http::Connections {
                    db: shared.pool.clone(),
                    tenant_db,
                    bus: bus.clone(),
                    keyring: config.keyring.clone(),
                },
                alphadome_admin::http::ApiSettings {
                    token: config.admin_token.clone(),
                    country_code: config.country_code.clone(),
                    verify_token_max_age_days: config.verify_token_max_age_days,
                    trust_x_forwarded_for: config.trust_x_forwarded_for,
                },
            )))
        }
        Service::Responder => {
            let db = shared.pool_as(db::ServiceRole::Responder, size).await?;
            let r =
                alphadome_responder::Responder::start(config, db, bus.clone(), shutdown.clone())
                    .await
                    .context("responder start-up")?;
            if let Ok(mut d) = shared.details.lock() {
                d.push(format!("embedding model: {}", r.model_status()));
            }
            let (s, settings) = (shutdown.clone(), in_hand(config.responder_in_hand));
            tasks.spawn(async move { r.run(settings, s).await.context("responder") });
            Ok(None)
        }
        Service::Sender => {
            let db = shared.pool_as(db::ServiceRole::Sender, size).await?;
            let snd = alphadome_sender::Sender::start(config, db, bus.clone(), shutdown.clone())
                .await
                .context("sender start-up")?;
            let (s, settings) = (shutdown.clone(), in_hand(config.sender_in_hand));
            tasks.spawn(async move { snd.run(settings, s).await.context("sender") });
            Ok(None)
        }
        Service::Logger => {
            let db = shared.pool_as(db::ServiceRole::Logger, size).await?;
            let (b, s) = (bus.clone(), shutdown.clone());
            tasks.spawn(async move { alphadome_logger::run(db, b, s).await.context("logger") });
            Ok(None)
        }
    }
}

/// Serves HTTP until shutdown, or until a service ends on its own (which
/// stops everything); then waits for every service to finish its work in
/// hand.
async fn serve_until_done(
    shared: Shared,
    listener: TcpListener,
    router: axum::Router,
    mut tasks: tokio::task::JoinSet<ServiceTask>,
) -> anyhow::Result<()> {
    let shutdown = shared.shutdown.clone();
    let limits = server::Limits {
        header_timeout: shared.config.header_timeout,
        connections_per_source: (!shared.config.trust_x_forwarded_for)
            .then_some(shared.config.max_connections_per_source),
    };
    let server = server::serve(listener, router, limits, shutdown.clone());
    let server_result = {
        let mut server = Box::pin(server);
        tokio::select! {
            r = &mut server => r,
            Some(done) = tasks.join_next() => {
                // A service ended before shutdown: stop everything.
                shutdown.cancel();
                let r = server.await;
                done.context("service task panicked")??;
                r
            }
        }
    };
    shutdown.cancel();
    while let Some(done) = tasks.join_next().await {
        done.context("service task panicked")??;
    }
    shared.bus.client.flush().await.ok();
    shared.pool.close().await;
    server_result.context("HTTP server")?;
    tracing::info!("alphadome stopped");
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down: finishing in-flight work");
        token.cancel();
    });
}
