//! admin: tenant management and the platform's scheduled jobs. The
//! operations behind `alphadome tenant ...` ([`tenants`]: list, show with
//! secrets masked, activate and deactivate, verify token rotation), tenant
//! manifests ([`manifest`]), master key rotation ([`keys`]), dead letters
//! ([`dlq`]), the JSON API ([`api`], served by [`http`]) and the token expiry
//! check ([`tokens`]), people and API tokens ([`people`]). [`store`] holds the SQL of the table it owns; the
//! tenant tables are written through the tenant store in core.

pub mod api;
pub mod changes;
pub mod dlq;
pub mod http;
pub mod keys;
pub mod manifest;
pub mod people;
pub mod phone;
pub mod store;
pub mod tenants;
pub mod tokens;
pub mod web;

pub use keys::{rotate_master_key, RotationReport};
pub use tenants::{list, rotate_verify_token, set_active, show, TenantView};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no tenant with id or phone {0:?}")]
    NotFound(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}
