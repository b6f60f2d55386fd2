//! People and API tokens: who may run a tenant's bot, and as what.
//!
//! Roles ([`Role`]): `platform-admin` (every tenant), `tenant-admin` (one
//! tenant: its settings, templates, training data, conversations, usage;
//! never another tenant's, never a secret's value) and `agent` (one
//! tenant's conversations; reads its settings). Passwords are hashed with
//! argon2id (OWASP's parameters, the `argon2` crate's defaults); an API
//! token is 32 random bytes shown once and stored only as its SHA-256
//! (a token is a key, not a password: nothing to slow down).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{changes, store, tenants, AdminError};

/// What a person or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    PlatformAdmin,
    TenantAdmin,
    Agent,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::PlatformAdmin, Role::TenantAdmin, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform-admin",
            Role::TenantAdmin => "tenant-admin",
            Role::Agent => "agent",
        }
    }

    /// Whether the role belongs to one tenant (all but the platform admin).
    pub fn is_tenant_bound(self) -> bool {
        self != Role::PlatformAdmin
    }
}

impl std::str::FromStr for Role {
    type Err = PeopleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PeopleError::BadRole(s.to_owned()))
    }
}

/// Who is asking: a person (by e-mail) or an API token (by name), and what
/// they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `user:<email>`, `token:<name>`, or `admin-token` (the configured
    /// `ALPHADOME_ADMIN_TOKEN`).
    pub actor: String,
    pub role: Role,
    /// The one tenant a tenant-bound role acts for.
    pub tenant: Option<Uuid>,
}

impl Principal {
    /// Whether this principal may see tenant `id` at all.
    pub fn sees(&self, id: Uuid) -> bool {
        self.role == Role::PlatformAdmin || self.tenant == Some(id)
    }
}

/// Why an operation on people or tokens was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    #[error("role {0:?} is not one of platform-admin, tenant-admin, agent")]
    BadRole(String),
    #[error("{0} belongs to one tenant: give --tenant ID|PHONE")]
    TenantRequired(Role),
    #[error("a platform-admin belongs to no tenant: leave out --tenant")]
    TenantNotAllowed,
    #[error("e-mail address {0:?} is not of the form name@domain")]
    BadEmail(String),
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("a person with e-mail {0:?} already exists")]
    EmailTaken(String),
    #[error("no person with e-mail {0:?}")]
    NoSuchUser(String),
    #[error("token name {0:?} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    BadTokenName(String),
    #[error("a live token named {0:?} already exists (revoke it first)")]
    TokenNameTaken(String),
    #[error("no live token named {0:?}")]
    NoSuchToken(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fewest characters a password may have (NIST SP 800-63B asks for 8
/// at least; people choose longer ones when asked).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The prefix of every API token, so secret scanners and people can tell
/// one apart.
pub const TOKEN_PREFIX: &str = "adt_";

/// The argon2id PHC string of `password`.
pub fn hash_password(password: &SecretString) -> Result<String, PeopleError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PeopleError::Hash(e.to_string()))
}

/// Whether `password` matches the stored argon2id `hash`.
pub fn password_matches(password: &SecretString, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok()
    })
}

/// A random password of 24 letters and digits (about 143 bits).
pub fn generate_password() -> SecretString {
    use rand::distr::{Alphanumeric, SampleString};
    SecretString::from(Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// A new API token: the prefix and 32 random bytes, base64url.
pub fn generate_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of an API token: its SHA-256, in hex.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `email` trimmed and lower-cased, if it looks like an address.
pub fn normalize_email(email: &str) -> Result<String, PeopleError> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if ok {
        Ok(e)
    } else {
        Err(PeopleError::BadEmail(email.to_owned()))
    }
}

/// The tenant a role belongs to: required for tenant-bound roles, refused
/// for the platform admin.
async fn role_tenant(
    db: &PgPool,
    role: Role,
    tenant: Option<&str>,
    country_code: &str,
) -> Result<Option<Uuid>, PeopleError> {
    match (role.is_tenant_bound(), tenant) {
        (true, None) => Err(PeopleError::TenantRequired(role)),
        (false, Some(_)) => Err(PeopleError::TenantNotAllowed),
        (false, None) => Ok(None),
        (true, Some(t)) => Ok(Some(tenants::find(db, t, country_code).await?.id)),
    }
}

/// A person as listed (never the password hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UserView {
    pub email: String,
    pub role: String,
    pub tenant_id: Option<Uuid>,
    pub tenant_name: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Adds a person with `password` (at least [`MIN_PASSWORD_CHARS`]),
/// recording `actor` in the change audit.
pub async fn add_user(
    db: &PgPool,
    email: &str,
    role: Role,
    tenant: Option<&str>,
    password: &SecretString,
    country_code: &str,
    actor: &str,
) -> Result<Uuid, PeopleError> {
    let email = normalize_email(email)?;
    if password.expose_secret().chars().count() < MIN_PASSWORD_CHARS {
        return Err(PeopleError::ShortPassword);
    }
    let tenant = role_tenant(db, role, tenant, country_code).await?;
    let hash = hash_password(password)?;
    let mut tx = db.begin().await?;
    let Some(id) = store::insert_user(&mut tx, &email, role.as_str(), tenant, &hash).await? else {
        return Err(PeopleError::EmailTaken(email));
    };
    record(
        &mut tx,
        actor,
        tenant,
        "user.add",
        &email,
        None,
        Some(serde_json::json!({"email": email, "role": role.as_str(), "tenant_id": tenant})),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Records a change to people or tokens in the caller's transaction.
async fn record(
    conn: &mut sqlx::PgConnection,
    actor: &str,
    tenant: Option<Uuid>,
    action: &str,
    subject: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), sqlx::Error> {
    changes::record(
        conn,
        &changes::Change {
            actor,
            tenant,
            action,
            subject,
            before,
            after,
        },
    )
    .await
}

/// Every person, by e-mail.
pub async fn list_users(db: &PgPool) -> Result<Vec<UserView>, PeopleError> {
    Ok(store::users(db).await?)
}

/// Disables a person: they can no longer log in. Returns whether they were
/// enabled before (only then is a change recorded).
pub async fn disable_user(db: &PgPool, email: &str, actor: &str) -> Result<bool, PeopleError> {
    let email = normalize_email(email)?;
    let mut tx = db.begin().await?;
    let Some((was_enabled, tenant)) = store::disable_user(&mut tx, &email).await? else {
        return Err(PeopleError::NoSuchUser(email));
    };
    if was_enabled {
        record(
            &mut tx,
            actor,
            tenant,
            "user.disable",
            &email,
            Some(serde_json::json!({"disabled": false})),
            Some(serde_json::json!({"disabled": true})),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(was_enabled)
}

/// A fixed argon2id hash to verify against when no such person exists, so
/// a login for an unknown address takes as long as one with a wrong
/// password (no way to tell which addresses exist by timing).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password(&generate_password()).unwrap_or_else(|_| "$argon2id$v=19$".to_owned())
    })
}

/// The principal of a person logging in with `email` and `password`, or
/// `None` (unknown address, wrong password, disabled person: the caller
/// cannot tell which). Records the login.
pub async fn check_password(
    db: &PgPool,
    email: &str,
    password: &SecretString,
) -> Result<Option<Principal>, PeopleError> {
    Ok(login(db, email, password).await?.map(|(_, p)| p))
}

/// [`check_password`], with the person's id.
async fn login(
    db: &PgPool,
    email: &str,
    password: &SecretString,
) -> Result<Option<(Uuid, Principal)>, PeopleError> {
    let Ok(email) = normalize_email(email) else {
        let _ = password_matches(password, decoy_hash());
        return Ok(None);
    };
    let Some(found) = store::login_row(db, &email).await? else {
        let _ = password_matches(password, decoy_hash());
        return Ok(None);
    };
    if !password_matches(password, &found.password_hash) || found.disabled_at.is_some() {
        return Ok(None);
    }
    store::record_login(db, found.id).await?;
    Ok(Some((
        found.id,
        Principal {
            actor: format!("user:{email}"),
            role: found.role.parse()?,
            tenant: found.bot_tenant_id,
        },
    )))
}

/// A signed-in person's session: who they are, and the token their forms
/// and the pages' API calls send back (CSRF).
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
}

/// How long a session lasts without use, and at most.
pub const SESSION_IDLE_HOURS: i32 = 12;
pub const SESSION_MAX_DAYS: i32 = 7;

/// Signs a person in: the session id for their cookie (stored only as its
/// digest) and the session, or `None` as [`check_password`] answers.
pub async fn sign_in(
    db: &PgPool,
    email: &str,
    password: &SecretString,
) -> Result<Option<(SecretString, Session)>, PeopleError> {
    let Some((user, principal)) = login(db, email, password).await? else {
        return Ok(None);
    };
    let id = generate_token();
    let csrf = generate_password();
    store::insert_session(
        db,
        &token_digest(id.expose_secret()),
        user,
        csrf.expose_secret(),
        SESSION_IDLE_HOURS,
    )
    .await?;
    Ok(Some((
        id,
        Session {
            principal,
            csrf: csrf.expose_secret().to_owned(),
        },
    )))
}

/// The live session with cookie value `id` (its person not disabled), or
/// `None`. Use extends it, up to its maximum age.
pub async fn session(db: &PgPool, id: &str) -> Result<Option<Session>, PeopleError> {
    if !id.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some(row) =
        store::live_session(db, &token_digest(id), SESSION_IDLE_HOURS, SESSION_MAX_DAYS).await?
    else {
        return Ok(None);
    };
    Ok(Some(Session {
        principal: Principal {
            actor: format!("user:{}", row.email),
            role: row.role.parse()?,
            tenant: row.bot_tenant_id,
        },
        csrf: row.csrf_token,
    }))
}

/// Ends the session with cookie value `id` (signing out).
pub async fn sign_out(db: &PgPool, id: &str) -> Result<(), PeopleError> {
    Ok(store::delete_session(db, &token_digest(id)).await?)
}

/// An API token as listed (never the token or its digest).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TokenView {
    pub name: String,
    pub role: String,
    pub tenant_id: Option<Uuid>,
    pub tenant_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates an API token and returns it: the only time it is shown.
pub async fn create_token(
    db: &PgPool,
    name: &str,
    role: Role,
    tenant: Option<&str>,
    country_code: &str,
    actor: &str,
) -> Result<SecretString, PeopleError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(PeopleError::BadTokenName(name.to_owned()));
    }
    let tenant = role_tenant(db, role, tenant, country_code).await?;
    let token = generate_token();
    let digest = token_digest(token.expose_secret());
    let mut tx = db.begin().await?;
    if !store::insert_token(&mut tx, name, &digest, role.as_str(), tenant).await? {
        return Err(PeopleError::TokenNameTaken(name.to_owned()));
    }
    record(
        &mut tx,
        actor,
        tenant,
        "token.create",
        name,
        None,
        Some(serde_json::json!({"name": name, "role": role.as_str(), "tenant_id": tenant})),
    )
    .await?;
    tx.commit().await?;
    Ok(token)
}

/// Revokes the live token named `name`: it is refused from then on.
pub async fn revoke_token(db: &PgPool, name: &str, actor: &str) -> Result<(), PeopleError> {
    let mut tx = db.begin().await?;
    let Some(tenant) = store::revoke_token(&mut tx, name).await? else {
        return Err(PeopleError::NoSuchToken(name.to_owned()));
    };
    record(
        &mut tx,
        actor,
        tenant,
        "token.revoke",
        name,
        Some(serde_json::json!({"revoked": false})),
        Some(serde_json::json!({"revoked": true})),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every API token, live ones first.
pub async fn list_tokens(db: &PgPool) -> Result<Vec<TokenView>, PeopleError> {
    Ok(store::tokens(db).await?)
}

/// The principal of a live API token, or `None`.
pub async fn authenticate_token(
    db: &PgPool,
    token: &str,
) -> Result<Option<Principal>, sqlx::Error> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some((name, role, tenant)) = store::live_token(db, &token_digest(token)).await? else {
        return Ok(None);
    };
    let Ok(role) = role.parse() else {
        return Ok(None);
    };
    Ok(Some(Principal {
        actor: format!("token:{name}"),
        role,
        tenant,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify_only_themselves() {
        let p = SecretString::from("correct horse battery staple".to_owned());
        let h = hash_password(&p).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct"));
        assert!(password_matches(&p, &h));
        assert!(!password_matches(
            &SecretString::from("correct horse battery stapl".to_owned()),
            &h
        ));
        assert!(!password_matches(&p, "not a hash"));
        // Salted: the same password hashes differently each time.
        assert_ne!(h, hash_password(&p).unwrap());
    }

    #[test]
    fn tokens_are_random_prefixed_and_stored_as_their_digest() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose_secret().len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        let d = token_digest(a.expose_secret());
        assert_eq!(d.len(), 64);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(d, token_digest(b.expose_secret()));
    }

    #[test]
    fn roles_and_emails_are_checked() {
        assert_eq!("tenant-admin".parse::<Role>().unwrap(), Role::TenantAdmin);
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(
            normalize_email(" Ann@Shop.CO.ke ").unwrap(),
            "ann@shop.co.ke"
        );
        for bad in ["", "ann", "@shop", "ann@", "a nn@shop", "ann@sh\0op"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert_eq!(generate_password().expose_secret().len(), 24);
    }
}
