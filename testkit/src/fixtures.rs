//! Per-test resources on the shared servers: a fresh PostgreSQL database
//! (dropped when the test ends), a NATS prefix of its own (its streams
//! deleted when the test ends), a fresh master key, and polling helpers.
//!
//! `ALPHADOME_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and
//! `ALPHADOME_TEST_NATS_URL` (default `nats://127.0.0.1:4222`) name the
//! servers.

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::Bus;
use alphadome_core::crypto::Keyring;
use alphadome_core::db;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

/// URL of the Postgres server's maintenance database.
pub fn admin_database_url() -> String {
    std::env::var("ALPHADOME_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the NATS server.
pub fn nats_url() -> String {
    std::env::var("ALPHADOME_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// An empty database (no migrations applied).
    pub async fn empty() -> Self {
        let name = format!("alphadome_t_{}", Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_database_url())
            .await
            .expect("connect to the test Postgres server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let base = admin_database_url();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{}", &base[..i], name),
            None => panic!("ALPHADOME_TEST_DATABASE_URL has no database part"),
        };
        let pool = db::connect(&SecretString::from(url.clone()), 10)
            .await
            .expect("connect to test database");
        Self { name, url, pool }
    }

    /// A database with every migration applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        db::migrate(&db.pool).await.expect("migrations apply");
        db
    }
}

/// Runs clean-up work from a `Drop`: on a thread and runtime of its own,
/// since the test's runtime may be shutting down; waits for it.
pub(crate) fn clean_up<F: std::future::Future<Output = ()> + Send + 'static>(work: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // FORCE ends the test's own pooled connections.
        clean_up(async move {
            if let Ok(admin) = PgPool::connect(&admin_database_url()).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
        });
    }
}

/// A fresh master key ring.
pub fn keyring() -> (String, Arc<Keyring>) {
    let key = Keyring::generate_key();
    let ring = Keyring::from_base64(&key, &[]).expect("generated key is valid");
    (key, Arc::new(ring))
}

/// A NATS prefix of its own for one test; its streams are deleted on drop.
pub struct TestNats {
    pub prefix: String,
}

impl TestNats {
    pub fn new() -> Self {
        Self {
            prefix: format!("t{}", &Uuid::new_v4().simple().to_string()[..12]),
        }
    }

    /// A bus on the test's prefix.
    pub async fn bus(&self) -> Bus {
        Bus::connect(&nats_url(), &self.prefix)
            .await
            .expect("connect to NATS")
    }
}

impl Default for TestNats {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        clean_up(async move {
            if let Ok(bus) = Bus::connect(&nats_url(), &prefix).await {
                for kind in alphadome_core::bus::StreamKind::ALL {
                    let _ = bus.js.delete_stream(bus.stream_name(kind)).await;
                }
            }
        });
    }
}

/// The platform-wide Meta app secret the tests use.
pub const PLATFORM_APP_SECRET: &str = "platform-app-secret-for-tests";

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
