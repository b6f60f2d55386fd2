//! Master key rotation: every stored credential re-encrypted under the
//! current key while the services run (they hold the old key as a previous
//! one until it is done), one credential per transaction with its audit
//! row.

use alphadome_core::crypto::Keyring;
use alphadome_core::{audit, tenant};
use serde::Serialize;
use sqlx::PgPool;

use crate::AdminError;

/// What a master key rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// Stored credentials seen.
    pub total: u64,
    /// Re-encrypted under the current key.
    pub rotated: u64,
    /// Already under the current key.
    pub current: u64,
    /// Credentials that could not be decrypted with any configured key.
    pub failed: Vec<String>,
}

/// Re-encrypts every stored credential under the keyring's current key. A
/// value changed meanwhile is left alone (it was just written under the
/// current key). `progress(done, total)` is called after each one.
pub async fn rotate_master_key(
    db: &PgPool,
    keyring: &Keyring,
    mut progress: impl FnMut(u64, u64),
) -> Result<RotationReport, AdminError> {
    let work = tenant::store::stored_credentials(db).await?;
    let mut report = RotationReport {
        total: work.len() as u64,
        ..Default::default()
    };
    for (i, (id, col, stored)) in work.into_iter().enumerate() {
        if Keyring::key_id_of(&stored) == Some(keyring.current_key_id()) {
            report.current += 1;
        } else {
            match keyring.decrypt(id, col, &stored) {
                Err(e) => report
                    .failed
                    .push(format!("tenant {id} {}: {e}", col.column())),
                Ok(plain) => {
                    let sealed =
                        keyring.encrypt(id, col, secrecy::ExposeSecret::expose_secret(&plain));
                    let mut tx = db.begin().await?;
                    if tenant::store::replace_credential(&mut tx, id, col, &stored, &sealed).await?
                    {
                        audit::record(&mut *tx, id, col, "admin:cli", "master key rotation")
                            .await?;
                        report.rotated += 1;
                    } else {
                        report.current += 1;
                    }
                    tx.commit().await?;
                }
            }
        }
        progress(i as u64 + 1, report.total);
    }
    Ok(report)
}
