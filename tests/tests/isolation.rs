//! Row-level security: every table holding a `bot_tenant_id` has it forced
//! with a policy, and a service role acting for tenant A can see, change or
//! delete nothing of tenant B's, nor read a credential it does not use.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_core::db::{self, ServiceRole};
use alphadome_tests::*;
use secrecy::SecretString;

#[tokio::test]
async fn every_tenant_table_has_forced_row_level_security_and_a_policy() {
    let db = TestDb::migrated().await;
    let tables: Vec<(String, String, bool, bool, i64)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relforcerowsecurity, \
           (SELECT count(*) FROM pg_policies p WHERE p.schemaname = n.nspname AND p.tablename = c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND (EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'bot_tenant_id' AND NOT a.attisdropped) \
                OR (n.nspname = 'alphadome' AND c.relname = 'bot_tenants')) \
         ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 12, "found {} tenant tables", tables.len());
    for (schema, table, enabled, forced, policies) in tables {
        assert!(
            enabled && forced,
            "{schema}.{table}: row-level security not enabled and forced"
        );
        assert!(policies > 0, "{schema}.{table}: no policy");
    }
}

#[tokio::test]
async fn acting_as_tenant_a_no_service_sees_or_touches_tenant_b() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let a = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            phone: "254700000501",
            phone_number_id: "501",
            token: "EAAG-a",
            app_secret: Some("sa"),
            tenant_extra: "ai_provider: openai\nai_api_key: sk-a\nai_model: m",
            ..Default::default()
        },
    )
    .await;
    let b = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            phone: "254700000502",
            phone_number_id: "502",
            token: "EAAG-b",
            app_secret: Some("sb"),
            tenant_extra: "ai_provider: openai\nai_api_key: sk-b\nai_model: m",
            ..Default::default()
        },
    )
    .await;
    // A row of each tenant in every tenant table (written by the owner).
    for t in [a.id, b.id] {
        sqlx::raw_sql(&format!(
            "INSERT INTO alphadome.bot_message_logs (bot_tenant_id, direction, dedup_key) VALUES ('{t}', 'incoming', 'in:{t}');
             INSERT INTO alphadome.outbound_messages (outbound_id, bot_tenant_id) VALUES ('reply:{t}', '{t}');
             INSERT INTO alphadome.rate_limit_events (bot_tenant_id, whatsapp_message_id, decision) VALUES ('{t}', 'w', 'allow');
             INSERT INTO alphadome.rate_limit_counters (bot_tenant_id, scope, window_start, count) VALUES ('{t}', 'tenant', now(), 1);
             INSERT INTO alphadome.rate_limit_notices (bot_tenant_id, user_phone, window_kind, window_start) VALUES ('{t}', '1', 'hour', now());
             INSERT INTO alphadome.conversation_handoffs (bot_tenant_id, user_phone, reason, paused_until) VALUES ('{t}', '1', 'r', now());
             INSERT INTO alphadome.token_alerts (bot_tenant_id, threshold, token_fingerprint) VALUES ('{t}', '7d', 'f');"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = 'alphadome' AND c.column_name = 'bot_tenant_id' AND t.table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let url = SecretString::from(db.url.clone());
    for role in [
        ServiceRole::Ingress,
        ServiceRole::Responder,
        ServiceRole::Sender,
        ServiceRole::Logger,
        ServiceRole::Dashboard,
    ] {
        let pool = db::connect_as(&url, role, 1).await.unwrap();
        // Without a tenant set, nothing at all.
        for table in tables
            .iter()
            .chain(std::iter::once(&"bot_tenants".to_owned()))
        {
            let n: Result<i64, _> =
                sqlx::query_scalar(&format!("SELECT count(*) FROM alphadome.{table}"))
                    .fetch_one(&pool)
                    .await;
            if let Ok(n) = n {
                assert_eq!(n, 0, "{}: {table} visible with no tenant set", role.name());
            }
        }
        for table in tables
            .iter()
            .chain(std::iter::once(&"bot_tenants".to_owned()))
        {
            let key = if table == "bot_tenants" {
                "id"
            } else {
                "bot_tenant_id"
            };
            let mut tx = db::scoped(&pool, a.id).await.unwrap();
            // Select: nothing of B's (or no right to look at all).
            let seen: Result<i64, _> = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM alphadome.{table} WHERE {key} = $1"
            ))
            .bind(b.id)
            .fetch_one(&mut *tx)
            .await;
            tx.rollback().await.unwrap();
            if let Ok(n) = seen {
                assert_eq!(n, 0, "{} acting for A saw B's rows in {table}", role.name());
            }
            // Update and delete: nothing of B's changes.
            for stmt in [
                format!("UPDATE alphadome.{table} SET {key} = {key} WHERE {key} = $1"),
                format!("DELETE FROM alphadome.{table} WHERE {key} = $1"),
            ] {
                let mut tx = db::scoped(&pool, a.id).await.unwrap();
                let touched = sqlx::query(&stmt)
                    .bind(b.id)
                    .execute(&mut *tx)
                    .await
                    .map(|r| r.rows_affected());
                let _ = tx.commit().await;
                if let Ok(n) = touched {
                    assert_eq!(
                        n,
                        0,
                        "{} acting for A changed B's rows: {stmt}",
                        role.name()
                    );
                }
            }
            // Moving one of A's rows to B is refused too.
            if table != "bot_tenants" {
                let mut tx = db::scoped(&pool, a.id).await.unwrap();
                let moved = sqlx::query(&format!(
                    "UPDATE alphadome.{table} SET bot_tenant_id = $2 WHERE bot_tenant_id = $1"
                ))
                .bind(a.id)
                .bind(b.id)
                .execute(&mut *tx)
                .await;
                let _ = tx.rollback().await;
                if let Ok(r) = moved {
                    assert_eq!(
                        r.rows_affected(),
                        0,
                        "{} moved A's row of {table} to B",
                        role.name()
                    );
                }
            }
        }
        // Each role reads only the credential it uses.
        let columns = ["whatsapp_access_token", "whatsapp_app_secret", "ai_api_key"];
        let allowed = match role {
            ServiceRole::Ingress => Some("whatsapp_app_secret"),
            ServiceRole::Sender => Some("whatsapp_access_token"),
            ServiceRole::Responder => Some("ai_api_key"),
            ServiceRole::Logger | ServiceRole::Dashboard => None,
        };
        for col in columns {
            let mut tx = db::scoped(&pool, a.id).await.unwrap();
            let r: Result<Option<String>, _> = sqlx::query_scalar(&format!(
                "SELECT {col} FROM alphadome.bot_tenants WHERE id = $1"
            ))
            .bind(a.id)
            .fetch_one(&mut *tx)
            .await;
            let _ = tx.rollback().await;
            assert_eq!(
                r.is_ok(),
                allowed == Some(col),
                "{} reading {col}: {:?}",
                role.name(),
                r.err()
            );
        }
        pool.close().await;
    }
    // Everything of B's is still there.
    let (logs, outbound): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1), \
                (SELECT count(*) FROM alphadome.outbound_messages WHERE bot_tenant_id = $1)",
    )
    .bind(b.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((logs, outbound), (1, 1));
}
