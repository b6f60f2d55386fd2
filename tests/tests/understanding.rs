//! The bot understands its customers: FAQ entries matched by meaning with
//! the local embedding model (installed by scripts/setup.sh), and training
//! mode: unanswered questions grouped into candidates, taught from
//! WhatsApp by the tenant's point of contact (with confirmation), from the
//! API and from the CLI, and answered the next time in other words.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use alphadome_admin::people::Role;
use alphadome_cli::stack::Service;
use alphadome_core::training::{self, Candidate};
use alphadome_tests::*;
use serde_json::{json, Value};
use uuid::Uuid;

const CONTACT: &str = "254700999888";

fn model_dir() -> std::path::PathBuf {
    std::env::var_os("ALPHADOME_EMBEDDING_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/alphadome/all-MiniLM-L6-v2")
        })
}

const FAQ: &[(&str, &str)] = &[
    (
        "What are your opening hours?",
        "We are open 9am to 6pm, Monday to Saturday.",
    ),
    (
        "Where is your shop located?",
        "Moi Avenue, next to the Hilton, Nairobi.",
    ),
    (
        "Do you offer guitar lessons?",
        "Yes, group guitar lessons on Saturdays.",
    ),
    ("Can I pay with M-Pesa?", "Yes, Lipa na M-Pesa till 123456."),
];

async fn candidates(e: &TestEnv, tenant: Uuid, status: Option<&str>) -> Vec<Candidate> {
    let mut tx = alphadome_core::db::scoped(&e.db.pool, tenant)
        .await
        .unwrap();
    let c = training::candidates(&mut tx, tenant, status, 100)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    c
}

async fn vectors_stored(e: &TestEnv, tenant: Uuid, entries: usize) {
    eventually(Duration::from_secs(30), "the entry vectors", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM alphadome.training_embeddings WHERE bot_tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
        (n == 2 * entries as i64).then_some(())
    })
    .await;
    // ... and the responder has reloaded the tenant with them.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn match_tier(e: &TestEnv, wamid: &str) -> Option<String> {
    eventually(Duration::from_secs(10), "the incoming log row", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT metadata->>'match_tier' FROM alphadome.bot_message_logs WHERE dedup_key = 'in:' || $1",
        )
        .bind(wamid)
        .fetch_optional(&e.db.pool)
        .await
        .unwrap()
    })
    .await
}

#[tokio::test]
async fn meaning_answers_paraphrases_and_the_contact_teaches_from_whatsapp() {
    let e = TestEnv::new().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            faq: FAQ,
            control: "enable_training_mode: true",
            tenant_extra: "point_of_contact_phone: \"254700999888\"",
            ..TenantSpec::default()
        },
    )
    .await;
    // The contact wrote to the number today (the offers go as text).
    wrote(&e.db.pool, t.id, CONTACT, 60).await;
    let mut config = e.config();
    config.embedding_model = Some(model_dir());
    // (debug builds run the model slower than the release default allows)
    config.embedding_budget = Duration::from_secs(10);
    let stack = RunningStack::start(config, &Service::ALL).await;
    let ready = reqwest::get(format!("http://{}/readyz", stack.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        ready.contains("embedding model: all-MiniLM-L6-v2 loaded"),
        "{ready}"
    );
    // Tenants there at start-up get their entry vectors in the background.
    vectors_stored(&e, t.id, FAQ.len()).await;

    // Words the FAQ does not use, the same meaning.
    ask(
        &stack,
        &t,
        "254711000001",
        "wamid.u.1",
        "until what time are you open today?",
    )
    .await;
    assert_eq!(reply_to(&e.graph, "wamid.u.1").await, FAQ[0].1);
    assert_eq!(
        match_tier(&e, "wamid.u.1").await.as_deref(),
        Some("semantic")
    );
    ask(
        &stack,
        &t,
        "254711000001",
        "wamid.u.2",
        "how do I find your store",
    )
    .await;
    assert_eq!(reply_to(&e.graph, "wamid.u.2").await, FAQ[1].1);
    // The entry's own words skip the model.
    ask(
        &stack,
        &t,
        "254711000001",
        "wamid.u.3",
        "do you offer guitar lessons",
    )
    .await;
    assert_eq!(reply_to(&e.graph, "wamid.u.3").await, FAQ[2].1);
    assert_eq!(
        match_tier(&e, "wamid.u.3").await.as_deref(),
        Some("lexical")
    );

    // Out of scope: the fallback, and a candidate; the same question in
    // other words joins it; the contact is offered it once.
    ask(
        &stack,
        &t,
        "254711000002",
        "wamid.u.4",
        "Can I book a table for dinner tonight?",
    )
    .await;
    let fallback = reply_to(&e.graph, "wamid.u.4").await;
    assert!(!FAQ.iter().any(|(_, a)| *a == fallback), "{fallback}");
    ask(
        &stack,
        &t,
        "254711000003",
        "wamid.u.5",
        "can i book a table for tonight's dinner",
    )
    .await;
    reply_to(&e.graph, "wamid.u.5").await;
    let open = eventually(
        Duration::from_secs(10),
        "one candidate asked twice",
        || async {
            let c = candidates(&e, t.id, Some("open")).await;
            (c.len() == 1 && c[0].ask_count == 2).then_some(c)
        },
    )
    .await;
    assert_eq!(open[0].question, "Can I book a table for dinner tonight?");
    assert_eq!(open[0].examples.len(), 2);
    let offer = eventually(
        Duration::from_secs(10),
        "the offer to the contact",
        || async { e.graph.received().into_iter().find(|r| r.to() == CONTACT) },
    )
    .await;
    assert!(
        offer
            .text()
            .contains("Can I book a table for dinner tonight?")
            && offer.text().contains("SKIP"),
        "{}",
        offer.text()
    );
    assert_eq!(
        offer.token, "EAAG-test-token-1",
        "sent with the tenant's token"
    );

    // The contact answers; nothing is saved until they confirm.
    let answer = "Sorry, we are a music shop: we do not serve meals.";
    ask(&stack, &t, CONTACT, "wamid.c.1", answer).await;
    let shown = reply_to(&e.graph, "wamid.c.1").await;
    assert!(shown.contains(answer) && shown.contains("YES"), "{shown}");
    assert_eq!(candidates(&e, t.id, Some("taught")).await.len(), 0);
    ask(&stack, &t, CONTACT, "wamid.c.2", "yes").await;
    assert!(reply_to(&e.graph, "wamid.c.2").await.starts_with("Saved."));
    let taught = candidates(&e, t.id, Some("taught")).await;
    assert_eq!(taught.len(), 1);
    assert_eq!(
        taught[0].taught_by.as_deref(),
        Some("whatsapp:254700999888")
    );
    let entry = taught[0].training_data_id.unwrap();
    let (active, stored): (bool, String) =
        sqlx::query_as("SELECT is_active, answer FROM alphadome.bot_training_data WHERE id = $1")
            .bind(entry)
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    assert!(active);
    assert_eq!(stored, answer);

    // The next customer, in other words, gets the taught answer.
    let got = eventually(Duration::from_secs(20), "the taught answer", || async {
        let n = e.graph.received().len();
        let wamid = format!("wamid.u.next.{n}");
        ask(
            &stack,
            &t,
            "254711000004",
            &wamid,
            "could I reserve a dinner table for this evening?",
        )
        .await;
        let r = reply_to(&e.graph, &wamid).await;
        (r == answer).then_some(r)
    })
    .await;
    assert_eq!(got, answer);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn candidates_are_taught_through_the_api_and_the_cli() {
    let e = TestEnv::new().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            faq: FAQ,
            control: "enable_training_mode: true",
            ..TenantSpec::default()
        },
    )
    .await;
    let other = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            name: "Other Shop",
            phone: "254700000002",
            phone_number_id: "100000000000002",
            token: "EAAG-test-token-2",
            ..TenantSpec::default()
        },
    )
    .await;
    // Without the model: /readyz says so, and the same words make one
    // candidate.
    let stack = RunningStack::start(e.config(), &Service::ALL).await;
    let ready = reqwest::get(format!("http://{}/readyz", stack.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        ready.contains("embedding model: not loaded (ALPHADOME_EMBEDDING_MODEL is not set)"),
        "{ready}"
    );
    ask(
        &stack,
        &t,
        "254711000010",
        "wamid.a.1",
        "Do you sell vinyl records?",
    )
    .await;
    ask(
        &stack,
        &t,
        "254711000011",
        "wamid.a.2",
        "do you sell vinyl records",
    )
    .await;
    ask(
        &stack,
        &t,
        "254711000012",
        "wamid.a.3",
        "Do you tune pianos at home?",
    )
    .await;
    for w in ["wamid.a.1", "wamid.a.2", "wamid.a.3"] {
        reply_to(&e.graph, w).await;
    }
    let (tid, oid) = (t.id.to_string(), other.id.to_string());
    let admin = api_token(&e.db.pool, "t-admin", Role::TenantAdmin, Some(&tid)).await;
    let other_admin = api_token(&e.db.pool, "o-admin", Role::TenantAdmin, Some(&oid)).await;
    let agent = api_token(&e.db.pool, "t-agent", Role::Agent, Some(&tid)).await;
    let api = ApiClient::new(&stack);
    let base = format!("/tenants/{}", t.id);
    let call = |method: reqwest::Method, path: String, token: String, body: Option<Value>| {
        let api = &api;
        async move { api.call(method, &path, &token, body).await }
    };
    let list = eventually(Duration::from_secs(10), "two candidates", || async {
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{base}/training-candidates"),
            admin.clone(),
            None,
        )
        .await;
        (s == 200 && v["candidates"].as_array().is_some_and(|c| c.len() == 2)).then_some(v)
    })
    .await;
    let top = &list["candidates"][0];
    assert_eq!(top["question"], "Do you sell vinyl records?");
    assert_eq!(top["ask_count"], 2);
    let id = top["id"].as_str().unwrap().to_owned();
    let teach = format!("{base}/training-candidates/{id}/teach");

    // Another tenant's admin sees nothing of it; an agent may not teach;
    // bad input is named.
    let (s, _) = call(
        reqwest::Method::GET,
        format!("{base}/training-candidates"),
        other_admin.clone(),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        reqwest::Method::POST,
        teach.clone(),
        other_admin.clone(),
        Some(json!({"answer": "x"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        reqwest::Method::POST,
        teach.clone(),
        agent.clone(),
        Some(json!({"answer": "x"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, v) = call(
        reqwest::Method::POST,
        teach.clone(),
        admin.clone(),
        Some(json!({"answer": "  "})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("answer"), "{v}");
    let (s, v) = call(
        reqwest::Method::GET,
        format!("{base}/training-candidates?status=bogus"),
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("status"), "{v}");

    // Taught: an active FAQ entry the bot uses at once; teaching twice is
    // a conflict; the change is audited.
    let (s, v) = call(
        reqwest::Method::POST,
        teach.clone(),
        admin.clone(),
        Some(json!({"answer": "Yes, new and used vinyl."})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["candidate"]["status"], "taught");
    let (s, _) = call(
        reqwest::Method::POST,
        teach.clone(),
        admin.clone(),
        Some(json!({"answer": "again"})),
    )
    .await;
    assert_eq!(s, 409);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.change_audit WHERE action = 'training_candidate.teach' AND bot_tenant_id = $1",
    )
    .bind(t.id)
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let answered = eventually(Duration::from_secs(10), "the taught answer", || async {
        let n = e.graph.received().len();
        let wamid = format!("wamid.a.next.{n}");
        ask(
            &stack,
            &t,
            "254711000013",
            &wamid,
            "Do you sell vinyl records??",
        )
        .await;
        let r = reply_to(&e.graph, &wamid).await;
        (r == "Yes, new and used vinyl.").then_some(r)
    })
    .await;
    assert_eq!(answered, "Yes, new and used vinyl.");

    // The CLI lists the open ones (not the taught one) and teaches one.
    // (An ask that raced the reload may have opened a new candidate.)
    let env = [("DATABASE_URL", e.db.url.as_str())];
    let tid = t.id.to_string();
    let (code, out, err) = cli(&["training", "candidates", "--tenant", &tid], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Do you tune pianos at home?") && !out.contains(&id),
        "{out}"
    );
    let piano = candidates(&e, t.id, Some("open"))
        .await
        .into_iter()
        .find(|c| c.question == "Do you tune pianos at home?")
        .unwrap()
        .id
        .to_string();
    let (code, out, err) = cli(
        &[
            "training",
            "teach",
            "--tenant",
            &tid,
            "--id",
            &piano,
            "--answer",
            "Yes, within Nairobi.",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("taught"), "{out}");
    let (code, _, err) = cli(
        &[
            "training", "teach", "--tenant", &tid, "--id", &piano, "--answer", "again",
        ],
        &env,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already taught"), "{err}");
    assert!(!candidates(&e, t.id, Some("open"))
        .await
        .iter()
        .any(|c| c.question.contains("pianos")));
    stack.stop().await.unwrap();
}

/// Many entries: their vectors are computed in the background, the tenant
/// answered by words meanwhile and by meaning once they are stored.
#[tokio::test]
async fn a_large_faq_gets_its_vectors_in_the_background() {
    let e = TestEnv::new().await;
    let extra: Vec<(String, String)> = (0..40)
        .map(|k| {
            (
                format!("Do you stock spare part number {k} for amplifiers?"),
                format!("Yes, part {k} is in stock."),
            )
        })
        .collect();
    let mut faq: Vec<(&str, &str)> = FAQ.to_vec();
    faq.extend(extra.iter().map(|(q, a)| (q.as_str(), a.as_str())));
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            faq: &faq,
            ..TenantSpec::default()
        },
    )
    .await;
    let mut config = e.config();
    config.embedding_model = Some(model_dir());
    config.embedding_budget = Duration::from_secs(10);
    let stack = RunningStack::start(config, &Service::ALL).await;
    let got = eventually(Duration::from_secs(60), "an answer by meaning", || async {
        let n = e.graph.received().len();
        let wamid = format!("wamid.bg.{n}");
        ask(
            &stack,
            &t,
            "254711000020",
            &wamid,
            "until what time are you open today?",
        )
        .await;
        let r = reply_to(&e.graph, &wamid).await;
        (r == FAQ[0].1).then_some(wamid)
    })
    .await;
    assert_eq!(match_tier(&e, &got).await.as_deref(), Some("semantic"));
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.training_embeddings WHERE bot_tenant_id = $1",
    )
    .bind(t.id)
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        2 * faq.len() as i64,
        "a question and a question with its answer per entry"
    );
    stack.stop().await.unwrap();
}

/// A model that cannot answer within its budget leaves the message to the
/// lexical matcher: nothing waits longer, nothing is lost.
#[tokio::test]
async fn a_model_past_its_budget_leaves_the_message_to_words() {
    let e = TestEnv::new().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            faq: FAQ,
            ..TenantSpec::default()
        },
    )
    .await;
    let mut config = e.config();
    config.embedding_model = Some(model_dir());
    config.embedding_budget = Duration::from_millis(1);
    let stack = RunningStack::start(config, &Service::ALL).await;
    ask(
        &stack,
        &t,
        "254711000030",
        "wamid.late.1",
        "until what time are you open today?",
    )
    .await;
    let fallback = reply_to(&e.graph, "wamid.late.1").await;
    assert!(!FAQ.iter().any(|(_, a)| *a == fallback), "{fallback}");
    ask(
        &stack,
        &t,
        "254711000030",
        "wamid.late.2",
        "What are your opening hours?",
    )
    .await;
    assert_eq!(reply_to(&e.graph, "wamid.late.2").await, FAQ[0].1);
    assert_eq!(
        match_tier(&e, "wamid.late.2").await.as_deref(),
        Some("lexical")
    );
    stack.stop().await.unwrap();
}
