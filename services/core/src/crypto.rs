//! Application-level encryption of tenant credentials (AES-256-GCM).
//!
//! Stored form: `enc:v1:<key id>:<base64url(nonce || ciphertext || tag)>`.
//! The nonce is 96 random bits per value. The associated data binds each
//! ciphertext to its tenant id and column, so a value copied to another
//! tenant or column fails to decrypt. The key id (first 4 bytes of
//! SHA-256 over the key, in hex) names the master key version, so several
//! versions can decrypt side by side while a rotation runs.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 12;

/// The encrypted columns of `alphadome.bot_tenants`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretColumn {
    WhatsappAccessToken,
    WhatsappAppSecret,
    AiApiKey,
}

impl SecretColumn {
    pub const ALL: [SecretColumn; 3] = [
        SecretColumn::WhatsappAccessToken,
        SecretColumn::WhatsappAppSecret,
        SecretColumn::AiApiKey,
    ];

    /// Column name in `alphadome.bot_tenants`.
    pub fn column(self) -> &'static str {
        match self {
            SecretColumn::WhatsappAccessToken => "whatsapp_access_token",
            SecretColumn::WhatsappAppSecret => "whatsapp_app_secret",
            SecretColumn::AiApiKey => "ai_api_key",
        }
    }

    fn aad(self, tenant: Uuid) -> String {
        format!("alphadome/v1/bot_tenants.{}/{}", self.column(), tenant)
    }
}

/// Why a credential could not be encrypted or decrypted. Never carries the
/// secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("stored credential is not in the enc:v1 format")]
    Malformed,
    #[error("stored credential was encrypted with master key {0}, which is not configured")]
    UnknownKey(String),
    #[error("stored credential failed authentication (wrong tenant, column or key, or tampered)")]
    Tampered,
}

/// Why the master key configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{0} is not set; it must hold base64 of 32 random bytes (for example: openssl rand -base64 32)")]
    Missing(&'static str),
    #[error("{0} is not valid base64")]
    NotBase64(&'static str),
    #[error("{var} must decode to 32 bytes, got {len}")]
    WrongLength { var: &'static str, len: usize },
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl MasterKey {
    fn from_base64(var: &'static str, value: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(value.trim())
            .map_err(|_| KeyError::NotBase64(var))?;
        if bytes.len() != 32 {
            return Err(KeyError::WrongLength {
                var,
                len: bytes.len(),
            });
        }
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength {
            var,
            len: bytes.len(),
        })?;
        Ok(Self { id, cipher })
    }
}

/// The configured master keys: the current one encrypts, all of them decrypt.
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.previous.iter().map(|k| k.id.as_str()).collect();
        write!(
            out,
            "Keyring {{ current: {}, previous: {ids:?} }}",
            self.current.id
        )
    }
}

/// Environment variable holding the current master key.
pub const MASTER_KEY_VAR: &str = "ALPHADOME_MASTER_KEY";
/// Environment variable holding older master keys (comma-separated), still
/// accepted for decryption until a rotation has re-encrypted everything.
pub const PREVIOUS_KEYS_VAR: &str = "ALPHADOME_PREVIOUS_MASTER_KEYS";

impl Keyring {
    /// Builds a keyring from base64 keys (current first).
    pub fn from_base64(current: &str, previous: &[&str]) -> Result<Self, KeyError> {
        Ok(Self {
            current: MasterKey::from_base64(MASTER_KEY_VAR, current)?,
            previous: previous
                .iter()
                .map(|k| MasterKey::from_base64(PREVIOUS_KEYS_VAR, k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A fresh random key in the base64 form `ALPHADOME_MASTER_KEY` takes.
    pub fn generate_key() -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    /// Id of the key new values are encrypted with.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypts `plaintext` for `tenant`'s `column` under the current key.
    pub fn encrypt(&self, tenant: Uuid, column: SecretColumn, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = column.aad(tenant);
        let sealed = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            // AES-GCM encryption only fails for inputs beyond 64 GiB.
            .unwrap_or_default();
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}:{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(blob)
        )
    }

    /// Decrypts a stored value of `tenant`'s `column`.
    pub fn decrypt(
        &self,
        tenant: Uuid,
        column: SecretColumn,
        stored: &str,
    ) -> Result<SecretString, CryptoError> {
        let rest = stored.strip_prefix(PREFIX).ok_or(CryptoError::Malformed)?;
        let (key_id, body) = rest.split_once(':').ok_or(CryptoError::Malformed)?;
        let key = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let aad = column.aad(tenant);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        let text = String::from_utf8(plain).map_err(|_| CryptoError::Malformed)?;
        Ok(SecretString::from(text))
    }

    /// The key id a stored value was encrypted with, if it is well-formed.
    pub fn key_id_of(stored: &str) -> Option<&str> {
        stored
            .strip_prefix(PREFIX)?
            .split_once(':')
            .map(|(id, _)| id)
    }

    /// Whether `stored` already holds `plaintext` for this tenant and column
    /// (so re-applying an unchanged manifest keeps the old ciphertext).
    pub fn holds(&self, tenant: Uuid, column: SecretColumn, stored: &str, plaintext: &str) -> bool {
        self.decrypt(tenant, column, stored)
            .map(|s| s.expose_secret() == plaintext)
            .unwrap_or(false)
    }
}

/// The stored form of a webhook verify token: its SHA-256 digest
/// (`sha256:<hex>`), so the database never holds the token itself.
pub fn verify_token_digest(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// A new random verify token (256 bits, URL-safe).
pub fn generate_verify_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a secret is shown to people: never the value.
pub fn mask(stored: Option<&str>) -> String {
    match stored {
        None => "(not set)".to_owned(),
        Some(s) => match Keyring::key_id_of(s) {
            Some(id) => format!("******** (encrypted, key {id})"),
            None => "******** (NOT ENCRYPTED)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_base64(&Keyring::generate_key(), &[]).unwrap()
    }

    #[test]
    fn round_trip_and_fresh_nonce() {
        let k = ring();
        let t = Uuid::new_v4();
        let a = k.encrypt(t, SecretColumn::WhatsappAccessToken, "EAAG-secret");
        let b = k.encrypt(t, SecretColumn::WhatsappAccessToken, "EAAG-secret");
        assert_ne!(a, b, "nonce must be random");
        assert!(!a.contains("EAAG-secret"));
        let p = k.decrypt(t, SecretColumn::WhatsappAccessToken, &a).unwrap();
        assert_eq!(p.expose_secret(), "EAAG-secret");
        assert_eq!(Keyring::key_id_of(&a), Some(k.current_key_id()));
    }

    #[test]
    fn bound_to_tenant_and_column() {
        let k = ring();
        let t = Uuid::new_v4();
        let v = k.encrypt(t, SecretColumn::AiApiKey, "sk-1");
        assert_eq!(
            k.decrypt(Uuid::new_v4(), SecretColumn::AiApiKey, &v).err(),
            Some(CryptoError::Tampered)
        );
        assert_eq!(
            k.decrypt(t, SecretColumn::WhatsappAccessToken, &v).err(),
            Some(CryptoError::Tampered)
        );
        let mut bad = v.clone();
        bad.pop();
        bad.push(if v.ends_with('A') { 'B' } else { 'A' });
        assert!(k.decrypt(t, SecretColumn::AiApiKey, &bad).is_err());
        assert_eq!(
            k.decrypt(t, SecretColumn::AiApiKey, "plain").err(),
            Some(CryptoError::Malformed)
        );
    }

    #[test]
    fn previous_keys_still_decrypt() {
        let old_b64 = Keyring::generate_key();
        let old = Keyring::from_base64(&old_b64, &[]).unwrap();
        let t = Uuid::new_v4();
        let v = old.encrypt(t, SecretColumn::AiApiKey, "sk-old");
        let new_only = ring();
        assert!(matches!(
            new_only.decrypt(t, SecretColumn::AiApiKey, &v),
            Err(CryptoError::UnknownKey(_))
        ));
        let both = Keyring::from_base64(&Keyring::generate_key(), &[old_b64.as_str()]).unwrap();
        assert_eq!(
            both.decrypt(t, SecretColumn::AiApiKey, &v)
                .unwrap()
                .expose_secret(),
            "sk-old"
        );
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(
            Keyring::from_base64("not base64!", &[]).unwrap_err(),
            KeyError::NotBase64(MASTER_KEY_VAR)
        );
        assert_eq!(
            Keyring::from_base64("c2hvcnQ=", &[]).unwrap_err(),
            KeyError::WrongLength {
                var: MASTER_KEY_VAR,
                len: 5
            }
        );
        let msg = format!("{:?}", ring());
        assert!(msg.starts_with("Keyring { current: "));
    }
}
