//! Shared library of the Alphadome services: configuration, credential
//! encryption, the database (migrations, tenant context, manifests), the
//! event schemas and JetStream plumbing, the FAQ matcher, Meta's webhook and
//! send formats, telemetry and the HTTP health endpoints.

pub mod audit;
pub mod batch;
pub mod bus;
pub mod config;
pub mod crypto;
pub mod db;
pub mod events;
pub mod gate;
pub mod health;
pub mod manifest;
pub mod matcher;
pub mod meta;
pub mod notify;
pub mod phone;
pub mod standin;
pub mod telemetry;
pub mod tenant;

pub use tokio_util::sync::CancellationToken;
