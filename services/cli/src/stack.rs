//! Runs any set of services in one process: all of them for `alphadome up`,
//! one for `alphadome run <service>`. Every service is a library started
//! the same way here and in the tests.

use alphadome_core::bus::{Bus, ConsumerSettings};
use alphadome_core::config::Config;
use alphadome_core::{db, CancellationToken};
use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::health;

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
    let size = config.db_pool_size;
    let small = (size / 2).max(2);
    let pool = db::connect(&config.database_url, small)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    if opts.migrate {
        db::migrate(&pool).await.context("migrations failed")?;
    }
    let bus = Bus::connect(&config.nats_url, &config.nats_prefix).await?;
    bus.ensure_streams(config.duplicate_window).await?;
    // Each service works through a pool of its own least-privilege role, so
    // row-level security confines it to the tenant each transaction sets.
    let as_role = |role: db::ServiceRole, max: u32| {
        let url = config.database_url.clone();
        async move {
            db::connect_as(&url, role, max)
                .await
                .with_context(|| format!("cannot connect to Postgres as {}", role.name()))
        }
    };

    let mut router = health::router(health::Readiness {
        db: pool.clone(),
        nats: bus.client.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let has = |s: Service| opts.services.contains(&s);

    if has(Service::Ingress) {
        let ingress = alphadome_ingress::Ingress::start(
            &config,
            as_role(db::ServiceRole::Ingress, small).await?,
            bus.clone(),
            shutdown.clone(),
        )
        .await
        .context("ingress start-up")?;
        router = router.merge(alphadome_ingress::router(ingress));
    }
    if has(Service::Admin) {
        if let Some(api) = alphadome_admin::http::router(
            pool.clone(),
            config.admin_token.clone(),
            &config.country_code,
            config.verify_token_max_age_days,
        ) {
            router = router.merge(api);
        }
        alphadome_admin::tokens::TokenWatch::new(&config, pool.clone(), bus.clone())
            .context("admin start-up")?
            .spawn(config.token_check_every, shutdown.clone());
    }
    if has(Service::Responder) {
        let r = alphadome_responder::Responder::start(
            &config,
            as_role(db::ServiceRole::Responder, size).await?,
            bus.clone(),
            shutdown.clone(),
        )
        .await
        .context("responder start-up")?;
        let (s, settings) = (shutdown.clone(), in_hand(config.responder_in_hand));
        tasks.spawn(async move {
            r.run(settings, s)
                .await
                .map_err(anyhow::Error::from)
                .context("responder")
        });
    }
    if has(Service::Sender) {
        let snd = alphadome_sender::Sender::start(
            &config,
            as_role(db::ServiceRole::Sender, size).await?,
            bus.clone(),
            shutdown.clone(),
        )
        .await
        .context("sender start-up")?;
        let (s, settings) = (shutdown.clone(), in_hand(config.sender_in_hand));
        tasks.spawn(async move {
            snd.run(settings, s)
                .await
                .map_err(anyhow::Error::from)
                .context("sender")
        });
    }
    if has(Service::Logger) {
        let (p, b, s) = (
            as_role(db::ServiceRole::Logger, size).await?,
            bus.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            alphadome_logger::run(p, b, s)
                .await
                .map_err(anyhow::Error::from)
                .context("logger")
        });
    }
    let names: Vec<String> = opts
        .services
        .iter()
        .map(|s| format!("{s:?}").to_lowercase())
        .collect();
    tracing::info!(services = ?names, addr = %listener.local_addr()?, "alphadome running");

    let server = health::serve(listener, router, shutdown.clone());
    let server_result = {
        let shutdown = shutdown.clone();
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
    bus.client.flush().await.ok();
    pool.close().await;
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
