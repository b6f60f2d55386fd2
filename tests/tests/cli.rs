//! The `alphadome` command: help on every command, one-line errors with a
//! non-zero exit, tenant management end to end, secrets never printed.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_tests::{cli, keyring, TestDb};

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["migrate", "--help"],
        vec!["tenant", "--help"],
        vec!["tenant", "apply", "--help"],
        vec!["tenant", "list", "--help"],
        vec!["tenant", "show", "--help"],
        vec!["tenant", "activate", "--help"],
        vec!["tenant", "deactivate", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "generate", "--help"],
        vec!["up", "--help"],
        vec!["run", "--help"],
        vec!["simulate", "--help"],
        vec!["user", "add", "--help"],
        vec!["user", "list", "--help"],
        vec!["user", "disable", "--help"],
        vec!["token", "create", "--help"],
        vec!["token", "list", "--help"],
        vec!["token", "revoke", "--help"],
        vec!["audit", "log", "--help"],
    ] {
        let (code, out, _) = cli(&args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

#[test]
fn configuration_errors_name_the_variable() {
    let (code, _, err) = cli(&["migrate"], &[]);
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("DATABASE_URL is not set"),
        "{err}"
    );
    let (code, _, err) = cli(&["migrate"], &[("DATABASE_URL", "mysql://x")]);
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("DATABASE_URL is invalid"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("alphadome-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.yaml");
    std::fs::write(
        &file,
        "tenant:\n  client_name: x\n  client_phone: '254700000000'\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, _, err) = cli(
        &["tenant", "apply", "-f", f],
        &[("DATABASE_URL", "postgres://127.0.0.1/x")],
    );
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("ALPHADOME_MASTER_KEY is not set"),
        "{err}"
    );
    let (code, _, err) = cli(
        &["tenant", "apply", "-f", f],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("ALPHADOME_MASTER_KEY", "c2hvcnQ="),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("ALPHADOME_MASTER_KEY must decode to 32 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn tenant_lifecycle_through_the_cli() {
    let db = TestDb::migrated().await;
    let (key, _) = keyring();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("ALPHADOME_MASTER_KEY", key.as_str()),
        ("NATS_URL", "nats://127.0.0.1:1"),
    ];
    let dir = std::env::temp_dir().join(format!("alphadome-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shop.yaml");
    std::fs::write(
        &file,
        "tenant:\n  client_name: CLI Shop\n  client_phone: '0722000111'\n  whatsapp_phone_number_id: '5550001'\n  \
         whatsapp_access_token: EAAG-cli-secret-token\n  ai_api_key: sk-cli-secret-key\n  webhook_verify_token: cli-verify-secret\n\
         training_data:\n  - data_type: faq\n    question: hours?\n    answer: nine to five\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = cli(&["tenant", "apply", "-f", f], &env);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "prints the tenant id: {out}"
    );
    assert!(err.contains("created"));
    let (code, out, err) = cli(&["tenant", "apply", "-f", f], &env);
    assert_eq!((code, out.trim()), (0, id.as_str()));
    assert!(err.contains("unchanged (0 rows changed)"), "{err}");

    let (code, out, _) = cli(&["tenant", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("CLI Shop") && out.contains("254722000111") && out.contains(&id));
    for who in [id.as_str(), "0722000111", "254722000111"] {
        let (code, out, _) = cli(&["tenant", "show", who], &env);
        assert_eq!(code, 0);
        assert!(out.contains("CLI Shop"));
        assert!(out.contains("******** (encrypted, key"));
        for secret in [
            "EAAG-cli-secret-token",
            "sk-cli-secret-key",
            "cli-verify-secret",
        ] {
            assert!(!out.contains(secret), "`tenant show` printed a secret");
        }
    }
    let (code, out, _) = cli(&["tenant", "show", &id, "--json"], &env);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["is_active"], false);

    let (code, out, _) = cli(&["tenant", "activate", "0722000111"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("now active"));
    let active: bool = sqlx::query_scalar("SELECT is_active FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(active);
    // Re-applying the manifest (which says nothing of is_active) keeps the go-live.
    let (code, _, _) = cli(&["tenant", "apply", "-f", f], &env);
    assert_eq!(code, 0);
    let (code, out, _) = cli(&["tenant", "deactivate", &id], &env);
    assert_eq!(code, 0);
    assert!(out.contains("now inactive"));
    let active: bool = sqlx::query_scalar("SELECT is_active FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!active);

    let (code, _, err) = cli(&["tenant", "show", "0799999999"], &env);
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("no tenant with id or phone"),
        "{err}"
    );

    // Bad manifests: a one-line error naming field and line, nothing written.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_training_data")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for (text, expect) in [
        ("tenant:\n  client_name: x\n  client_phone: '0722000111'\n  bogus: 1\n", "unknown field `bogus`"),
        ("tenant:\n  client_name: x\n", "missing field `client_phone`"),
        ("tenant: [\n", "line"),
        ("tenant:\n  client_name: x\n  client_phone: '0722000111'\n  ai_provider: skynet\n", "tenant.ai_provider"),
        ("tenant:\n  client_name: x\n  client_phone: 'abc'\n", "tenant.client_phone"),
        ("tenant:\n  client_name: x\n  client_phone: '0733000111'\n  webhook_verify_token: cli-verify-secret\n", "tenant.webhook_verify_token"),
    ] {
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = cli(&["tenant", "apply", "-f", f], &env);
        assert_eq!(code, 1, "{text}");
        assert!(out.is_empty());
        let line = one_line_error(&err);
        assert!(line.contains(expect) && line.contains(f), "{text:?} -> {line}");
        assert!(!line.contains("cli-verify-secret"), "error printed a secret: {line}");
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_training_data")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((before, tenants), (after, 1));
}

#[test]
fn keys_generate_prints_a_usable_key() {
    let (code, out, _) = cli(&["keys", "generate"], &[]);
    assert_eq!(code, 0);
    assert!(alphadome_core::crypto::Keyring::from_base64(out.trim(), &[]).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_chats_with_a_running_platform() {
    let db = TestDb::migrated().await;
    let nats = alphadome_tests::TestNats::new();
    let (key, ring) = keyring();
    let t = alphadome_tests::tenant(&db.pool, &ring, alphadome_tests::TenantSpec::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let graph_url = format!("http://127.0.0.1:{port}/v24.0");
    let stack = alphadome_tests::RunningStack::start(
        alphadome_tests::config(&db, &nats, ring.clone(), &graph_url),
        &alphadome_cli::stack::Service::ALL,
    )
    .await;
    let listen = format!("127.0.0.1:{port}");
    let ingress = stack.webhook_url();
    let (db_url, tenant_phone) = (db.url.clone(), t.phone.clone());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(
            &[
                "simulate",
                "--tenant",
                &tenant_phone,
                "--ingress",
                &ingress,
                "--graph-listen",
                &listen,
                "-m",
                "what are your opening hours",
                "-m",
                "xyzzy plugh",
            ],
            &[
                ("DATABASE_URL", &db_url),
                ("ALPHADOME_MASTER_KEY", &key),
                ("META_APP_SECRET", alphadome_tests::PLATFORM_APP_SECRET),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "bot> We are open 9 to 5.",
            &format!("bot> {}", alphadome_core::config::DEFAULT_FALLBACK_REPLY)
        ]
    );
    stack.stop().await.unwrap();
}
