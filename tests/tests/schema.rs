//! Migrations: they build the schema the report describes on an empty
//! database, leave the live system's tables and rows untouched, and are a
//! no-op the second time.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_core::db;
use alphadome_tests::TestDb;

/// Every column of the public and alphadome schemas, with type, default and
/// nullability: a fingerprint of the schema.
async fn columns(
    pool: &sqlx::PgPool,
    schema: &str,
) -> Vec<(String, String, String, Option<String>, String)> {
    sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, column_default::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn constraints(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(c.oid) FROM pg_constraint c \
         JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname IN ('public', 'alphadome') ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn indexes(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname IN ('public', 'alphadome') ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_build_the_report_schema_on_an_empty_database() {
    let db = TestDb::migrated().await;
    let cols = columns(&db.pool, "alphadome").await;
    let has = |t: &str, c: &str| cols.iter().any(|(tt, cc, ..)| tt == t && cc == c);
    let report: &[(&str, &[&str])] = &[
        (
            "bot_tenants",
            &[
                "id",
                "client_name",
                "client_phone",
                "client_email",
                "brand_id",
                "point_of_contact_name",
                "point_of_contact_phone",
                "whatsapp_phone_number_id",
                "whatsapp_business_account_id",
                "whatsapp_access_token",
                "whatsapp_token_expires_at",
                "ai_provider",
                "ai_api_key",
                "ai_model",
                "is_active",
                "is_verified",
                "webhook_verify_token",
                "webhook_url",
                "metadata",
                "created_at",
                "updated_at",
                "whatsapp_app_secret",
            ],
        ),
        (
            "bot_templates",
            &[
                "id",
                "bot_tenant_id",
                "template_name",
                "description",
                "system_prompt",
                "conversation_context",
                "tone",
                "max_response_length",
                "is_active",
                "is_default",
                "metadata",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "bot_training_data",
            &[
                "id",
                "bot_tenant_id",
                "data_type",
                "question",
                "answer",
                "category",
                "priority",
                "confidence_score",
                "is_active",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "bot_control_settings",
            &[
                "id",
                "bot_tenant_id",
                "is_bot_enabled",
                "max_messages_per_hour",
                "max_messages_per_user_per_day",
                "enable_ai_responses",
                "enable_payment_flow",
                "enable_training_mode",
                "enable_auto_reply",
                "log_conversations",
                "log_errors",
                "escalation_phone",
                "escalation_email",
                "metadata",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "bot_message_logs",
            &[
                "id",
                "bot_tenant_id",
                "user_phone",
                "user_id",
                "direction",
                "message_text",
                "whatsapp_message_id",
                "ai_processed",
                "ai_response",
                "error_message",
                "template_used",
                "training_data_id",
                "metadata",
                "created_at",
            ],
        ),
    ];
    for (table, wanted) in report {
        for c in *wanted {
            assert!(has(table, c), "alphadome.{table}.{c} is missing");
        }
    }
    let cons = constraints(&db.pool).await;
    for name in [
        "bot_tenants_client_phone_key",
        "bot_tenants_webhook_verify_token_key",
        "bot_tenants_whatsapp_phone_number_id_key",
        "bot_control_settings_bot_tenant_id_key",
        "bot_tenants_ai_provider_check",
        "bot_templates_tone_check",
        "bot_training_data_data_type_check",
        "bot_training_data_confidence_score_check",
        "bot_message_logs_direction_check",
        "bot_tenants_brand_id_fkey",
        "bot_message_logs_training_data_id_fkey",
        "bot_message_logs_user_id_fkey",
    ] {
        assert!(
            cons.iter().any(|(n, _)| n == name),
            "constraint {name} is missing"
        );
    }
    let idx = indexes(&db.pool).await;
    for name in [
        "bot_training_data_active_priority_idx",
        "bot_message_logs_tenant_time_idx",
        "bot_message_logs_wamid_idx",
    ] {
        assert!(
            idx.iter().any(|(n, _)| n == name),
            "index {name} is missing"
        );
    }
    // Defaults: inactive tenants, timestamps now().
    let tenant: (bool, bool) = sqlx::query_as(
        "INSERT INTO alphadome.bot_tenants (client_name, client_phone) VALUES ('x', '254700000009') \
         RETURNING is_active, created_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tenant, (false, true));
    // CHECK constraints refuse values outside the report's enumerations.
    for bad in [
        "UPDATE alphadome.bot_tenants SET ai_provider = 'anthropic'",
        "INSERT INTO alphadome.bot_training_data (bot_tenant_id, data_type, question) SELECT id, 'faqq', 'q' FROM alphadome.bot_tenants",
        "INSERT INTO alphadome.bot_training_data (bot_tenant_id, data_type, question, confidence_score) SELECT id, 'faq', 'q', 1.5 FROM alphadome.bot_tenants",
        "INSERT INTO alphadome.bot_templates (bot_tenant_id, template_name, tone) SELECT id, 't', 'grumpy' FROM alphadome.bot_tenants",
        "INSERT INTO alphadome.bot_message_logs (bot_tenant_id, direction, dedup_key) SELECT id, 'sideways', 'k' FROM alphadome.bot_tenants",
    ] {
        assert!(sqlx::query(bad).execute(&db.pool).await.is_err(), "accepted: {bad}");
    }
    // updated_at is maintained by trigger.
    let (before,): (String,) = sqlx::query_as("SELECT updated_at::text FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE alphadome.bot_tenants SET client_name = 'y'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (after,): (String,) = sqlx::query_as("SELECT updated_at::text FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(before, after, "updated_at did not move");
    // The bookkeeping table lives in alphadome, not public.
    let in_public: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = '_sqlx_migrations'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(in_public, 0);
}

#[tokio::test]
async fn running_migrations_twice_is_a_no_op() {
    let db = TestDb::migrated().await;
    let before = (
        columns(&db.pool, "alphadome").await,
        constraints(&db.pool).await,
        indexes(&db.pool).await,
    );
    db::migrate(&db.pool).await.expect("second run");
    let after = (
        columns(&db.pool, "alphadome").await,
        constraints(&db.pool).await,
        indexes(&db.pool).await,
    );
    assert_eq!(before, after);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome._sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
}

/// The live system's schema, as it exists there (with a column the report
/// elides as "...other fields", and a NOT NULL one, to prove nothing is
/// altered), and the report's sample user.
const LIVE_SCHEMA: &str = r#"
CREATE SCHEMA alphadome;
CREATE TABLE alphadome.bot_configs (id serial PRIMARY KEY, config jsonb);
CREATE TABLE public.users (id uuid PRIMARY KEY, phone text, full_name text, subscribed boolean,
    subscription_type text, subscription_level integer, created_at timestamptz, updated_at timestamptz);
CREATE TABLE public.brands (id uuid PRIMARY KEY, is_platform_owner boolean, name text NOT NULL DEFAULT 'brand');
CREATE TABLE public.conversations (id uuid PRIMARY KEY, brand_id uuid REFERENCES public.brands(id),
    user_id uuid REFERENCES public.users(id), whatsapp_message_id text, direction text, raw_payload jsonb,
    message_text text, created_at timestamptz, updated_at timestamptz);
CREATE TABLE public.subscriptions (id uuid PRIMARY KEY, user_id uuid REFERENCES public.users(id), phone text,
    amount integer, plan_type text, level integer, status text, mpesa_checkout_request_id text, account_ref text,
    metadata jsonb, created_at timestamptz, updated_at timestamptz);
CREATE TABLE public.user_sessions (phone text PRIMARY KEY, context jsonb, updated_at timestamptz);
INSERT INTO public.users VALUES ('823c3bcd-b66f-4010-9922-4a3b411226cc', '254702245555', 'Unknown User', false,
    NULL, NULL, '2026-02-01 10:00:00+00', '2026-02-01 10:00:00+00');
INSERT INTO public.brands VALUES ('11111111-1111-1111-1111-111111111111', true, 'Alphadome');
INSERT INTO public.conversations VALUES ('22222222-2222-2222-2222-222222222222', '11111111-1111-1111-1111-111111111111',
    '823c3bcd-b66f-4010-9922-4a3b411226cc', 'wamid.old', 'incoming', '{"a":1}', 'hello', '2026-02-01 10:00:00+00', '2026-02-01 10:00:00+00');
INSERT INTO public.subscriptions VALUES ('33333333-3333-3333-3333-333333333333', '823c3bcd-b66f-4010-9922-4a3b411226cc',
    '254702245555', 500, 'monthly', 1, 'subscribed', 'ws_CO_1', 'ref', '{}', '2026-02-01 10:00:00+00', '2026-02-01 10:00:00+00');
INSERT INTO public.user_sessions VALUES ('254702245555', '{"state":"menu"}', '2026-02-01 10:00:00+00');
"#;

async fn public_rows(pool: &sqlx::PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "users",
        "brands",
        "conversations",
        "subscriptions",
        "user_sessions",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(x)::text FROM public.{t} x ORDER BY 1"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        out.extend(rows.into_iter().map(|r| format!("{t}: {r}")));
    }
    out
}

#[tokio::test]
async fn migrations_leave_the_live_schema_and_its_rows_unchanged() {
    let db = TestDb::empty().await;
    sqlx::raw_sql(LIVE_SCHEMA).execute(&db.pool).await.unwrap();
    let cols_before = columns(&db.pool, "public").await;
    let cons_before: Vec<_> = constraints(&db.pool).await;
    let rows_before = public_rows(&db.pool).await;
    assert!(rows_before
        .iter()
        .any(|r| r.contains("823c3bcd-b66f-4010-9922-4a3b411226cc") && r.contains("254702245555")));

    db::migrate(&db.pool)
        .await
        .expect("migrations apply over the live schema");
    db::migrate(&db.pool).await.expect("and again");

    assert_eq!(
        columns(&db.pool, "public").await,
        cols_before,
        "a public column changed"
    );
    let cons_after = constraints(&db.pool).await;
    for c in &cons_before {
        assert!(cons_after.contains(c), "constraint {c:?} changed");
    }
    assert_eq!(
        public_rows(&db.pool).await,
        rows_before,
        "a live row changed"
    );
    // The live system's own alphadome tables are still there.
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_configs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    // And the new tables exist beside them.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
