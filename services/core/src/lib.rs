//! What two or more Alphadome services share: configuration, credential
//! encryption and its audit trail, the database (pools, migrations,
//! tenant-scoped transactions), the tenant model and the store of its
//! configuration tables, the event schemas and JetStream plumbing, Meta's
//! webhook and send formats, notifications, telemetry, the guard against
//! failing client addresses, and the concurrency tools of the hot paths
//! (gates, keyed rate limits, group commit).

pub mod audit;
pub mod batch;
pub mod bus;
pub mod config;
pub mod conversation;
pub mod crypto;
pub mod db;
pub mod error;
pub mod events;
pub mod gate;
pub mod guard;
pub mod handoff;
pub mod limiter;
pub mod meta;
pub mod notify;
pub mod telemetry;
pub mod tenant;
pub mod training;

pub use error::Report;
pub use tokio_util::sync::CancellationToken;
