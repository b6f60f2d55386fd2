//! The ingress's reads. It owns no table: what it needs of a tenant (its
//! route: the phone number id, whether it is active, and its own Meta app
//! secret, decrypted) comes from the tenant store, through the narrow
//! cross-tenant lookups the migrations grant it.

use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_core::tenant::{self, Tenant};
use alphadome_core::{audit, Report};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

/// What the ingress needs to know about a tenant.
pub struct Route {
    pub tenant_id: Uuid,
    pub phone_number_id: Option<String>,
    pub is_active: bool,
    /// The tenant's own Meta app secret, decrypted.
    pub app_secret: Option<SecretString>,
}

/// The route of tenant `id`, recording the decryption of its app secret.
pub async fn load_route(
    db: &PgPool,
    keyring: &Keyring,
    id: Uuid,
) -> Result<Option<Route>, sqlx::Error> {
    let Some(t) = tenant::store::load_config(db, id).await? else {
        return Ok(None);
    };
    let secret = tenant::store::load_credential(db, id, SecretColumn::WhatsappAppSecret).await?;
    let route = route_of(keyring, t, secret.as_deref());
    if route.app_secret.is_some() {
        audit::record_use(
            db,
            route.tenant_id,
            SecretColumn::WhatsappAppSecret,
            "service:ingress",
            "verify webhook signatures (cache fill)",
        )
        .await;
    }
    Ok(Some(route))
}

fn route_of(keyring: &Keyring, t: Tenant, stored_secret: Option<&str>) -> Route {
    let app_secret = stored_secret.and_then(|s| {
        keyring
            .decrypt(t.id, SecretColumn::WhatsappAppSecret, s)
            .map_err(|e| tracing::error!(tenant_id = %t.id, error = %Report(&e), "cannot decrypt the tenant's app secret"))
            .ok()
    });
    Route {
        tenant_id: t.id,
        phone_number_id: t.whatsapp_phone_number_id,
        is_active: t.is_active,
        app_secret,
    }
}

/// The route of the tenant owning `phone_number_id`, straight from the
/// database (a tenant created since the cache's last refresh).
pub async fn lookup_route(
    db: &PgPool,
    keyring: &Keyring,
    phone_number_id: &str,
) -> Result<Option<Route>, sqlx::Error> {
    match tenant::store::tenant_by_phone_number_id(db, phone_number_id).await? {
        Some(id) => load_route(db, keyring, id).await,
        None => Ok(None),
    }
}

/// Every tenant's verify token digests (current, and previous in its
/// grace period).
pub async fn verify_token_digests(
    db: &PgPool,
) -> Result<Vec<(Uuid, Option<String>, Option<String>)>, sqlx::Error> {
    tenant::store::verify_token_digests(db).await
}
