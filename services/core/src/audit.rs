//! The credential audit trail (`alphadome.credential_audit_log`): one
//! hash-chained, append-only row for every decryption cache fill, change and
//! rotation of a tenant credential, naming the tenant, the credential, the
//! actor and the purpose. Never the value.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::crypto::SecretColumn;
use crate::Report;

/// Appends one audit row.
pub async fn record<'e, E: PgExecutor<'e>>(
    exec: E,
    tenant: Uuid,
    credential: SecretColumn,
    actor: &str,
    purpose: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT alphadome.append_credential_audit($1, $2, $3, $4)")
        .bind(tenant)
        .bind(credential.column())
        .bind(actor)
        .bind(purpose)
        .execute(exec)
        .await
        .map(|_| ())
}

/// Records a decryption, logging (not failing) when the trail can't be
/// written: a running service keeps serving, and says so loudly.
pub async fn record_use(
    db: &PgPool,
    tenant: Uuid,
    credential: SecretColumn,
    actor: &str,
    purpose: &str,
) {
    if let Err(e) = record(db, tenant, credential, actor, purpose).await {
        tracing::error!(tenant_id = %tenant, credential = credential.column(), error = %Report(&e), "credential audit row not written");
    }
}

/// Result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    pub rows: u64,
    /// The first broken link: row id and what is wrong with it.
    pub broken: Option<(i64, String)>,
}

/// (id, stored hash, stored previous hash, the previous row's hash, the
/// hash recomputed from the row's content).
type ChainRow = (i64, String, Option<String>, Option<String>, String);

/// Recomputes every row's hash and link, in order.
pub async fn verify(db: &PgPool) -> Result<AuditCheck, sqlx::Error> {
    let rows: Vec<ChainRow> = sqlx::query_as(
        "SELECT id, hash, prev_hash, lag(hash) OVER (ORDER BY id), \
           alphadome.credential_audit_digest(prev_hash, id, bot_tenant_id, credential, actor, purpose, created_at) \
         FROM alphadome.credential_audit_log ORDER BY id",
    )
    .fetch_all(db)
    .await?;
    let n = rows.len() as u64;
    for (id, hash, prev, real_prev, expected) in rows {
        if hash != expected {
            return Ok(AuditCheck {
                rows: n,
                broken: Some((id, "its content does not match its hash (edited)".into())),
            });
        }
        if prev != real_prev {
            return Ok(AuditCheck {
                rows: n,
                broken: Some((
                    id,
                    "it does not link to the row before it (a row was deleted or inserted)".into(),
                )),
            });
        }
    }
    Ok(AuditCheck {
        rows: n,
        broken: None,
    })
}
