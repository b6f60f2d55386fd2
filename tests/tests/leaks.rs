//! No secret leaks: after a run that exercises every path that touches a
//! credential (onboarding, FAQ and AI replies, AI and Graph API failures,
//! statuses, bad signatures, the verification handshake, the CLI), no
//! plaintext secret is in any database column, in the services' logs (at
//! debug level), in the exported traces, or in any command's output.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alphadome_testkit::graph::Behaviour;
use alphadome_tests::*;

const TOKEN: &str = "EAAGleakcheckWhatsappToken0123456789";
const APP_SECRET: &str = "leakcheck-app-secret-9f8e7d6c5b4a";
const AI_KEY: &str = "sk-leakcheck-ai-key-ABCDEFGHIJKLMNOP";
const VERIFY: &str = "leakcheck-verify-token-ZYXWVUTSRQ";
const SECRETS: [&str; 4] = [TOKEN, APP_SECRET, AI_KEY, VERIFY];

fn assert_clean(place: &str, text: &str) {
    for s in SECRETS {
        assert!(
            !text.contains(s),
            "a secret ({}…) leaked into {place}",
            &s[..8]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_database_logs_traces_or_command_output() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (key, _) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let (llm, llm_url) = LlmStandIn::start().await;
    // A stand-in OTLP collector keeping every exported batch.
    let exported = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = exported.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().extend_from_slice(&body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut outputs: Vec<(String, String)> = Vec::new();
    let env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.url.clone()),
        ("ALPHADOME_MASTER_KEY", key.clone()),
        ("NATS_URL", nats_url()),
        ("ALPHADOME_NATS_PREFIX", nats.prefix.clone()),
        ("LEAK_TOKEN", TOKEN.into()),
        ("LEAK_APP_SECRET", APP_SECRET.into()),
        ("LEAK_AI_KEY", AI_KEY.into()),
        ("LEAK_VERIFY", VERIFY.into()),
    ];
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = std::env::temp_dir().join(format!("alphadome-leaks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("t.yaml");
    std::fs::write(
        &manifest,
        "tenant:\n  client_name: Leak Check\n  client_phone: '254700111222'\n  whatsapp_phone_number_id: '777'\n  \
         whatsapp_access_token: ${LEAK_TOKEN}\n  whatsapp_app_secret: ${LEAK_APP_SECRET}\n  ai_provider: openai\n  \
         ai_api_key: ${LEAK_AI_KEY}\n  ai_model: m\n  webhook_verify_token: ${LEAK_VERIFY}\n  is_active: true\n\
         control_settings:\n  enable_ai_responses: true\n  fallback_reply: fallback\n\
         training_data:\n  - data_type: faq\n    question: opening hours?\n    answer: nine to five\n",
    )
    .unwrap();
    let m = manifest.to_str().unwrap().to_owned();
    for args in [
        vec!["tenant", "apply", "-f", m.as_str()],
        vec!["tenant", "apply", "-f", m.as_str()],
    ] {
        let (code, out, err) = cli(&args, &envs);
        assert_eq!(code, 0, "{err}");
        outputs.push((format!("{args:?}"), out + &err));
    }

    // The platform as a real process, logging at debug level and exporting traces.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.join("up.log");
    let mut child = Command::new(alphadome_bin())
        .arg("up")
        .envs(envs.iter().copied())
        .env("META_APP_SECRET", PLATFORM_APP_SECRET)
        .env("WHATSAPP_GRAPH_URL", &graph_url)
        .env("OPENAI_BASE_URL", format!("{llm_url}/v1"))
        .env("ALPHADOME_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), "platform ready", || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    let url = format!("{base}/webhook");
    let send = |w: &'static str, text: &'static str| {
        let url = url.clone();
        async move {
            let body = text_webhook("777", "254711000666", w, text);
            assert_eq!(post_signed(&url, APP_SECRET, &body).await.status(), 200);
        }
    };
    // FAQ, AI, AI failure (a rejected key), a Graph error (190), statuses.
    send("wamid.leak.1", "opening hours").await;
    send("wamid.leak.2", "something only the model knows").await;
    llm.script([LlmBehaviour::Status(401, r#"{"error":{"message":"Incorrect API key provided: sk-leakc***MNOP","code":"invalid_api_key"}}"#.into(), None)]);
    send("wamid.leak.3", "another thing only the model knows").await;
    graph.wait_for(3, Duration::from_secs(15)).await;
    let sent = graph.received()[0].wamid.clone();
    for st in ["delivered", "read"] {
        let body = status_webhook("777", &sent, st, 1_750_000_000, None);
        post_signed(&url, APP_SECRET, &body).await;
    }
    graph.script([Behaviour::Error {
        status: 401,
        code: 190,
    }]);
    send("wamid.leak.4", "opening hours").await;
    // A bad signature and the verification handshake.
    post_signed(
        &url,
        "wrong",
        &text_webhook("777", "254711000666", "wamid.leak.5", "x"),
    )
    .await;
    let r = reqwest::get(format!(
        "{url}?hub.mode=subscribe&hub.challenge=7&hub.verify_token={VERIFY}"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    eventually(
        Duration::from_secs(15),
        "the token marked invalid",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT whatsapp_token_invalid_at IS NOT NULL FROM alphadome.bot_tenants",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();

    // The CLI's views.
    for args in [
        vec!["tenant", "list"],
        vec!["tenant", "list", "--json"],
        vec!["tenant", "show", "254700111222"],
        vec!["tenant", "show", "254700111222", "--json"],
        vec!["usage", "--tenant", "254700111222"],
        vec!["audit", "verify"],
    ] {
        let (code, out, err) = cli(&args, &envs);
        assert_eq!(code, 0, "{args:?}: {err}");
        outputs.push((format!("{args:?}"), out + &err));
    }
    for (what, text) in &outputs {
        assert_clean(&format!("the output of {what}"), text);
    }

    // The services' logs, at debug level.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("wamid.leak.1"), "the log was captured");
    assert_clean("the service logs", &logs);
    // The exported traces.
    let traces = exported.lock().unwrap().clone();
    assert!(!traces.is_empty(), "spans were exported");
    assert_clean("the exported traces", &String::from_utf8_lossy(&traces));

    // Every text and JSON column of every table.
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema IN ('public', 'alphadome') AND data_type IN ('text', 'character varying', 'json', 'jsonb', 'bytea') \
           AND table_name IN (SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema IN ('public', 'alphadome'))",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(columns.len() > 40, "scanned {} columns", columns.len());
    for (schema, table, column) in columns {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {schema}.{table} WHERE {column}::text LIKE ANY($1)"
        ))
        .bind(SECRETS.iter().map(|s| format!("%{s}%")).collect::<Vec<_>>())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            hits, 0,
            "a plaintext secret is stored in {schema}.{table}.{column}"
        );
    }
}
