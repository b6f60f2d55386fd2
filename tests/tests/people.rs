//! People and API tokens: `alphadome user ...` and `alphadome token ...`
//! against the real database, passwords checked as a login checks them,
//! and tokens used against the running admin API: a tenant's token sees
//! its own tenant only (another's is a 404), a revoked one is refused.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_admin::people::{self, Role};
use alphadome_cli::stack::Service;
use alphadome_tests::{
    cli, cli_with_stdin, config, graph, keyring, tenant, RunningStack, TenantSpec, TestDb, TestNats,
};
use secrecy::SecretString;

fn one_line_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

#[tokio::test]
async fn people_are_added_listed_disabled_and_their_passwords_checked() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let shop = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let password = "a long enough password";

    // A password on standard input.
    let (code, out, err) = cli_with_stdin(
        &[
            "user",
            "add",
            "Ann@Shop.example",
            "--role",
            "tenant-admin",
            "--tenant",
            "254700000001",
        ],
        &env,
        Some(&format!("{password}\n")),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "a given password is not printed: {out}");
    // None given: one is generated and printed once.
    let (code, out, err) = cli(
        &[
            "user",
            "add",
            "root@platform.example",
            "--role",
            "platform-admin",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let generated = out.trim().to_owned();
    assert_eq!(generated.len(), 24, "{out}");
    assert!(err.contains("shown only now"), "{err}");

    // Bad input: one line naming what is wrong, nothing written.
    for (args, input, expect) in [
        (
            vec![
                "user",
                "add",
                "ann@shop.example",
                "--role",
                "agent",
                "--tenant",
                "254700000001",
            ],
            Some("another password!"),
            "already exists",
        ),
        (
            vec!["user", "add", "bob@shop.example", "--role", "agent"],
            None,
            "give --tenant",
        ),
        (
            vec![
                "user",
                "add",
                "bob@shop.example",
                "--role",
                "platform-admin",
                "--tenant",
                "254700000001",
            ],
            None,
            "leave out --tenant",
        ),
        (
            vec![
                "user",
                "add",
                "bob@shop.example",
                "--role",
                "agent",
                "--tenant",
                "254799999999",
            ],
            None,
            "no tenant with id or phone",
        ),
        (
            vec!["user", "add", "bob", "--role", "platform-admin"],
            None,
            "not of the form name@domain",
        ),
        (
            vec![
                "user",
                "add",
                "bob@shop.example",
                "--role",
                "platform-admin",
            ],
            Some("short\n"),
            "at least 12 characters",
        ),
        (
            vec!["user", "disable", "nobody@shop.example"],
            None,
            "no person with e-mail",
        ),
    ] {
        let (code, out, err) = cli_with_stdin(&args, &env, input);
        assert_eq!(code, 1, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        let line = one_line_error(&err);
        assert!(line.contains(expect), "{args:?} -> {line}");
    }
    let (code, _, err) = cli(
        &["user", "add", "bob@shop.example", "--role", "owner"],
        &env,
    );
    assert_eq!(code, 2, "clap refuses an unknown role");
    assert!(err.contains("platform-admin"), "{err}");
    let people: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.dashboard_users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(people, 2);

    // Listed without any hash; stored as argon2id, never the password.
    let (code, out, _) = cli(&["user", "list"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("ann@shop.example")
            && out.contains("Test Shop")
            && out.contains("tenant-admin")
    );
    assert!(out.contains("root@platform.example") && out.contains("(all)"));
    assert!(!out.contains("argon2") && !out.contains(password));
    let (code, out, _) = cli(&["user", "list", "--json"], &env);
    assert_eq!(code, 0);
    assert!(
        !out.contains("argon2") && !out.contains("password"),
        "{out}"
    );
    let hash: String = sqlx::query_scalar(
        "SELECT password_hash FROM alphadome.dashboard_users WHERE email = 'ann@shop.example'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(password));

    // The login check: the right password (any case of the address).
    let ann = people::check_password(
        &db.pool,
        "ANN@shop.example",
        &SecretString::from(password.to_owned()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ann.role, Role::TenantAdmin);
    assert_eq!(ann.tenant, Some(shop.id));
    assert_eq!(ann.actor, "user:ann@shop.example");
    let root = people::check_password(
        &db.pool,
        "root@platform.example",
        &SecretString::from(generated.clone()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((root.role, root.tenant), (Role::PlatformAdmin, None));
    for (email, pw) in [
        ("ann@shop.example", "a long enough passwore"),
        ("nobody@shop.example", password),
        ("not an address", password),
    ] {
        let found = people::check_password(&db.pool, email, &SecretString::from(pw.to_owned()))
            .await
            .unwrap();
        assert!(found.is_none(), "{email}");
    }
    let logged_in: bool = sqlx::query_scalar(
        "SELECT last_login_at IS NOT NULL FROM alphadome.dashboard_users WHERE email = 'ann@shop.example'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(logged_in, "the login is recorded");

    // Disabled: the right password no longer logs in.
    let (code, out, _) = cli(&["user", "disable", "ann@shop.example"], &env);
    assert_eq!((code, out.trim()), (0, "ann@shop.example is disabled"));
    let (code, out, _) = cli(&["user", "disable", "ann@shop.example"], &env);
    assert_eq!(
        (code, out.trim()),
        (0, "ann@shop.example was already disabled")
    );
    let found = people::check_password(
        &db.pool,
        "ann@shop.example",
        &SecretString::from(password.to_owned()),
    )
    .await
    .unwrap();
    assert!(found.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_see_their_own_tenant_only_and_stop_when_revoked() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (_graph, graph_url, _stop) = graph().await;
    let a = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let b = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            name: "Other Shop",
            phone: "254700000002",
            phone_number_id: "100000000000002",
            token: "EAAG-test-token-2",
            ..TenantSpec::default()
        },
    )
    .await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let create = |name: &str, role: &str, tenant: Option<&str>| {
        let mut args = vec!["token", "create", "--name", name, "--role", role];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        let (code, out, err) = cli(&args, &env);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("shown only now"), "{err}");
        out.trim().to_owned()
    };
    let shop_token = create("shop-bot", "tenant-admin", Some("254700000001"));
    let agent_token = create("shop-agent", "agent", Some(&a.id.to_string()));
    let root_token = create("ops", "platform-admin", None);
    assert!(shop_token.starts_with("adt_") && shop_token != agent_token);
    for (args, expect) in [
        (
            vec![
                "token",
                "create",
                "--name",
                "shop-bot",
                "--role",
                "platform-admin",
            ],
            "already exists",
        ),
        (
            vec![
                "token",
                "create",
                "--name",
                "bad name",
                "--role",
                "platform-admin",
            ],
            "must be 1-64 letters",
        ),
        (
            vec!["token", "create", "--name", "x", "--role", "agent"],
            "give --tenant",
        ),
        (vec!["token", "revoke", "nope"], "no live token named"),
    ] {
        let (code, _, err) = cli(&args, &env);
        assert_eq!(code, 1, "{args:?}");
        assert!(one_line_error(&err).contains(expect), "{args:?}: {err}");
    }
    // Stored as a digest only.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alphadome.api_tokens WHERE token_digest = $1")
            .bind(people::token_digest(&shop_token))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
    let (code, out, _) = cli(&["token", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("shop-bot") && out.contains("ops") && !out.contains(&shop_token));

    // No ALPHADOME_ADMIN_TOKEN: the stored tokens alone open the API.
    let stack = RunningStack::start(config(&db, &nats, ring, &graph_url), &[Service::Admin]).await;
    let client = reqwest::Client::new();
    let get = |path: String, bearer: String| {
        let req = client
            .get(format!("http://{}{path}", stack.addr))
            .bearer_auth(bearer);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = get("/api/v1/tenants".into(), root_token.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&all).len(), 2);
    for token in [&shop_token, &agent_token] {
        let (status, mine) = get("/api/v1/tenants".into(), token.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(ids(&mine), vec![a.id.to_string()]);
        let (status, own) = get(format!("/api/v1/tenants/{}", a.id), token.clone()).await;
        assert_eq!(
            (status, own["client_name"].as_str()),
            (200, Some("Test Shop"))
        );
        // Another tenant's, by id or phone: as if it did not exist.
        for other in [b.id.to_string(), "254700000002".to_owned()] {
            let (status, body) = get(format!("/api/v1/tenants/{other}"), token.clone()).await;
            assert_eq!(status, 404, "{other}");
            assert!(!body.to_string().contains("Other Shop"));
        }
    }
    let (status, other) = get(format!("/api/v1/tenants/{}", b.id), root_token.clone()).await;
    assert_eq!(
        (status, other["client_name"].as_str()),
        (200, Some("Other Shop"))
    );

    // Revoked: refused at once; the others still work.
    let (code, out, _) = cli(&["token", "revoke", "shop-bot"], &env);
    assert_eq!((code, out.trim()), (0, "token shop-bot is revoked"));
    let (status, _) = get("/api/v1/tenants".into(), shop_token.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = get("/api/v1/tenants".into(), agent_token.clone()).await;
    assert_eq!(status, 200);
    let (code, out, _) = cli(&["token", "list", "--json"], &env);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let revoked: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["revoked_at"].is_null())
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, vec!["shop-bot"]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "ops" && !t["last_used_at"].is_null()));
    // The name is free again for a new token.
    let again = create("shop-bot", "tenant-admin", Some("254700000001"));
    assert_ne!(again, shop_token);
    let (status, _) = get("/api/v1/tenants".into(), again).await;
    assert_eq!(status, 200);
    stack.stop().await.unwrap();
}
