//! logger: persists every inbound and outbound message to
//! `alphadome.bot_message_logs` in batches (one statement per batch,
//! idempotent by `dedup_key`), mirrors each new row to
//! `public.conversations` with the tenant's `brand_id` so the existing
//! system keeps working, applies delivery statuses to outgoing rows
//! without ever moving a row back to a lower state, and keeps the account
//! events (template, quality and account changes) of each tenant.
//!
//! A database outage delays writes and loses nothing: the batch is nak'ed
//! and redelivered with backoff; only a message that fails on its own
//! (isolated by retrying the batch row by row) is dead-lettered.
//!
//! Layout: [`consumer`] is the transport, [`write`] the two write paths,
//! [`rows`] the decisions as plain functions, [`store`] the SQL.

pub mod consumer;
pub mod rows;
pub mod store;
pub mod write;

use alphadome_core::bus::{Bus, BusError, StreamKind};
use alphadome_core::CancellationToken;
use sqlx::PgPool;

pub use consumer::{settings, PARALLEL_BATCHES};
pub use write::{write_events, WriteError};

/// Durable consumer on the log stream.
pub const LOG_CONSUMER: &str = "logger";
/// Durable consumer on the status stream.
pub const STATUS_CONSUMER: &str = "logger-status";
/// Durable consumer on the account event stream.
pub const ACCOUNT_CONSUMER: &str = "logger-account";

/// Why the logger stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("consuming the log and status streams")]
    Bus(#[from] BusError),
}

/// Runs its consumers (log rows, statuses, account events) until `shutdown`.
pub async fn run(db: PgPool, bus: Bus, shutdown: CancellationToken) -> Result<(), LoggerError> {
    let s = settings();
    let mut running = Vec::new();
    for (kind, durable) in [
        (StreamKind::Log, LOG_CONSUMER),
        (StreamKind::Status, STATUS_CONSUMER),
        (StreamKind::Account, ACCOUNT_CONSUMER),
    ] {
        let consumer = bus.consumer(kind, durable, s).await?;
        running.push(consumer::consume(
            db.clone(),
            bus.clone(),
            kind,
            consumer,
            shutdown.clone(),
        ));
    }
    for result in futures_util::future::join_all(running).await {
        result?;
    }
    Ok(())
}
