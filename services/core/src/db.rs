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
