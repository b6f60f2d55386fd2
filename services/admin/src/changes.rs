//! The change audit: every change to the platform's configuration, who
//! made it, when, and the thing before and after with its secrets masked
//! (`alphadome.change_audit`, append-only). Each record is written in the
//! transaction of the change it records.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::store;

/// Who a change made from the command line is recorded as:
/// `cli:<the operating system user>`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

/// One change to record.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub tenant: Option<Uuid>,
    /// `area.verb`: `tenant.apply`, `tenant.activate`, `user.add`, ...
    pub action: &'a str,
    /// What was changed: a tenant id, an e-mail, a token name.
    pub subject: &'a str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Records `change` in the caller's transaction.
pub async fn record(conn: &mut PgConnection, change: &Change<'_>) -> Result<(), sqlx::Error> {
    store::insert_change(conn, change).await
}

/// A tenant's configuration as the audit shows it (secrets masked), read
/// in the caller's transaction; `None` when there is no such tenant.
pub async fn tenant_snapshot(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    store::tenant_snapshot(conn, tenant).await
}

/// A recorded change.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ChangeRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub tenant_id: Option<Uuid>,
    pub action: String,
    pub subject: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// The recorded changes, newest first: of one tenant, or all; since a
/// time; at most `limit`.
pub async fn list(
    db: &PgPool,
    tenant: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<ChangeRecord>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    store::changes(&mut conn, tenant, since, limit).await
}

/// [`list`] on the caller's connection: in a transaction acting for a
/// tenant, only that tenant's records are visible.
pub async fn list_in(
    conn: &mut PgConnection,
    tenant: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<ChangeRecord>, sqlx::Error> {
    store::changes(conn, tenant, since, limit).await
}

/// The top-level keys of `before` and `after` whose values differ (what a
/// change changed, for people reading the record).
pub fn changed_keys(
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> Vec<String> {
    let empty = serde_json::Map::new();
    let b = before.and_then(|v| v.as_object()).unwrap_or(&empty);
    let a = after.and_then(|v| v.as_object()).unwrap_or(&empty);
    let mut keys: Vec<String> = b
        .keys()
        .chain(a.keys())
        .filter(|k| b.get(*k) != a.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_keys_names_what_differs_on_either_side() {
        let before = json!({"a": 1, "b": {"x": 1}, "c": 3});
        let after = json!({"a": 1, "b": {"x": 2}, "d": 4});
        assert_eq!(
            changed_keys(Some(&before), Some(&after)),
            vec!["b", "c", "d"]
        );
        assert_eq!(changed_keys(None, Some(&json!({"a": 1}))), vec!["a"]);
        assert!(changed_keys(Some(&before), Some(&before)).is_empty());
    }
}
