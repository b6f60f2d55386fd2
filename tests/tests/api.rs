//! The JSON API under /api/v1 against the real database and broker: every
//! endpoint tried with another tenant's ids by a tenant-admin and an agent
//! (all 404, from row-level security), roles refused what they may not do,
//! settings, templates and training data changed with field-naming errors
//! and recorded in the change audit, the inbox read with search and
//! cursors, sessions with CSRF, and the OpenAPI document matching the
//! routes served.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use alphadome_admin::people::{self, Role};
use alphadome_cli::stack::Service;
use alphadome_core::tenant::{store as tenant_store, TenantCache};
use alphadome_tests::{
    api_token, eventually, tenant, ApiClient, RunningStack, TenantSpec, TestEnv, TestTenant,
};
use reqwest::{Client, Method};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

async fn token(env: &TestEnv, name: &str, role: Role, tenant: Option<&str>) -> String {
    api_token(&env.db.pool, name, role, tenant).await
}

/// Two tenants with a template, training rows, and a conversation each.
async fn two_tenants(env: &TestEnv) -> (TestTenant, TestTenant) {
    let a = tenant(&env.db.pool, &env.ring, TenantSpec::default()).await;
    let b = tenant(
        &env.db.pool,
        &env.ring,
        TenantSpec {
            name: "Other Shop",
            phone: "254700000002",
            phone_number_id: "100000000000002",
            token: "EAAG-test-token-2",
            faq: &[("Do you sell drums?", "Yes, in store.")],
            ..TenantSpec::default()
        },
    )
    .await;
    for (t, user) in [(a.id, "254711000001"), (b.id, "254722000002")] {
        sqlx::raw_sql(&format!(
            "INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, direction, message_text, dedup_key, created_at) VALUES
               ('{t}', '{user}', 'incoming', 'Do you have guitars?', 'in:{t}:1', now() - interval '3 minutes'),
               ('{t}', '{user}', 'outgoing', 'Yes: acoustic and electric.', 'out:{t}:1', now() - interval '2 minutes'),
               ('{t}', '{user}', 'incoming', 'What about 50% off?', 'in:{t}:2', now() - interval '1 minute');
             INSERT INTO alphadome.conversation_handoffs (bot_tenant_id, user_phone, reason, paused_until)
               VALUES ('{t}', '{user}', 'asked for a person', now() + interval '1 hour');"
        ))
        .execute(&env.db.pool)
        .await
        .unwrap();
        // (as the responder records each message in the customer's session)
        alphadome_tests::wrote(&env.db.pool, t, user, 1).await;
    }
    (a, b)
}

async fn first_id(env: &TestEnv, table: &str, tenant: uuid::Uuid) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(&format!(
        "SELECT id FROM alphadome.{table} WHERE bot_tenant_id = $1 LIMIT 1"
    ))
    .bind(tenant)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    id.to_string()
}

/// Every tenant-scoped endpoint, with `t` the tenant, `tpl` a template,
/// `row` a training row and `user` a customer of it.
fn tenant_endpoints(
    t: &str,
    tpl: &str,
    row: &str,
    user: &str,
) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/tenants/{t}"), None),
        (
            Method::PATCH,
            format!("/tenants/{t}"),
            Some(json!({"client_name": "Renamed"})),
        ),
        (Method::POST, format!("/tenants/{t}/activate"), None),
        (Method::POST, format!("/tenants/{t}/deactivate"), None),
        (Method::GET, format!("/tenants/{t}/settings"), None),
        (
            Method::PATCH,
            format!("/tenants/{t}/settings"),
            Some(json!({"enable_ai_responses": true})),
        ),
        (Method::GET, format!("/tenants/{t}/templates"), None),
        (
            Method::POST,
            format!("/tenants/{t}/templates"),
            Some(json!({"template_name": "intruder"})),
        ),
        (
            Method::PATCH,
            format!("/tenants/{t}/templates/{tpl}"),
            Some(json!({"description": "x"})),
        ),
        (
            Method::DELETE,
            format!("/tenants/{t}/templates/{tpl}"),
            None,
        ),
        (Method::GET, format!("/tenants/{t}/training-data"), None),
        (
            Method::POST,
            format!("/tenants/{t}/training-data"),
            Some(json!({"question": "q?", "answer": "a"})),
        ),
        (
            Method::PATCH,
            format!("/tenants/{t}/training-data/{row}"),
            Some(json!({"answer": "b"})),
        ),
        (
            Method::DELETE,
            format!("/tenants/{t}/training-data/{row}"),
            None,
        ),
        (
            Method::GET,
            format!("/tenants/{t}/messages?q=guitars"),
            None,
        ),
        (Method::GET, format!("/tenants/{t}/conversations"), None),
        (
            Method::GET,
            format!("/tenants/{t}/conversations/{user}"),
            None,
        ),
        (
            Method::POST,
            format!("/tenants/{t}/conversations/{user}/resume"),
            None,
        ),
        (Method::GET, format!("/tenants/{t}/usage"), None),
        (Method::GET, format!("/tenants/{t}/stats"), None),
        (Method::GET, format!("/tenants/{t}/checklist"), None),
        (Method::GET, format!("/audit?tenant={t}"), None),
    ]
}

#[tokio::test]
async fn another_tenants_ids_answer_404_to_tenant_admins_and_agents() {
    let env = TestEnv::new().await;
    let (a, b) = two_tenants(&env).await;
    let stack = RunningStack::start(env.config(), &[Service::Admin]).await;
    let api = ApiClient::new(&stack);
    let admin = token(&env, "shop-admin", Role::TenantAdmin, Some(&a.phone)).await;
    let agent = token(&env, "shop-agent", Role::Agent, Some(&a.phone)).await;
    let (b_tpl, b_row) = (
        first_id(&env, "bot_templates", b.id).await,
        first_id(&env, "bot_training_data", b.id).await,
    );
    let before: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM alphadome.bot_templates) + (SELECT count(*) FROM alphadome.bot_training_data) \
           + (SELECT count(*) FROM alphadome.change_audit)",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    // B's ids, and A's tenant with B's row ids: all as if they did not exist.
    let mut tried = 0;
    for t in [b.id.to_string(), b.phone.clone()] {
        for (method, path, body) in tenant_endpoints(&t, &b_tpl, &b_row, "254722000002")
            .into_iter()
            .chain(
                tenant_endpoints(&a.id.to_string(), &b_tpl, &b_row, "254722000002")
                    .into_iter()
                    .filter(|(_, p, _)| {
                        p.contains(&b_tpl) || p.contains(&b_row) || p.contains("/conversations/")
                    }),
            )
        {
            for who in [&admin, &agent] {
                let (status, answer) = api.call(method.clone(), &path, who, body.clone()).await;
                assert_eq!(status, 404, "{method} {path}: {answer}");
                assert_eq!(answer["type"], "not-found", "{method} {path}");
                assert!(!answer.to_string().contains("Other Shop"));
                tried += 1;
            }
        }
    }
    assert!(tried > 75, "{tried}");
    let after: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM alphadome.bot_templates) + (SELECT count(*) FROM alphadome.bot_training_data) \
           + (SELECT count(*) FROM alphadome.change_audit)",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(before, after, "a refused request wrote something");
    let b_active: bool =
        sqlx::query_scalar("SELECT is_active FROM alphadome.bot_tenants WHERE id = $1")
            .bind(b.id)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert!(b_active);

    // The same endpoints on their own tenant work (so the 404s above are
    // not a broken route): the tenant-admin may do all, the agent reads and
    // answers but changes nothing else (403).
    let (a_tpl, a_row) = (
        first_id(&env, "bot_templates", a.id).await,
        first_id(&env, "bot_training_data", a.id).await,
    );
    let own = tenant_endpoints(&a.phone, &a_tpl, &a_row, "254711000001");
    for (method, path, body) in &own {
        let (status, answer) = api.call(method.clone(), path, &agent, body.clone()).await;
        let answers =
            *method == Method::GET || path.ends_with("/resume") || path.ends_with("/messages");
        if answers {
            assert!(
                (200..300).contains(&status),
                "agent {method} {path}: {status} {answer}"
            );
        } else {
            assert_eq!(status, 403, "agent {method} {path}: {answer}");
        }
    }
    for (method, path, body) in &own {
        let (status, answer) = api.call(method.clone(), path, &admin, body.clone()).await;
        assert!(
            (200..300).contains(&status),
            "admin {method} {path}: {status} {answer}"
        );
    }
    // Platform-only endpoints: 403 for both.
    for who in [&admin, &agent] {
        for (method, path) in [
            (Method::GET, "/dead-letters"),
            (Method::POST, "/dead-letters/1/replay"),
            (Method::POST, "/tenants"),
        ] {
            let (status, _) = api.call(method.clone(), path, who, Some(json!({}))).await;
            assert_eq!(status, 403, "{method} {path}");
        }
    }
    // The list shows their own tenant only; the audit their own records.
    let (_, list) = api.call(Method::GET, "/tenants", &agent, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], a.id.to_string());
    let (_, audit) = api.call(Method::GET, "/audit", &admin, None).await;
    let audit = audit.as_array().unwrap();
    assert!(!audit.is_empty());
    assert!(audit.iter().all(|r| r["tenant_id"] == a.id.to_string()));
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn configuration_changes_name_bad_fields_are_audited_and_reach_the_services() {
    let env = TestEnv::new().await;
    let (a, _b) = two_tenants(&env).await;
    let stack = RunningStack::start(env.config(), &[Service::Admin]).await;
    let api = ApiClient::new(&stack);
    let admin = token(&env, "shop-admin", Role::TenantAdmin, Some(&a.phone)).await;
    // The running services' copy of the tenants, as each service keeps it.
    let cache = TenantCache::new(|_| Vec::new(), None);
    let stop_cache = alphadome_core::CancellationToken::new();
    cache.spawn_refresher(
        env.db.pool.clone(),
        alphadome_core::bus::Bus::connect(&alphadome_tests::nats_url(), &env.nats.prefix)
            .await
            .unwrap(),
        Duration::from_secs(3600),
        stop_cache.clone(),
        |pool, id| async move { tenant_store::load_snapshot(&pool, id).await },
    );
    let s = format!("/tenants/{}/settings", a.id);

    // Settings: a field left out stays, null clears, a value sets.
    let (status, set) = api
        .call(Method::PATCH, &s, &admin, Some(json!({"max_messages_per_hour": 40, "fallback_reply": "We will call you.", "escalation_phone": "0712345678"})))
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["max_messages_per_hour"], 40);
    assert_eq!(set["escalation_phone"], "254712345678");
    let (_, set) = api
        .call(
            Method::PATCH,
            &s,
            &admin,
            Some(json!({"fallback_reply": null, "is_bot_enabled": false})),
        )
        .await;
    assert_eq!(set["max_messages_per_hour"], 40);
    assert!(set["fallback_reply"].is_null());
    assert_eq!(set["is_bot_enabled"], false);
    // The running services' copy follows within seconds.
    eventually(
        Duration::from_secs(5),
        "the cache sees the bot disabled",
        || {
            let cache = cache.clone();
            let id = a.id;
            async move {
                let snap = cache.get(id)?;
                (!snap.settings.is_bot_enabled).then_some(())
            }
        },
    )
    .await;

    // Bad input names its field and writes nothing.
    for (body, field) in [
        (
            json!({"max_messages_per_hour": -1}),
            "max_messages_per_hour",
        ),
        (
            json!({"escalation_email": "not-an-address"}),
            "escalation_email",
        ),
        (json!({"escalation_phone": "12"}), "escalation_phone"),
        (
            json!({"handoff_pause_minutes": null}),
            "handoff_pause_minutes",
        ),
        (json!({"is_bot_enabled": "yes"}), "is_bot_enabled"),
    ] {
        let (status, p) = api
            .call(Method::PATCH, &s, &admin, Some(body.clone()))
            .await;
        assert_eq!(
            (status, p["field"].as_str()),
            (422, Some(field)),
            "{body}: {p}"
        );
    }
    let (status, p) = api
        .call(Method::PATCH, &s, &admin, Some(json!({"colour": "red"})))
        .await;
    assert!(status == 400 || status == 422, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");

    // The tenant's profile; credentials are write-only.
    let tp = format!("/tenants/{}", a.id);
    let (status, view) = api
        .call(Method::PATCH, &tp, &admin, Some(json!({"client_name": " Kassangas Music Shop ", "ai_provider": "openai", "ai_api_key": "sk-new-secret-value", "webhook_url": null})))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["client_name"], "Kassangas Music Shop");
    assert_eq!(view["ai_provider"], "openai");
    assert!(!view.to_string().contains("sk-new-secret-value"));
    assert!(
        view["ai_api_key"].as_str().unwrap().starts_with("****"),
        "{view}"
    );
    let stored: String =
        sqlx::query_scalar("SELECT ai_api_key FROM alphadome.bot_tenants WHERE id = $1")
            .bind(a.id)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert!(!stored.contains("sk-new-secret-value"));
    let opened = env
        .ring
        .decrypt(
            a.id,
            alphadome_core::crypto::SecretColumn::AiApiKey,
            &stored,
        )
        .unwrap();
    assert_eq!(opened.expose_secret(), "sk-new-secret-value");
    for (body, status, field) in [
        (
            json!({"webhook_url": "ftp://example.com"}),
            422,
            "webhook_url",
        ),
        (json!({"ai_provider": "skynet"}), 422, "ai_provider"),
        (json!({"client_name": "  "}), 422, "client_name"),
        (json!({"ai_api_key": ""}), 422, "ai_api_key"),
        // The ids that route Meta's webhooks are the platform's to set.
        (
            json!({"whatsapp_phone_number_id": "100000000000002"}),
            403,
            "whatsapp_phone_number_id",
        ),
        (
            json!({"whatsapp_business_account_id": "200000000000002"}),
            403,
            "whatsapp_business_account_id",
        ),
        // Where the AI key goes changes only with the key given again.
        (
            json!({"ai_base_url": "https://collector.example/v1"}),
            422,
            "ai_api_key",
        ),
        (json!({"ai_provider": "openrouter"}), 422, "ai_api_key"),
        // A tenant can't point the responder at this machine's network.
        (
            json!({"ai_base_url": "http://169.254.169.254/latest", "ai_api_key": "k"}),
            422,
            "ai_base_url",
        ),
    ] {
        let (got, p) = api
            .call(Method::PATCH, &tp, &admin, Some(body.clone()))
            .await;
        assert_eq!(
            (got, p["field"].as_str()),
            (status, Some(field)),
            "{body}: {p}"
        );
    }
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.change_audit WHERE before::text || after::text LIKE '%sk-new-secret%'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(leaked, 0);

    // Templates: created, a taken name is a conflict naming the field,
    // the default moves.
    let t = format!("/tenants/{}/templates", a.id);
    let (status, created) = api
        .call(
            Method::POST,
            &t,
            &admin,
            Some(json!({"template_name": "evening", "tone": "professional", "is_default": true})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, p) = api
        .call(
            Method::POST,
            &t,
            &admin,
            Some(json!({"template_name": "evening"})),
        )
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (409, Some("template_name")),
        "{p}"
    );
    let (status, p) = api
        .call(
            Method::POST,
            &t,
            &admin,
            Some(json!({"template_name": "x", "tone": "grumpy"})),
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("tone")), "{p}");
    let (_, all) = api.call(Method::GET, &t, &admin, None).await;
    let defaults: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["is_default"] == true)
        .map(|t| t["template_name"].as_str().unwrap())
        .collect();
    assert_eq!(defaults, vec!["evening"]);

    // Training data: added, changed, a duplicate refused, removed; the
    // FAQ the services match follows.
    let d = format!("/tenants/{}/training-data", a.id);
    let (status, row) = api
        .call(Method::POST, &d, &admin, Some(json!({"question": "Do you deliver?", "answer": "Yes, countrywide.", "category": "delivery"})))
        .await;
    assert_eq!(status, 201, "{row}");
    let id = row["id"].as_str().unwrap().to_owned();
    let (status, dup) = api
        .call(
            Method::POST,
            &d,
            &admin,
            Some(json!({"question": "Do you deliver?", "answer": "No"})),
        )
        .await;
    assert_eq!(
        (status, dup["field"].as_str()),
        (409, Some("question")),
        "{dup}"
    );
    let (status, p) = api
        .call(
            Method::POST,
            &d,
            &admin,
            Some(json!({"question": " ", "answer": "a"})),
        )
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (422, Some("question")),
        "{p}"
    );
    let (status, p) = api
        .call(
            Method::POST,
            &d,
            &admin,
            Some(json!({"question": "q", "answer": "a", "confidence_score": 2})),
        )
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (422, Some("confidence_score")),
        "{p}"
    );
    let (status, changed) = api
        .call(
            Method::PATCH,
            &format!("{d}/{id}"),
            &admin,
            Some(json!({"answer": "Yes, within 48 hours."})),
        )
        .await;
    assert_eq!(
        (status, changed["question"].as_str()),
        (200, Some("Do you deliver?"))
    );
    eventually(
        Duration::from_secs(5),
        "the cache sees the new answer",
        || {
            let cache = cache.clone();
            let tenant = a.id;
            async move {
                let snap = cache.get(tenant)?;
                snap.training
                    .iter()
                    .any(|r| r.answer.as_deref() == Some("Yes, within 48 hours."))
                    .then_some(())
            }
        },
    )
    .await;
    let (status, _) = api
        .call(Method::DELETE, &format!("{d}/{id}"), &admin, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(Method::DELETE, &format!("{d}/{id}"), &admin, None)
        .await;
    assert_eq!(status, 404);

    // Every change is in the audit, by this token, with before and after.
    let (_, audit) = api.call(Method::GET, "/audit", &admin, None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "settings.update",
        "template.create",
        "training.create",
        "training.update",
        "training.delete",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let first = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "training.update")
        .unwrap();
    assert_eq!(first["actor"], "token:shop-admin");
    assert_eq!(first["before"]["answer"], "Yes, countrywide.");
    assert_eq!(first["after"]["answer"], "Yes, within 48 hours.");
    // Failed requests recorded nothing: five settings changes were asked
    // for with bad input, two succeeded.
    assert_eq!(
        actions.iter().filter(|a| **a == "settings.update").count(),
        2
    );
    stop_cache.cancel();
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_inbox_searches_pages_and_resumes_conversations() {
    let env = TestEnv::new().await;
    let (a, _b) = two_tenants(&env).await;
    let stack = RunningStack::start(env.config(), &[Service::Admin]).await;
    let api = ApiClient::new(&stack);
    let agent = token(&env, "shop-agent", Role::Agent, Some(&a.phone)).await;
    let base = format!("/tenants/{}", a.phone);

    let (status, list) = api
        .call(Method::GET, &format!("{base}/conversations"), &agent, None)
        .await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["user_phone"], "254711000001");
    assert_eq!(list[0]["last_text"], "What about 50% off?");
    assert_eq!(list[0]["messages"], 3);
    assert_eq!(list[0]["in_window"], true);
    assert_eq!(list[0]["handoff"]["reason"], "asked for a person");

    // Text search is literal ("50%" is not a wildcard) and case-blind.
    let (_, found) = api
        .call(
            Method::GET,
            &format!("{base}/messages?q=50%25"),
            &agent,
            None,
        )
        .await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 1, "{found}");
    let (_, found) = api
        .call(
            Method::GET,
            &format!("{base}/messages?q=ACOUSTIC&direction=outgoing"),
            &agent,
            None,
        )
        .await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 1, "{found}");
    let (status, p) = api
        .call(
            Method::GET,
            &format!("{base}/messages?direction=sideways"),
            &agent,
            None,
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("direction")));
    let (status, p) = api
        .call(
            Method::GET,
            &format!("{base}/messages?since=yesterday"),
            &agent,
            None,
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("since")));
    let (status, p) = api
        .call(
            Method::GET,
            &format!("{base}/messages?cursor=nonsense"),
            &agent,
            None,
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("cursor")));

    // Pages of one, newest first, chained by cursor, with no repeats.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = api
            .call(
                Method::GET,
                &format!("{base}/conversations/254711000001?limit=1&cursor={cursor}"),
                &agent,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["message_text"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            "What about 50% off?",
            "Yes: acoustic and electric.",
            "Do you have guitars?"
        ]
    );

    // Giving the conversation back to the bot ends the handoff, once.
    let r = format!("{base}/conversations/254711000001/resume");
    let (_, done) = api.call(Method::POST, &r, &agent, None).await;
    assert_eq!(done["resumed"], true);
    let (_, done) = api.call(Method::POST, &r, &agent, None).await;
    assert_eq!(done["resumed"], false);
    let (_, list) = api
        .call(Method::GET, &format!("{base}/conversations"), &agent, None)
        .await;
    assert!(list[0]["handoff"].is_null());
    let (_, usage) = api
        .call(Method::GET, &format!("{base}/usage"), &agent, None)
        .await;
    assert_eq!(usage[0]["incoming"], 2, "{usage}");

    // The go-live checklist, then stats: replies by reason, latency, and
    // the questions that fell back.
    let (_, list) = api
        .call(Method::GET, &format!("{base}/checklist"), &agent, None)
        .await;
    let done = |l: &Value, key: &str| {
        l["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .unwrap()["done"]
            .clone()
    };
    assert_eq!(done(&list, "webhook"), true, "{list}");
    assert_eq!(done(&list, "faq"), true, "{list}");
    assert_eq!(done(&list, "token"), true, "{list}");
    // The fixture's reply row carries no error, so it counts as answered.
    assert_eq!(done(&list, "answered"), true, "{list}");
    sqlx::query(
        "INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, direction, message_text, metadata, dedup_key) VALUES \
           ($1, '254744000004', 'incoming', 'Do you sell violins?', '{\"reason\": \"fallback\"}', 'in:v1'), \
           ($1, '254744000005', 'incoming', 'do you sell violins? ', '{\"reason\": \"fallback\"}', 'in:v2'), \
           ($1, '254744000005', 'outgoing', 'Staff will reply here.', '{\"reason\": \"fallback\", \"latency_ms\": 300}', 'out:v2'), \
           ($1, '254744000006', 'incoming', 'Hours?', '{\"reason\": \"faq_match\"}', 'in:h'), \
           ($1, '254744000006', 'outgoing', 'We are open 9 to 5.', '{\"reason\": \"faq_match\", \"latency_ms\": 100}', 'out:h')",
    )
    .bind(a.id)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let (status, stats) = api
        .call(Method::GET, &format!("{base}/stats?hours=2"), &agent, None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["unanswered"][0]["times"], 2, "{stats}");
    assert_eq!(stats["unanswered"].as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(stats["latency_p50_ms"], 200.0, "{stats}");
    let reasons: Vec<(&str, i64)> = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap(),
                r["replies"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("faq_match", 1)) && reasons.contains(&("fallback", 1)),
        "{reasons:?}"
    );
    let hours = stats["hours"].as_array().unwrap();
    let incoming: i64 = hours.iter().map(|h| h["incoming"].as_i64().unwrap()).sum();
    assert_eq!(incoming, 5, "{stats}");
    let (status, p) = api
        .call(Method::GET, &format!("{base}/stats?hours=0"), &agent, None)
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("hours")));
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_need_their_csrf_token_to_change_anything_and_revoked_tokens_are_refused() {
    let env = TestEnv::new().await;
    let (a, _b) = two_tenants(&env).await;
    let stack = RunningStack::start(env.config(), &[Service::Admin]).await;
    let base = format!("http://{}/api/v1", stack.addr);
    let password = SecretString::from("a long enough password".to_owned());
    people::add_user(
        &env.db.pool,
        "ann@shop.example",
        Role::TenantAdmin,
        Some(&a.phone),
        &password,
        "254",
        "test",
    )
    .await
    .unwrap();
    assert!(people::sign_in(
        &env.db.pool,
        "ann@shop.example",
        &SecretString::from("wrong".to_owned())
    )
    .await
    .unwrap()
    .is_none());
    let (id, session) = people::sign_in(&env.db.pool, "Ann@Shop.example", &password)
        .await
        .unwrap()
        .unwrap();
    let cookie = format!("__Host-alphadome={}", id.expose_secret());
    let client = Client::new();
    let settings = format!("{base}/tenants/{}/settings", a.id);
    let r = client
        .get(&settings)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A change without the session's CSRF token, or with another, is refused.
    for csrf in [None, Some("not-the-token")] {
        let mut req = client
            .patch(&settings)
            .header("cookie", &cookie)
            .json(&json!({"enable_auto_reply": false}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = client
        .patch(&settings)
        .header("cookie", &cookie)
        .header("x-csrf-token", &session.csrf)
        .json(&json!({"enable_auto_reply": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let audit: Value = client
        .get(format!("{base}/audit"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit[0]["actor"], "user:ann@shop.example");
    // Signed out, or disabled: the cookie opens nothing.
    people::sign_out(&env.db.pool, id.expose_secret())
        .await
        .unwrap();
    let r = client
        .get(&settings)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (id, _) = people::sign_in(&env.db.pool, "ann@shop.example", &password)
        .await
        .unwrap()
        .unwrap();
    let cookie = format!("__Host-alphadome={}", id.expose_secret());
    people::disable_user(&env.db.pool, "ann@shop.example", "test")
        .await
        .unwrap();
    let r = client
        .get(&settings)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // No session row keeps the id itself.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.dashboard_sessions WHERE id_digest = $1",
    )
    .bind(id.expose_secret())
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);

    // A revoked token: refused.
    let t = token(&env, "short-lived", Role::TenantAdmin, Some(&a.phone)).await;
    let api = ApiClient::new(&stack);
    assert_eq!(api.call(Method::GET, "/tenants", &t, None).await.0, 200);
    people::revoke_token(&env.db.pool, "short-lived", "test")
        .await
        .unwrap();
    let (status, p) = api.call(Method::GET, "/tenants", &t, None).await;
    assert_eq!((status, p["type"].as_str()), (401, Some("unauthorized")));
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn a_tenant_created_over_the_api_reads_nothing_from_the_servers_environment() {
    let env = TestEnv::new().await;
    let mut cfg = env.config();
    let root = "a-platform-admin-token-for-tests";
    cfg.admin_token = Some(SecretString::from(root.to_owned()));
    let stack = RunningStack::start(cfg, &[Service::Admin]).await;
    let api = ApiClient::new(&stack);
    std::env::set_var("ALPHADOME_TEST_API_SECRET", "never-to-be-read");
    for value in [
        "${ALPHADOME_TEST_API_SECRET}",
        r"$\u007bALPHADOME_TEST_API_SECRET}",
    ] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"tenant": {{"client_name": "Probe", "client_phone": "+254700000009", "whatsapp_business_account_id": "{value}"}}}}"#
        ))
        .unwrap();
        let (status, p) = api.call(Method::POST, "/tenants", root, Some(body)).await;
        assert_eq!(
            (status, p["field"].as_str()),
            (422, Some("tenant.whatsapp_business_account_id")),
            "{p}"
        );
        assert!(!p.to_string().contains("never-to-be-read"));
    }
    // A platform admin may set the routing ids; one taken is a conflict.
    let a = tenant(&env.db.pool, &env.ring, TenantSpec::default()).await;
    let (status, created) = api
        .call(Method::POST, "/tenants", root, Some(json!({"tenant": {"client_name": "Probe", "client_phone": "0700000009", "whatsapp_phone_number_id": "100000000000009"}})))
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, p) = api
        .call(
            Method::PATCH,
            &format!("/tenants/{}", created["id"].as_str().unwrap()),
            root,
            Some(json!({"whatsapp_phone_number_id": a.phone_number_id})),
        )
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (409, Some("whatsapp_phone_number_id")),
        "{p}"
    );
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_tenants WHERE whatsapp_business_account_id LIKE '%never%'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(found, 0);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let env = TestEnv::new().await;
    let mut cfg = env.config();
    let root = "a-platform-admin-token-for-tests";
    cfg.admin_token = Some(SecretString::from(root.to_owned()));
    let stack = RunningStack::start(cfg, &[Service::Admin]).await;
    let client = Client::new();
    let doc: Value = client
        .get(format!("http://{}/api/v1/openapi.json", stack.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["servers"][0]["url"], "/api/v1");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    let methods = ["get", "post", "patch", "delete", "put"];
    for (path, item) in paths {
        let concrete = path
            .replace("{tenant}", "254799999999")
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{user}", "254711000001")
            .replace("{seq}", "1");
        assert!(!concrete.contains('{'), "{path}");
        for m in methods {
            let url = format!("http://{}/api/v1{concrete}", stack.addr);
            let r = client
                .request(
                    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                    &url,
                )
                .bearer_auth(root)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let kind = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            if item.get(m).is_some() {
                // Served: the handler answers in JSON (here mostly a
                // problem: no such tenant, no body), never the router's
                // bare 404 or 405.
                assert!(
                    kind.starts_with("application/"),
                    "{m} {path}: {status} {kind}"
                );
                assert_ne!(status, 405, "{m} {path}");
                operations += 1;
            } else {
                // Not documented: not served either.
                assert_eq!(status, 405, "{m} {path} is served but not documented");
            }
        }
    }
    assert!(operations >= 29, "{operations}");
    // Every handler's parameters and bodies are described.
    let patch = &paths["/tenants/{tenant}/settings"]["patch"];
    assert!(patch["requestBody"].is_object());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "Settings",
        "SettingsPatch",
        "Template",
        "Training",
        "Message",
        "Conversation",
        "Problem",
        "TenantView",
    ] {
        assert!(schemas.contains_key(s), "{s}");
    }
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn an_agent_reply_goes_out_with_the_tenants_token_inside_the_window_only() {
    let env = TestEnv::new().await;
    let (a, _b) = two_tenants(&env).await;
    sqlx::query(
        "INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, direction, message_text, dedup_key, created_at) \
         VALUES ($1, '254733000003', 'incoming', 'Are you open on Sunday?', 'in:old', now() - interval '25 hours')",
    )
    .bind(a.id)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let stack = env.stack().await;
    let api = ApiClient::new(&stack);
    let agent = token(&env, "desk", Role::Agent, Some(&a.phone)).await;
    let base = format!("/tenants/{}/conversations", a.id);

    let (status, sent) = api
        .call(
            Method::POST,
            &format!("{base}/254711000001/messages"),
            &agent,
            Some(json!({"text": "  Yes, 30% off all week.  "})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    assert!(sent["outbound_id"].as_str().unwrap().starts_with("agent:"));
    assert_eq!(sent["author"], "token:desk");
    let delivered = eventually(Duration::from_secs(10), "the reply reaches Meta", || {
        let graph = env.graph.clone();
        async move {
            graph
                .received_from(0)
                .into_iter()
                .find(|r| r.to() == "254711000001")
        }
    })
    .await;
    assert_eq!(delivered.text(), "Yes, 30% off all week.");
    assert_eq!(delivered.token, a.token, "sent with the tenant's own token");
    assert_eq!(delivered.phone_number_id, a.phone_number_id);
    // Logged as an outgoing message of the conversation, by its author.
    let logged: Value = eventually(Duration::from_secs(10), "the reply is logged", || {
        let pool = env.db.pool.clone();
        let tenant = a.id;
        async move {
            sqlx::query_scalar::<_, Value>(
                "SELECT metadata FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1 AND direction = 'outgoing' \
                 AND message_text = 'Yes, 30% off all week.'",
            )
            .bind(tenant)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    assert_eq!(logged["author"], "token:desk");
    assert_eq!(logged["reason"], "agent");
    assert_eq!(logged["outbound_id"], sent["outbound_id"]);
    // The bot is paused in that conversation until it is given back.
    let (_, c) = api
        .call(Method::GET, &format!("{base}/254711000001"), &agent, None)
        .await;
    assert_eq!(
        c["conversation"]["handoff"]["reason"], "asked for a person",
        "{c}"
    );
    let (_, done) = api
        .call(
            Method::POST,
            &format!("{base}/254711000001/resume"),
            &agent,
            None,
        )
        .await;
    assert_eq!(done["resumed"], true);
    api.call(
        Method::POST,
        &format!("{base}/254711000001/messages"),
        &agent,
        Some(json!({"text": "One more thing."})),
    )
    .await;
    let (_, c) = api
        .call(Method::GET, &format!("{base}/254711000001"), &agent, None)
        .await;
    assert_eq!(
        c["conversation"]["handoff"]["reason"], "an agent replied",
        "{c}"
    );

    eventually(
        Duration::from_secs(10),
        "the second reply reaches Meta",
        || {
            let graph = env.graph.clone();
            async move {
                graph
                    .received()
                    .into_iter()
                    .find(|r| r.text() == "One more thing.")
            }
        },
    )
    .await;

    // Outside the 24-hour window: refused, nothing sent.
    let before = env.graph.accepted();
    let (status, p) = api
        .call(
            Method::POST,
            &format!("{base}/254733000003/messages"),
            &agent,
            Some(json!({"text": "Sorry for the delay"})),
        )
        .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (409, Some("outside-window")),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("24-hour"), "{p}");
    for (body, field) in [
        (json!({"text": "   "}), "text"),
        (json!({"text": "x".repeat(4097)}), "text"),
        (json!({"txt": "hi"}), ""),
    ] {
        let (status, p) = api
            .call(
                Method::POST,
                &format!("{base}/254711000001/messages"),
                &agent,
                Some(body),
            )
            .await;
        assert!(status == 422 || status == 400, "{p}");
        if !field.is_empty() {
            assert_eq!(p["field"], field);
        }
    }
    let (status, _) = api
        .call(
            Method::POST,
            &format!("{base}/254799999999/messages"),
            &agent,
            Some(json!({"text": "hi"})),
        )
        .await;
    assert_eq!(status, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.graph.accepted(), before, "a refused reply was sent");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn training_data_goes_out_and_comes_back_as_csv_and_yaml() {
    let env = TestEnv::new().await;
    let (a, _b) = two_tenants(&env).await;
    let stack = RunningStack::start(env.config(), &[Service::Admin]).await;
    let api = ApiClient::new(&stack);
    let admin = token(&env, "shop-admin", Role::TenantAdmin, Some(&a.phone)).await;
    let d = format!("/tenants/{}/training-data", a.id);
    let rows = || async {
        let (_, v) = api.call(Method::GET, &d, &admin, None).await;
        v.as_array().unwrap().len()
    };
    let start = rows().await;

    // One bad row among good ones: every bad row named, nothing written.
    let bad = "data_type,question,answer,priority\n\
               faq,Do you repair guitars?,Yes,2\n\
               faqq,Do you rent?,No,\n\
               faq,Do you buy used?,,\n\
               faq,Do you tune pianos?,Yes,high\n";
    let (status, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import"),
            &admin,
            "text/csv",
            bad,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let p: Value = serde_json::from_str(&body).unwrap();
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec!["rows[3].data_type", "rows[4].answer", "rows[5].priority"],
        "{p}"
    );
    assert_eq!(rows().await, start);

    // Good rows: created, then the same again changes nothing, then one
    // answer changed is one update.
    let good = "question,answer,category\nDo you repair guitars?,\"Yes, in two days\",repairs\nDo you rent?,No,\n";
    let (status, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import"),
            &admin,
            "text/csv",
            good,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (done["created"].as_u64(), done["updated"].as_u64()),
        (Some(2), Some(0))
    );
    let (_, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import"),
            &admin,
            "text/csv",
            good,
        )
        .await;
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["unchanged"], 2, "{done}");
    let yaml = "- question: Do you rent?\n  answer: Yes, drums only\n";
    let (_, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import"),
            &admin,
            "application/yaml",
            yaml,
        )
        .await;
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["updated"], 1, "{done}");
    assert_eq!(rows().await, start + 2);

    // Export, in both forms, and the export imports back unchanged.
    let (status, kind, csv) = api
        .raw(
            Method::GET,
            &format!("{d}/export"),
            &admin,
            "text/plain",
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/csv"), "{kind}");
    assert!(
        csv.starts_with("data_type,question,answer,category,priority,confidence_score,is_active\n"),
        "{csv}"
    );
    assert!(csv.contains("\"Yes, in two days\""), "{csv}");
    let (_, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import"),
            &admin,
            "text/csv",
            &csv,
        )
        .await;
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (done["created"].as_u64(), done["updated"].as_u64()),
        (Some(0), Some(0)),
        "{done}"
    );
    let (status, kind, yaml) = api
        .raw(
            Method::GET,
            &format!("{d}/export?format=yaml"),
            &admin,
            "text/plain",
            "",
        )
        .await;
    assert_eq!((status, kind.as_str()), (200, "application/yaml"));
    assert!(yaml.contains("answer: Yes, drums only"), "{yaml}");
    let (_, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import?format=yaml"),
            &admin,
            "text/plain",
            &yaml,
        )
        .await;
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["unchanged"].as_u64(), Some(start as u64 + 2), "{done}");
    let (status, _, body) = api
        .raw(
            Method::POST,
            &format!("{d}/import"),
            &admin,
            "text/plain",
            "a,b",
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"field\":\"format\""), "{body}");
    stack.stop().await.unwrap();
}
