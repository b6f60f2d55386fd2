//! Postgres: connection pools and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};

/// The migrations in `migrations/`, embedded in the binary. Their
/// bookkeeping table `_sqlx_migrations` lives in the `alphadome` schema, so
/// nothing is added to `public` beyond what the baseline declares.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool. Every connection resolves unqualified names in
/// `alphadome` first.
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose_secret())?
        .options([("search_path", "alphadome,public")])
        .application_name("alphadome");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Connections a hot path keeps between its calls instead of handing them
/// back to the pool after each one.
///
/// sqlx pings a connection on its way back into the pool, and again on its
/// way out: a one-statement call through the pool costs three round trips
/// to the database and three wake-ups of its backend (at 1,000 messages a
/// second that was ten database context switches per message). A kept
/// connection costs one. Use [`Sticky::get`], run the statements on the
/// [`Kept`] connection, and [`Kept::keep`] it when they succeeded; a
/// connection dropped without `keep` (an error, a cancelled call) goes back
/// to the pool, which checks it and replaces it if it is broken.
#[derive(Clone)]
pub struct Sticky {
    pool: PgPool,
    idle: std::sync::Arc<std::sync::Mutex<Vec<PoolConnection<Postgres>>>>,
    max_idle: usize,
}

impl Sticky {
    /// Keeps at most `max_idle` connections of `pool` between calls (the
    /// calls the hot path makes at once).
    pub fn new(pool: PgPool, max_idle: usize) -> Self {
        Self {
            pool,
            idle: Default::default(),
            max_idle: max_idle.max(1),
        }
    }

    /// A kept connection, or one from the pool when none is idle.
    pub async fn get(&self) -> Result<Kept, sqlx::Error> {
        let kept = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match kept {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(Kept {
            conn,
            home: self.clone(),
        })
    }
}

/// A connection from [`Sticky::get`].
pub struct Kept {
    conn: PoolConnection<Postgres>,
    home: Sticky,
}

impl Kept {
    /// Keeps the connection for the next call (its statements succeeded,
    /// so it is healthy and outside any transaction).
    pub fn keep(self) {
        let Kept { conn, home } = self;
        let spare = match home.idle.lock() {
            Ok(mut idle) if idle.len() < home.max_idle => {
                idle.push(conn);
                None
            }
            _ => Some(conn),
        };
        // More than `max_idle` at once: this one goes back to the pool.
        drop(spare);
    }
}

impl std::ops::Deref for Kept {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// The database roles the services run as (created by the migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRole {
    Ingress,
    Responder,
    Sender,
    Logger,
    /// The dashboard and its JSON API, acting for one tenant per request.
    Dashboard,
}

impl ServiceRole {
    pub fn name(self) -> &'static str {
        match self {
            ServiceRole::Ingress => "alphadome_ingress",
            ServiceRole::Responder => "alphadome_responder",
            ServiceRole::Sender => "alphadome_sender",
            ServiceRole::Logger => "alphadome_logger",
            ServiceRole::Dashboard => "alphadome_dashboard",
        }
    }
}

/// Opens a pool whose connections act as `role`: row-level security then
/// shows them only the tenant each transaction sets ([`scoped`]).
pub async fn connect_as(
    url: &SecretString,
    role: ServiceRole,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose_secret())?
        .options([("search_path", "alphadome,public")])
        .application_name(role.name());
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::query(&format!("SET ROLE {}", role.name()))
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect_with(options)
        .await
}

/// Begins a transaction acting for `tenant`: row-level security shows and
/// accepts only that tenant's rows until it ends (the setting is
/// transaction-local, so a pooled connection never carries it on).
pub async fn scoped(
    pool: &PgPool,
    tenant: uuid::Uuid,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    set_tenant(&mut tx, tenant).await?;
    Ok(tx)
}

/// Sets the tenant of the current transaction.
async fn set_tenant(tx: &mut sqlx::PgConnection, tenant: uuid::Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('alphadome.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(tx)
        .await
        .map(|_| ())
}

/// Applies every pending migration (a no-op when all are applied).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    sqlx::query("CREATE SCHEMA IF NOT EXISTS alphadome")
        .execute(pool)
        .await
        .map_err(MigrateError::Execute)?;
    MIGRATOR.run(pool).await
}

/// Whether `e` is a violation of the constraint (or unique index) `name`.
pub fn is_constraint(e: &sqlx::Error, name: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.constraint() == Some(name))
}

/// How many migrations the database has applied.
pub async fn applied_migrations(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM alphadome._sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}
