//! Credential security: the hash-chained audit trail of every credential
//! use, master key rotation while the services run.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use alphadome_cli::stack::Service;
use alphadome_core::crypto::Keyring;
use alphadome_tests::*;

async fn audit_rows(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT credential, actor, purpose FROM alphadome.credential_audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_credential_use_is_audited_and_tampering_is_detected() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let (_llm, llm_url) = LlmStandIn::start().await;
    let t = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            app_secret: Some("tenant-app-secret"),
            control: "enable_ai_responses: true",
            tenant_extra: "ai_provider: openai\nai_api_key: sk-audited\nai_model: m",
            ..Default::default()
        },
    )
    .await;
    let set: Vec<_> = audit_rows(&db.pool).await;
    assert_eq!(
        set.len(),
        3,
        "tenant apply records each credential it sets: {set:?}"
    );
    assert!(set
        .iter()
        .all(|(_, actor, purpose)| actor == "admin:cli" && purpose.contains("tenant apply")));

    let mut cfg = config(&db, &nats, ring.clone(), &graph_url);
    cfg.ai.openai_base = format!("{llm_url}/v1");
    let stack = RunningStack::start(cfg, &Service::ALL).await;
    for (w, text) in [
        ("wamid.au.1", "opening hours"),
        ("wamid.au.2", "something only the model knows"),
    ] {
        let body = text_webhook(&t.phone_number_id, "254711000444", w, text);
        assert_eq!(
            post_signed(&stack.webhook_url(), "tenant-app-secret", &body)
                .await
                .status(),
            200
        );
    }
    graph.wait_for(2, Duration::from_secs(10)).await;
    stack.stop().await.unwrap();
    let rows = audit_rows(&db.pool).await;
    let used = |credential: &str, actor: &str| {
        rows.iter()
            .any(|(c, a, p)| c == credential && a == actor && p.contains("cache fill"))
    };
    assert!(used("whatsapp_app_secret", "service:ingress"), "{rows:?}");
    assert!(used("whatsapp_access_token", "service:sender"), "{rows:?}");
    assert!(used("ai_api_key", "service:responder"), "{rows:?}");
    let tenants: Vec<Option<uuid::Uuid>> =
        sqlx::query_scalar("SELECT DISTINCT bot_tenant_id FROM alphadome.credential_audit_log")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(tenants, [Some(t.id)]);

    let env = [("DATABASE_URL", db.url.as_str())];
    let (code, out, _) = cli(&["audit", "verify"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("intact"), "{out}");
    // Append-only for everyone.
    assert!(
        sqlx::query("UPDATE alphadome.credential_audit_log SET purpose = 'x'")
            .execute(&db.pool)
            .await
            .is_err()
    );
    assert!(sqlx::query("DELETE FROM alphadome.credential_audit_log")
        .execute(&db.pool)
        .await
        .is_err());
    assert!(sqlx::query("TRUNCATE alphadome.credential_audit_log")
        .execute(&db.pool)
        .await
        .is_err());
    // Someone with the power to switch the guard off edits a row ...
    let second: i64 = sqlx::query_scalar(
        "SELECT id FROM alphadome.credential_audit_log ORDER BY id OFFSET 1 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(&format!(
        "ALTER TABLE alphadome.credential_audit_log DISABLE TRIGGER credential_audit_log_append_only; \
         UPDATE alphadome.credential_audit_log SET actor = 'service:nobody' WHERE id = {second}; \
         ALTER TABLE alphadome.credential_audit_log ENABLE TRIGGER credential_audit_log_append_only;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, _, err) = cli(&["audit", "verify"], &env);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("broken at row {second}")) && err.contains("edited"),
        "{err}"
    );
}

#[tokio::test]
async fn a_deleted_audit_row_breaks_the_chain() {
    let db = TestDb::migrated().await;
    let t = uuid::Uuid::new_v4();
    for purpose in ["one", "two", "three"] {
        alphadome_core::audit::record(
            &db.pool,
            t,
            alphadome_core::crypto::SecretColumn::AiApiKey,
            "admin:test",
            purpose,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        alphadome_core::audit::verify(&db.pool)
            .await
            .unwrap()
            .broken,
        None
    );
    sqlx::raw_sql(
        "ALTER TABLE alphadome.credential_audit_log DISABLE TRIGGER credential_audit_log_append_only; \
         DELETE FROM alphadome.credential_audit_log WHERE purpose = 'two';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let check = alphadome_core::audit::verify(&db.pool).await.unwrap();
    let (_, why) = check.broken.expect("the deletion is detected");
    assert!(why.contains("deleted"), "{why}");
}

#[tokio::test]
async fn master_keys_rotate_while_the_services_keep_answering() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (graph, graph_url, _stop) = graph().await;
    let old_key = Keyring::generate_key();
    let old = Arc::new(Keyring::from_base64(&old_key, &[]).unwrap());
    let t = tenant(
        &db.pool,
        &old,
        TenantSpec {
            app_secret: Some("rot-secret"),
            ..Default::default()
        },
    )
    .await;
    // The services restart with the new key, still holding the old one.
    let new_key = Keyring::generate_key();
    let both = Arc::new(Keyring::from_base64(&new_key, &[old_key.as_str()]).unwrap());
    let stack =
        RunningStack::start(config(&db, &nats, both.clone(), &graph_url), &Service::ALL).await;
    let ask = |w: &'static str| {
        let url = stack.webhook_url();
        let pnid = t.phone_number_id.clone();
        async move {
            let body = text_webhook(&pnid, "254711000555", w, "opening hours");
            assert_eq!(post_signed(&url, "rot-secret", &body).await.status(), 200);
        }
    };
    ask("wamid.rot.1").await;
    assert_eq!(graph.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    // Without the old key, nothing can be rotated: said clearly.
    let (code, _, err) = tokio::task::spawn_blocking({
        let (url, k) = (db.url.clone(), new_key.clone());
        move || {
            cli(
                &["keys", "rotate"],
                &[("DATABASE_URL", &url), ("ALPHADOME_MASTER_KEY", &k)],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("could not be decrypted with any configured key"),
        "{err}"
    );

    let (code, out, err) = tokio::task::spawn_blocking({
        let (url, k, o) = (db.url.clone(), new_key.clone(), old_key.clone());
        move || {
            cli(
                &["keys", "rotate"],
                &[
                    ("DATABASE_URL", &url),
                    ("ALPHADOME_MASTER_KEY", &k),
                    ("ALPHADOME_PREVIOUS_MASTER_KEYS", &o),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 in all, 2 re-encrypted"), "{out}");
    assert!(err.contains("re-encrypted 2/2"), "progress: {err}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT unnest(ARRAY[whatsapp_access_token, whatsapp_app_secret]) FROM alphadome.bot_tenants")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|s| Keyring::key_id_of(s) == Some(both.current_key_id())),
        "{stored:?}"
    );
    let rotations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.credential_audit_log WHERE purpose = 'master key rotation'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rotations, 2);

    // The running services go on answering ...
    ask("wamid.rot.2").await;
    assert_eq!(graph.wait_for(2, Duration::from_secs(10)).await.len(), 2);
    stack.stop().await.unwrap();
    // ... and after a restart with the new key alone, too.
    let only_new = Arc::new(Keyring::from_base64(&new_key, &[]).unwrap());
    let stack = RunningStack::start(config(&db, &nats, only_new, &graph_url), &Service::ALL).await;
    let body = text_webhook(
        &t.phone_number_id,
        "254711000555",
        "wamid.rot.3",
        "opening hours",
    );
    assert_eq!(
        post_signed(&stack.webhook_url(), "rot-secret", &body)
            .await
            .status(),
        200
    );
    assert_eq!(graph.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn token_expiry_alerts_go_out_once_per_threshold() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let (smtp, smtp_url) = SmtpSink::start().await;
    let contacts = "escalation_phone: '0733000999'\nescalation_email: owner@example.com";
    let day = |d: i64| (chrono_now() + d * 86_400).to_string();
    // The first tenant has an approved template for token alerts; the
    // others' contact wrote today (their window is open).
    let alert_template = "  - name: token_warning\n    language: en\n    parameters: [business_name, reason]\n    use_for: [token_alert]\n";
    let mk = |n: u32, extra: String| {
        let ring = ring.clone();
        let pool = db.pool.clone();
        async move {
            let phone = format!("2547000009{n:02}");
            let pnid = format!("90{n}");
            let token = format!("EAAG-expiry-{n}");
            let spec = TenantSpec {
                name: "Expiry Shop",
                phone: &phone,
                phone_number_id: &pnid,
                token: &token,
                control: contacts,
                tenant_extra: &extra,
                whatsapp_templates: if n == 1 { alert_template } else { "" },
                ..Default::default()
            };
            let t = tenant(&pool, &ring, spec).await;
            if n != 1 {
                wrote(&pool, t.id, "254733000999", 60).await;
            }
            t
        }
    };
    let ts = |secs: String| {
        format!(
            "whatsapp_token_expires_at: {}",
            rfc3339(secs.parse().unwrap())
        )
    };
    let in5d = mk(1, ts(day(5))).await;
    let in12h = mk(2, ts((chrono_now() + 12 * 3600).to_string())).await;
    let expired = mk(3, ts(day(-1))).await;
    let rejected = mk(4, String::new()).await;
    let fine = mk(5, ts(day(30))).await;
    // What Meta's debug_token says of each token (its answer prevails over
    // the stored expiry).
    graph.set_token(&in5d.token, chrono_now() + 5 * 86_400, true);
    graph.set_token(&in12h.token, chrono_now() + 12 * 3600, true);
    graph.set_token(&expired.token, chrono_now() - 86_400, false);
    graph.set_token(&rejected.token, 0, false);
    graph.set_token(&fine.token, chrono_now() + 30 * 86_400, true);

    let mut cfg = config(&db, &nats, ring.clone(), &graph_url);
    cfg.meta_app_id = Some("123456".into());
    cfg.smtp_url = Some(secrecy::SecretString::from(smtp_url));
    let stack = RunningStack::start(cfg.clone(), &[Service::Sender, Service::Logger]).await;
    let watch =
        alphadome_admin::tokens::TokenWatch::new(&cfg, db.pool.clone(), nats.bus().await).unwrap();
    let mut alerts: Vec<(uuid::Uuid, &str)> = watch
        .check()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.tenant, a.threshold))
        .collect();
    alerts.sort();
    let mut want = vec![
        (in5d.id, "7d"),
        (in12h.id, "1d"),
        (expired.id, "expired"),
        (rejected.id, "invalid"),
    ];
    want.sort();
    assert_eq!(alerts, want);
    assert!(alerts.iter().all(|(t, _)| *t != fine.id));
    assert!(graph
        .debug_token_callers
        .lock()
        .unwrap()
        .iter()
        .all(|c| c == &format!("123456|{PLATFORM_APP_SECRET}")));
    // E-mail for each; WhatsApp, through the tenant's own number, while the token still works.
    let mails = eventually(Duration::from_secs(10), "4 e-mails", || async {
        let m = smtp.messages();
        (m.len() == 4).then_some(m)
    })
    .await;
    assert!(mails.iter().any(|m| m.contains("rejected by Meta")));
    assert!(mails.iter().any(|m| m.contains("expires within 7 days")));
    let wa = graph.wait_for(2, Duration::from_secs(10)).await;
    let mut from: Vec<String> = wa.iter().map(|r| r.phone_number_id.clone()).collect();
    from.sort();
    assert_eq!(
        from,
        [in5d.phone_number_id.clone(), in12h.phone_number_id.clone()]
    );
    assert!(wa.iter().all(|r| r.to() == "254733000999"));
    // Outside the contact's window, the tenant's approved template.
    let templated = wa
        .iter()
        .find(|r| r.phone_number_id == in5d.phone_number_id)
        .unwrap();
    assert_eq!(
        templated.body["template"],
        serde_json::json!({"name": "token_warning", "language": {"code": "en"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Expiry Shop"},
                {"type": "text", "text": "expires within 7 days"}]}]})
    );
    assert_eq!(templated.body["type"], "template");
    let texted = wa
        .iter()
        .find(|r| r.phone_number_id == in12h.phone_number_id)
        .unwrap();
    assert!(texted.text().contains("Expiry Shop"), "{:?}", texted.body);
    // The rejected token is marked, so the tenant shows as degraded.
    let list = alphadome_admin::list(&db.pool, 90).await.unwrap();
    let degraded = |id: uuid::Uuid| {
        list.iter()
            .find(|t| t.id == id)
            .and_then(|t| t.degraded.clone())
            .unwrap_or_default()
    };
    assert!(degraded(rejected.id).contains("rejected"));
    assert!(degraded(expired.id).contains("expired"));
    // Once per threshold: a second pass sends nothing ...
    assert!(watch.check().await.unwrap().is_empty());
    // ... until the next threshold is crossed.
    graph.set_token(&in5d.token, chrono_now() + 20 * 3600, true);
    let again: Vec<_> = watch
        .check()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.tenant, a.threshold))
        .collect();
    assert_eq!(again, [(in5d.id, "1d")]);
    stack.stop().await.unwrap();
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(secs: i64) -> String {
    // YAML timestamps: seconds since the epoch rendered by Postgres' rules are
    // awkward here, so build RFC 3339 by hand from a civil date.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[tokio::test]
async fn without_an_app_token_the_stored_expiry_drives_the_alerts() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let extra = format!(
        "whatsapp_token_expires_at: {}",
        rfc3339(chrono_now() + 3 * 86_400)
    );
    let t = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            control: "escalation_email: owner@example.com",
            tenant_extra: &extra,
            ..Default::default()
        },
    )
    .await;
    let cfg = config(&db, &nats, ring.clone(), &graph_url);
    let watch =
        alphadome_admin::tokens::TokenWatch::new(&cfg, db.pool.clone(), nats.bus().await).unwrap();
    let alerts: Vec<_> = watch
        .check()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.tenant, a.threshold))
        .collect();
    assert_eq!(alerts, [(t.id, "7d")]);
    assert!(
        graph.debug_token_callers.lock().unwrap().is_empty(),
        "no app token, no debug_token call"
    );
    // Without SMTP the failure is recorded with the alert.
    let err: Option<String> = sqlx::query_scalar("SELECT email_error FROM alphadome.token_alerts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(err
        .unwrap_or_default()
        .contains("SMTP_URL is not configured"));
}
