//! Postgres: connection pools and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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

/// The database roles the services run as (created by the migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRole {
    Ingress,
    Responder,
    Sender,
    Logger,
}

impl ServiceRole {
    pub fn name(self) -> &'static str {
        match self {
            ServiceRole::Ingress => "alphadome_ingress",
            ServiceRole::Responder => "alphadome_responder",
            ServiceRole::Sender => "alphadome_sender",
            ServiceRole::Logger => "alphadome_logger",
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
