//! Tenant manifests applied to the real database: upsert by phone in one
//! transaction, encrypted secrets bound to tenant and column, a second
//! apply changes nothing, bad input writes nothing.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_admin::manifest::{self, Manifest};
use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_tests::{keyring, manifest_yaml, TenantSpec, TestDb};
use secrecy::ExposeSecret;

/// Kenya's country code, for the national numbers in these manifests.
const CC: &str = "254";

const SHOP: &str = r#"
tenant:
  client_name: Kassangas Music Shop
  client_phone: "0702245555"
  point_of_contact_phone: "+254 702 245 555"
  whatsapp_phone_number_id: "106540352242922"
  whatsapp_access_token: EAAG-plain-token-123
  whatsapp_app_secret: app-secret-456
  ai_provider: openrouter
  ai_api_key: sk-or-v1-secret-789
  ai_model: openai/gpt-4o-mini
  webhook_verify_token: verify-abc
control_settings:
  max_messages_per_hour: 100
  fallback_reply: Sorry!
templates:
  - template_name: default
    is_default: true
    tone: friendly
    max_response_length: 300
  - template_name: support
    tone: professional
training_data:
  - data_type: faq
    question: What are your hours?
    answer: 9 to 5.
    priority: 10
    confidence_score: 0.9
  - data_type: canned_reply
    question: hello
    answer: Hi there!
"#;

async fn counts(pool: &sqlx::PgPool) -> (i64, i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM alphadome.bot_tenants), (SELECT count(*) FROM alphadome.bot_templates), \
         (SELECT count(*) FROM alphadome.bot_training_data), (SELECT count(*) FROM alphadome.bot_control_settings), \
         (SELECT count(*) FROM public.brands)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn apply_creates_then_second_apply_changes_nothing() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let m = Manifest::parse(SHOP, CC).unwrap();
    let first = manifest::apply(&db.pool, &ring, &m).await.unwrap();
    assert!(first.created);
    assert_eq!(
        counts(&db.pool).await,
        (1, 2, 2, 1, 1),
        "tenant, 2 templates, 2 rows, settings, a new brand"
    );

    let snapshot = |pool: sqlx::PgPool| async move {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT to_jsonb(t)::text FROM alphadome.bot_tenants t UNION ALL SELECT to_jsonb(x)::text FROM alphadome.bot_templates x \
             UNION ALL SELECT to_jsonb(d)::text FROM alphadome.bot_training_data d UNION ALL SELECT to_jsonb(c)::text FROM alphadome.bot_control_settings c ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let before = snapshot(db.pool.clone()).await;
    let second = manifest::apply(&db.pool, &ring, &Manifest::parse(SHOP, CC).unwrap())
        .await
        .unwrap();
    assert_eq!(second.tenant_id, first.tenant_id);
    assert!(!second.created);
    assert_eq!(second.rows_changed, 0);
    assert_eq!(
        snapshot(db.pool.clone()).await,
        before,
        "second apply changed a row (ciphertext or updated_at)"
    );

    // Phone numbers are normalised.
    let (phone, contact): (String, String) =
        sqlx::query_as("SELECT client_phone, point_of_contact_phone FROM alphadome.bot_tenants")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (phone.as_str(), contact.as_str()),
        ("254702245555", "254702245555")
    );
}

#[tokio::test]
async fn secrets_are_encrypted_and_bound_to_tenant_and_column() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let r = manifest::apply(&db.pool, &ring, &Manifest::parse(SHOP, CC).unwrap())
        .await
        .unwrap();
    let (tok, sec, key): (String, String, String) = sqlx::query_as(
        "SELECT whatsapp_access_token, whatsapp_app_secret, ai_api_key FROM alphadome.bot_tenants",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for (stored, plain) in [
        (&tok, "EAAG-plain-token-123"),
        (&sec, "app-secret-456"),
        (&key, "sk-or-v1-secret-789"),
    ] {
        assert!(
            stored.starts_with(&format!("enc:v1:{}:", ring.current_key_id())),
            "{stored}"
        );
        assert!(!stored.contains(plain));
    }
    let t = ring
        .decrypt(r.tenant_id, SecretColumn::WhatsappAccessToken, &tok)
        .unwrap();
    assert_eq!(t.expose_secret(), "EAAG-plain-token-123");
    // Copied to another tenant or column, the value no longer decrypts.
    let other = alphadome_tests::tenant(&db.pool, &ring, TenantSpec::default()).await;
    sqlx::query("UPDATE alphadome.bot_tenants SET whatsapp_access_token = $1 WHERE id = $2")
        .bind(&tok)
        .bind(other.id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(ring
        .decrypt(other.id, SecretColumn::WhatsappAccessToken, &tok)
        .is_err());
    assert!(ring
        .decrypt(r.tenant_id, SecretColumn::AiApiKey, &tok)
        .is_err());
    // Another master key can't read it at all.
    let stranger = Keyring::from_base64(&Keyring::generate_key(), &[]).unwrap();
    assert!(stranger
        .decrypt(r.tenant_id, SecretColumn::WhatsappAccessToken, &tok)
        .is_err());
    // A changed secret is re-encrypted; an unchanged one keeps its ciphertext.
    let changed = SHOP.replace("EAAG-plain-token-123", "EAAG-new-token");
    manifest::apply(&db.pool, &ring, &Manifest::parse(&changed, CC).unwrap())
        .await
        .unwrap();
    let (tok2, sec2): (String, String) =
        sqlx::query_as("SELECT whatsapp_access_token, whatsapp_app_secret FROM alphadome.bot_tenants WHERE id = $1")
            .bind(r.tenant_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_ne!(tok2, tok);
    assert_eq!(sec2, sec);
    assert_eq!(
        ring.decrypt(r.tenant_id, SecretColumn::WhatsappAccessToken, &tok2)
            .unwrap()
            .expose_secret(),
        "EAAG-new-token"
    );
}

#[tokio::test]
async fn rows_dropped_from_the_manifest_are_deactivated_and_defaults_move() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let r = manifest::apply(&db.pool, &ring, &Manifest::parse(SHOP, CC).unwrap())
        .await
        .unwrap();
    let trimmed = SHOP
        .replace(
            "  - data_type: canned_reply\n    question: hello\n    answer: Hi there!\n",
            "",
        )
        .replace(
            "  - template_name: default\n    is_default: true\n",
            "  - template_name: default\n",
        )
        .replace(
            "  - template_name: support\n",
            "  - template_name: support\n    is_default: true\n",
        );
    let rep = manifest::apply(&db.pool, &ring, &Manifest::parse(&trimmed, CC).unwrap())
        .await
        .unwrap();
    assert!(rep.rows_changed > 0);
    let active: Vec<(String, bool)> = sqlx::query_as(
        "SELECT question, is_active FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 ORDER BY question",
    )
    .bind(r.tenant_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        active,
        vec![
            ("What are your hours?".to_owned(), true),
            ("hello".to_owned(), false)
        ]
    );
    let default: String = sqlx::query_scalar(
        "SELECT template_name FROM alphadome.bot_templates WHERE bot_tenant_id = $1 AND is_default",
    )
    .bind(r.tenant_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(default, "support");
}

#[tokio::test]
async fn conflicts_with_other_tenants_name_the_field_and_write_nothing() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    manifest::apply(&db.pool, &ring, &Manifest::parse(SHOP, CC).unwrap())
        .await
        .unwrap();
    let before = counts(&db.pool).await;
    // Another business claiming the same verify token.
    let stolen_token = SHOP
        .replace("0702245555", "0711000000")
        .replace("106540352242922", "999");
    let e = manifest::apply(
        &db.pool,
        &ring,
        &Manifest::parse(&stolen_token, CC).unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tenant.webhook_verify_token")
            && e.contains("another tenant")
            && e.contains("line 12"),
        "{e}"
    );
    // And the same phone number id.
    let stolen_number = SHOP
        .replace("0702245555", "0711000000")
        .replace("verify-abc", "verify-other");
    let e = manifest::apply(
        &db.pool,
        &ring,
        &Manifest::parse(&stolen_number, CC).unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tenant.whatsapp_phone_number_id") && e.contains("line 6"),
        "{e}"
    );
    // A brand that does not exist.
    let bad_brand = SHOP
        .replace("0702245555", "0711000000")
        .replace("verify-abc", "v2")
        .replace("106540352242922", "998")
        .replace(
            "  ai_provider:",
            "  brand_id: 00000000-0000-0000-0000-000000000001\n  ai_provider:",
        );
    let e = manifest::apply(&db.pool, &ring, &Manifest::parse(&bad_brand, CC).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tenant.brand_id") && e.contains("does not exist"),
        "{e}"
    );
    assert_eq!(
        counts(&db.pool).await,
        before,
        "a refused manifest wrote something"
    );
}

#[tokio::test]
async fn the_kassangas_example_manifest_applies_inactive() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/tenants/kassangas.yaml"
    ))
    .unwrap();
    // Its secrets come from the environment; give them test values.
    let src = src
        .replace("${KASSANGAS_WHATSAPP_TOKEN}", "EAAG-kassangas")
        .replace("${KASSANGAS_APP_SECRET}", "kassangas-app-secret")
        .replace("${KASSANGAS_AI_API_KEY}", "sk-kassangas")
        .replace("${KASSANGAS_VERIFY_TOKEN}", "kassangas-verify");
    let m = Manifest::parse(&src, CC).unwrap();
    let r = manifest::apply(&db.pool, &ring, &m).await.unwrap();
    let (active, name): (bool, String) =
        sqlx::query_as("SELECT is_active, client_name FROM alphadome.bot_tenants WHERE id = $1")
            .bind(r.tenant_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!active, "phase B: inactive until activated");
    assert_eq!(name, "Kassangas Music Shop");
    let templates: Vec<String> = sqlx::query_scalar(
        "SELECT template_name FROM alphadome.bot_templates WHERE bot_tenant_id = $1 ORDER BY 1",
    )
    .bind(r.tenant_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(templates, ["default", "product", "support"]);
    let answerable: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 AND data_type IN ('faq', 'canned_reply')",
    )
    .bind(r.tenant_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(answerable >= 20, "{answerable}");
}

#[tokio::test]
async fn test_manifests_round_trip() {
    // The harness's own manifests go through the same parser.
    let y = manifest_yaml(&TenantSpec::default());
    let m = Manifest::parse(&y, CC).unwrap();
    assert_eq!(m.training_data.len(), 1);
}
