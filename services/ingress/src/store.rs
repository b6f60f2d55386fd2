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
    /// The WhatsApp Business Account the number belongs to.
    pub business_account_id: Option<String>,
    pub is_active: bool,
    /// The tenant's own Meta app secret, decrypted.
    pub app_secret: Option<SecretString>,
}

/// The cache key of a phone number id.
pub fn phone_key(phone_number_id: &str) -> String {
    format!("pnid:{phone_number_id}")
}

/// The cache key of a WhatsApp Business Account id.
pub fn account_key(business_account_id: &str) -> String {
    format!("waba:{business_account_id}")
}

impl Route {
    /// The keys the route is found by: its phone number id and its account.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        if let Some(p) = &self.phone_number_id {
            keys.push(phone_key(p));
        }
        if let Some(a) = &self.business_account_id {
            keys.push(account_key(a));
        }
        keys
    }
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
        business_account_id: t.whatsapp_business_account_id,
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

/// The routes of the tenants of a WhatsApp Business Account, straight
/// from the database.
pub async fn lookup_account(
    db: &PgPool,
    keyring: &Keyring,
    business_account_id: &str,
) -> Result<Vec<Route>, sqlx::Error> {
    let mut routes = Vec::new();
    for id in tenant::store::tenants_by_business_account_id(db, business_account_id).await? {
        if let Some(r) = load_route(db, keyring, id).await? {
            routes.push(r);
        }
    }
    Ok(routes)
}

/// Every tenant's verify token digests (current, and previous in its
/// grace period).
pub async fn verify_token_digests(
    db: &PgPool,
) -> Result<Vec<(Uuid, Option<String>, Option<String>)>, sqlx::Error> {
    tenant::store::verify_token_digests(db).await
}
