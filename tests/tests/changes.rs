//! The change audit: every change made through the admin's operations is
//! recorded with who made it, what it was, and the thing before and after,
//! secrets masked; a change that changes nothing records nothing; the
//! record cannot be edited.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_tests::{cli, cli_with_stdin, keyring, TestDb};

fn log(env: &[(&str, &str)], extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "log", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args, env);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn every_change_is_recorded_with_who_what_before_and_after_and_no_secret() {
    let db = TestDb::migrated().await;
    let (key, _) = keyring();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("ALPHADOME_MASTER_KEY", key.as_str()),
        ("NATS_URL", "nats://127.0.0.1:1"),
        ("USER", "operator-ann"),
    ];
    let dir = std::env::temp_dir().join(format!("alphadome-changes-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shop.yaml");
    let manifest = |token: &str, answer: &str| {
        format!(
            "tenant:\n  client_name: Audit Shop\n  client_phone: '0722000222'\n  whatsapp_phone_number_id: '5550002'\n  \
             whatsapp_access_token: {token}\n  ai_api_key: sk-audit-secret-key\n  webhook_verify_token: audit-verify-secret\n\
             training_data:\n  - data_type: faq\n    question: hours?\n    answer: {answer}\n"
        )
    };
    let f = file.to_str().unwrap();
    std::fs::write(&file, manifest("EAAG-audit-secret-one", "nine to five")).unwrap();
    let (code, out, err) = cli(&["tenant", "apply", "-f", f], &env);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();

    let records = log(&env, &[]);
    assert_eq!(records.len(), 1, "{records:?}");
    let created = &records[0];
    assert_eq!(created["action"], "tenant.apply");
    assert_eq!(created["actor"], "cli:operator-ann");
    assert_eq!(created["subject"], id.as_str());
    assert_eq!(created["tenant_id"], id.as_str());
    assert!(created["before"].is_null());
    let after = &created["after"];
    assert_eq!(after["tenant"]["client_name"], "Audit Shop");
    assert_eq!(after["training_data"]["rows"], 1);
    let masked = after["tenant"]["whatsapp_access_token"].as_str().unwrap();
    assert!(masked.starts_with("******** (set, "), "{masked}");

    // Unchanged: nothing recorded.
    let (code, _, _) = cli(&["tenant", "apply", "-f", f], &env);
    assert_eq!(code, 0);
    assert_eq!(log(&env, &[]).len(), 1);

    // A new token and a new answer: both show as changed, neither value.
    std::fs::write(&file, manifest("EAAG-audit-secret-two", "ten to six")).unwrap();
    let (code, _, err) = cli(&["tenant", "apply", "-f", f], &env);
    assert_eq!(code, 0, "{err}");
    let records = log(&env, &[]);
    assert_eq!(records.len(), 2);
    let edit = &records[0];
    assert_eq!(edit["action"], "tenant.apply");
    assert_ne!(
        edit["before"]["tenant"]["whatsapp_access_token"],
        edit["after"]["tenant"]["whatsapp_access_token"]
    );
    assert_eq!(
        edit["before"]["tenant"]["ai_api_key"], edit["after"]["tenant"]["ai_api_key"],
        "an unchanged secret keeps its fingerprint"
    );
    assert_ne!(
        edit["before"]["training_data"]["digest"],
        edit["after"]["training_data"]["digest"]
    );

    // Go-live and verify token rotation.
    let (code, _, _) = cli(&["tenant", "activate", &id], &env);
    assert_eq!(code, 0);
    let (code, _, _) = cli(&["tenant", "activate", &id], &env);
    assert_eq!(code, 0, "already active: nothing to record");
    let (code, _, _) = cli(&["tenant", "rotate-verify-token", &id], &env);
    assert_eq!(code, 0);

    // People and tokens: the tenant's and the platform's.
    let (code, _, err) = cli_with_stdin(
        &[
            "user",
            "add",
            "agent@audit.example",
            "--role",
            "agent",
            "--tenant",
            &id,
        ],
        &env,
        Some("a long enough password"),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = cli(
        &[
            "user",
            "add",
            "ops@audit.example",
            "--role",
            "platform-admin",
        ],
        &env,
    );
    assert_eq!(code, 0);
    let (code, token, _) = cli(
        &[
            "token",
            "create",
            "--name",
            "audit-bot",
            "--role",
            "tenant-admin",
            "--tenant",
            &id,
        ],
        &env,
    );
    assert_eq!(code, 0);
    let (code, _, _) = cli(&["token", "revoke", "audit-bot"], &env);
    assert_eq!(code, 0);
    let (code, _, _) = cli(&["user", "disable", "agent@audit.example"], &env);
    assert_eq!(code, 0);

    let records = log(&env, &[]);
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "user.disable",
            "token.revoke",
            "token.create",
            "user.add",
            "user.add",
            "tenant.rotate_verify_token",
            "tenant.activate",
            "tenant.apply",
            "tenant.apply",
        ]
    );
    let activate = &records[6];
    assert_eq!(activate["before"]["is_active"], false);
    assert_eq!(activate["after"]["is_active"], true);
    assert!(records.iter().all(|r| r["actor"] == "cli:operator-ann"));

    // Secrets: never in the record, whatever its form.
    let everything = serde_json::to_string(&records).unwrap();
    for secret in [
        "EAAG-audit-secret-one",
        "EAAG-audit-secret-two",
        "sk-audit-secret-key",
        "audit-verify-secret",
        "a long enough password",
        token.trim(),
    ] {
        assert!(!everything.contains(secret), "the audit holds a secret");
    }
    let raw: String = sqlx::query_scalar(
        "SELECT string_agg(concat_ws(' ', before::text, after::text), ' ') FROM alphadome.change_audit",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!raw.contains("enc:v1:"), "no ciphertext either");

    // One tenant's changes: the platform admin's addition is not one.
    let mine = log(&env, &["--tenant", "0722000222"]);
    assert_eq!(mine.len(), records.len() - 1);
    assert!(mine.iter().all(|r| r["tenant_id"] == id.as_str()));
    assert_eq!(log(&env, &["--limit", "2"]).len(), 2);
    assert_eq!(log(&env, &["--since", "2999-01-01"]).len(), 0);
    let (code, _, err) = cli(&["audit", "log", "--since", "yesterday"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("--since \"yesterday\" is not a date"), "{err}");

    // The table for people.
    let (code, out, _) = cli(&["audit", "log"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("tenant.apply") && out.contains("cli:operator-ann"));
    assert!(
        out.contains("training_data"),
        "the changed parts are named: {out}"
    );

    // Append-only, even for the owner.
    for statement in [
        "UPDATE alphadome.change_audit SET actor = 'someone else'",
        "DELETE FROM alphadome.change_audit",
        "TRUNCATE alphadome.change_audit",
    ] {
        let e = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{statement}: {e}");
    }
}
