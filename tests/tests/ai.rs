//! AI answers against a local OpenAI-compatible stand-in: the tenant's own
//! provider, key, model and prompt; truncation; failures falling back;
//! retries; limits across two responders; escalation and handoff; usage.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use alphadome_cli::stack::Service;
use alphadome_tests::*;

const USER: &str = "254711555000";

/// The common environment plus an LLM stand-in behind every provider.
struct Env {
    base: TestEnv,
    llm: Arc<LlmStandIn>,
    llm_url: String,
}

impl std::ops::Deref for Env {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.base
    }
}

async fn env() -> Env {
    let (llm, llm_url) = LlmStandIn::start().await;
    Env {
        base: TestEnv::new().await,
        llm,
        llm_url,
    }
}

impl Env {
    fn config(&self) -> alphadome_core::config::Config {
        let mut c = self.base.config();
        c.ai.openai_base = format!("{}/openai/v1", self.llm_url);
        c.ai.openrouter_base = format!("{}/openrouter/api/v1", self.llm_url);
        c.ai.huggingface_base = format!("{}/hf/v1", self.llm_url);
        c.ai.timeout = Duration::from_secs(3);
        c
    }
}

fn ai_tenant<'a>(tenant_extra: &'a str) -> TenantSpec<'a> {
    TenantSpec {
        control: "enable_ai_responses: true",
        tenant_extra,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_request_carries_the_tenants_key_model_prompt_and_knowledge() {
    let e = env().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            tenant_extra: "ai_provider: openai\nai_api_key: sk-tenant-a-key\nai_model: gpt-4o-mini",
            template_extra: "tone: professional\nmax_response_length: 300\nconversation_context: {city: Nairobi}",
            faq: &[("Do you sell Yamaha keyboards?", "Yes, Yamaha PSR keyboards from KES 25,000.")],
            training_extra: "  - data_type: example\n    question: Do you deliver?\n    answer: Yes, countrywide.\n",
            ..ai_tenant("")
        },
    )
    .await;
    let stack = RunningStack::start(e.config(), &Service::ALL).await;
    ask(
        &stack,
        &t,
        USER,
        "wamid.ai.1",
        "which keyboard brand is best for a beginner learning at home?",
    )
    .await;
    let reply = reply_to(&e.graph, "wamid.ai.1").await;
    assert_eq!(
        reply,
        "AI answer to: which keyboard brand is best for a beginner learning at home?"
    );
    let reqs = e.llm.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/openai/v1/chat/completions");
    assert_eq!(r.key, "sk-tenant-a-key");
    assert_eq!(r.body["model"], "gpt-4o-mini");
    assert!(
        r.body["max_completion_tokens"].as_u64().unwrap() <= 120,
        "token limit from max_response_length"
    );
    let system = r.system();
    assert!(
        system.starts_with("You are a helpful assistant."),
        "{system}"
    );
    assert!(
        system.contains("professional")
            && system.contains("300 characters")
            && system.contains("Nairobi"),
        "{system}"
    );
    assert!(
        system.contains("Yamaha PSR keyboards"),
        "retrieved knowledge is in the prompt: {system}"
    );
    let roles: Vec<&str> = r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "user"],
        "few-shot example, then the question"
    );

    // The log records the AI reply, its source, template and usage.
    let row: (bool, Option<String>, Option<String>, Option<uuid::Uuid>, serde_json::Value) = eventually(Duration::from_secs(10), "AI log row", || async {
        sqlx::query_as("SELECT ai_processed, ai_response, template_used, training_data_id, metadata FROM alphadome.bot_message_logs WHERE direction = 'outgoing'")
            .fetch_optional(&e.db.pool)
            .await
            .unwrap()
    })
    .await;
    assert!(row.0);
    assert_eq!(row.1.as_deref(), Some(reply.as_str()));
    assert_eq!(row.2.as_deref(), Some("default"));
    assert!(row.3.is_some(), "the leading source is recorded");
    assert_eq!(
        (
            row.4["usage"]["prompt_tokens"].as_u64(),
            row.4["usage"]["completion_tokens"].as_u64()
        ),
        (Some(42), Some(7))
    );

    // A follow-up carries the conversation so far.
    ask(
        &stack,
        &t,
        USER,
        "wamid.ai.2",
        "and what about a cheaper one for a child of eight?",
    )
    .await;
    reply_to(&e.graph, "wamid.ai.2").await;
    let second = &e.llm.requests()[1];
    let contents: Vec<String> = second.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        contents
            .iter()
            .any(|c| c.contains("beginner learning at home")),
        "history missing: {contents:?}"
    );
    assert!(
        contents.iter().any(|c| c == &reply),
        "the bot's earlier answer is in the history"
    );

    // alphadome usage reports it, once the logger has written both replies.
    eventually(Duration::from_secs(10), "both AI replies logged", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM alphadome.bot_message_logs WHERE direction = 'outgoing' AND ai_processed",
        )
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
        (n == 2).then_some(())
    })
    .await;
    let (code, out, err) = tokio::task::spawn_blocking({
        let (url, id) = (e.db.url.clone(), t.id.to_string());
        move || {
            cli(
                &["usage", "--tenant", &id, "--json"],
                &[("DATABASE_URL", &url)],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let days: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(days[0]["ai_replies"], 2);
    assert_eq!(days[0]["prompt_tokens"], 84);
    assert_eq!(days[0]["completion_tokens"], 14);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn two_tenants_with_different_providers_and_keys_never_cross() {
    let e = env().await;
    let a = tenant(&e.db.pool, &e.ring, TenantSpec {
        phone: "254700000101", phone_number_id: "101", token: "EAAG-a",
        ..ai_tenant("ai_provider: openrouter\nai_api_key: sk-or-v1-tenant-a\nai_model: meta-llama/llama-3.1-70b-instruct")
    }).await;
    let b_base = format!("{}/selfhosted/v1", e.llm_url);
    let b_extra = format!("ai_provider: openai_compatible\nai_base_url: {b_base}\nai_api_key: local-key-b\nai_model: llama3");
    let b = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000102",
            phone_number_id: "102",
            token: "EAAG-b",
            ..ai_tenant(&b_extra)
        },
    )
    .await;
    let c = tenant(&e.db.pool, &e.ring, TenantSpec {
        phone: "254700000103", phone_number_id: "103", token: "EAAG-c",
        ..ai_tenant("ai_provider: huggingface\nai_api_key: hf_tenant_c\nai_model: moonshotai/Kimi-K2-Instruct:groq")
    }).await;
    let stack = RunningStack::start(e.config(), &Service::ALL).await;
    ask(
        &stack,
        &a,
        USER,
        "wamid.p.a",
        "tell me a story about drums and rhythm",
    )
    .await;
    ask(
        &stack,
        &b,
        USER,
        "wamid.p.b",
        "tell me a story about violins and strings",
    )
    .await;
    ask(
        &stack,
        &c,
        USER,
        "wamid.p.c",
        "tell me a story about flutes and wind",
    )
    .await;
    for w in ["wamid.p.a", "wamid.p.b", "wamid.p.c"] {
        reply_to(&e.graph, w).await;
    }
    let reqs = e.llm.requests();
    let find = |needle: &str| {
        reqs.iter()
            .find(|r| r.last_user().contains(needle))
            .unwrap()
            .clone()
    };
    let (ra, rb, rc) = (find("drums"), find("violins"), find("flutes"));
    assert_eq!(
        (
            ra.path.as_str(),
            ra.key.as_str(),
            ra.body["model"].as_str().unwrap()
        ),
        (
            "/openrouter/api/v1/chat/completions",
            "sk-or-v1-tenant-a",
            "meta-llama/llama-3.1-70b-instruct"
        )
    );
    assert!(ra
        .headers
        .iter()
        .any(|(k, v)| k == "x-openrouter-title" && v == "Alphadome"));
    assert!(ra.body.get("max_tokens").is_some());
    assert_eq!(
        (
            rb.path.as_str(),
            rb.key.as_str(),
            rb.body["model"].as_str().unwrap()
        ),
        ("/selfhosted/v1/chat/completions", "local-key-b", "llama3")
    );
    assert_eq!(
        (rc.path.as_str(), rc.key.as_str()),
        ("/hf/v1/chat/completions", "hf_tenant_c")
    );
    // Each reply went out through its own tenant's number and token.
    for (w, t) in [("wamid.p.a", &a), ("wamid.p.b", &b), ("wamid.p.c", &c)] {
        let r = e
            .graph
            .received()
            .into_iter()
            .find(|r| r.in_reply_to() == w)
            .unwrap();
        assert_eq!(
            (r.phone_number_id.as_str(), r.token.as_str()),
            (t.phone_number_id.as_str(), t.token.as_str())
        );
    }
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn long_answers_are_cut_to_max_response_length_at_a_sentence() {
    let e = env().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            template_extra: "max_response_length: 60",
            ..ai_tenant("ai_provider: openai\nai_api_key: sk-x\nai_model: m")
        },
    )
    .await;
    e.llm.script([LlmBehaviour::Reply(format!(
        "Short first sentence here. Second sentence goes past the limit. {}",
        "More. ".repeat(2000)
    ))]);
    let stack = RunningStack::start(e.config(), &Service::ALL).await;
    ask(
        &stack,
        &t,
        USER,
        "wamid.cut.1",
        "tell me everything about everything",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.cut.1").await,
        "Short first sentence here."
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn timeouts_and_server_errors_fall_back_and_are_logged_and_429_is_retried() {
    let e = env().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            control: "enable_ai_responses: true\nfallback_reply: Our team will answer you soon.",
            ..ai_tenant("ai_provider: openai\nai_api_key: sk-x\nai_model: m")
        },
    )
    .await;
    let stack = RunningStack::start(e.config(), &Service::ALL).await;
    // A timeout (the budget is 3 s): fallback, error logged.
    e.llm.script([LlmBehaviour::Hang(Duration::from_secs(10))]);
    ask(
        &stack,
        &t,
        "254711555001",
        "wamid.f.1",
        "something the FAQ does not know",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.f.1").await,
        "Our team will answer you soon."
    );
    // 500 three times: fallback after retries.
    let err500 =
        r#"{"error":{"message":"server error","type":"server_error","code":null}}"#.to_owned();
    e.llm.script([
        LlmBehaviour::Status(500, err500.clone(), None),
        LlmBehaviour::Status(500, err500.clone(), None),
        LlmBehaviour::Status(500, err500, None),
    ]);
    ask(
        &stack,
        &t,
        "254711555002",
        "wamid.f.2",
        "another unknown question entirely",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.f.2").await,
        "Our team will answer you soon."
    );
    let errors: Vec<(String, Option<String>)> = eventually(Duration::from_secs(10), "logged errors", || async {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT whatsapp_message_id, error_message FROM alphadome.bot_message_logs WHERE direction = 'incoming' ORDER BY whatsapp_message_id",
        )
        .fetch_all(&e.db.pool)
        .await
        .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert!(
        errors[0]
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("did not answer in time"),
        "{errors:?}"
    );
    assert!(
        errors[1]
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("HTTP 500"),
        "{errors:?}"
    );
    // 429 with Retry-After: retried, then answered by the AI.
    let before = e.llm.requests().len();
    let rl = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.to_owned();
    e.llm.script([LlmBehaviour::Status(429, rl, Some(1))]);
    ask(
        &stack,
        &t,
        "254711555003",
        "wamid.f.3",
        "a question for the model please",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.f.3").await,
        "AI answer to: a question for the model please"
    );
    let reqs = e.llm.requests();
    assert_eq!(reqs.len() - before, 2, "one 429, one retry");
    // A quota error is not retried.
    let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#.to_owned();
    e.llm.script([LlmBehaviour::Status(429, quota, Some(1))]);
    let before = e.llm.requests().len();
    ask(
        &stack,
        &t,
        "254711555004",
        "wamid.f.4",
        "yet another question for the model",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.f.4").await,
        "Our team will answer you soon."
    );
    assert_eq!(e.llm.requests().len() - before, 1);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn limits_hold_exactly_with_two_responder_instances() {
    let e = env().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            control: "max_messages_per_user_per_day: 3\nmax_messages_per_hour: 8",
            ..Default::default()
        },
    )
    .await;
    let cfg = e.config();
    let edge = RunningStack::start(
        cfg.clone(),
        &[Service::Ingress, Service::Sender, Service::Logger],
    )
    .await;
    let shutdown = alphadome_core::CancellationToken::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let r = alphadome_responder::Responder::start(
            &cfg,
            e.db.pool.clone(),
            e.nats.bus().await,
            shutdown.clone(),
        )
        .await
        .unwrap();
        runs.push(tokio::spawn(r.run(
            alphadome_core::bus::ConsumerSettings {
                concurrency: 8,
                ..Default::default()
            },
            shutdown.clone(),
        )));
    }
    // One customer, six messages: three answers, one notice, then silence.
    for i in 0..6 {
        ask(&edge, &t, USER, &format!("wamid.lim.u{i}"), "opening hours").await;
    }
    // Eight more customers, one message each: the tenant's hourly cap of 8
    // replies leaves room for five of them (the first customer had three).
    for i in 0..8 {
        ask(
            &edge,
            &t,
            &format!("25471166600{i}"),
            &format!("wamid.lim.o{i}"),
            "opening hours",
        )
        .await;
    }
    eventually(Duration::from_secs(15), "all 14 logged", || async {
        (log_counts(&e.db.pool, t.id).await.0 == 14).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = e.graph.received();
    let answers = got
        .iter()
        .filter(|r| r.text() == "We are open 9 to 5.")
        .count();
    let notices: Vec<_> = got.iter().filter(|r| r.text().contains("limit")).collect();
    let to_user = got.iter().filter(|r| r.to() == USER).count();
    let user_answers = got
        .iter()
        .filter(|r| r.to() == USER && r.text() == "We are open 9 to 5.")
        .count();
    assert!(user_answers <= 3, "per-user limit broken: {user_answers}");
    assert_eq!(answers, 8, "exactly the hourly cap answered");
    assert!(
        to_user <= 4,
        "more than one notice to the customer: {to_user}"
    );
    // Everyone over a limit hears about it once.
    let noticed: std::collections::HashSet<String> = notices.iter().map(|r| r.to()).collect();
    assert_eq!(noticed.len(), notices.len(), "a customer got two notices");
    assert_eq!(answers + notices.len(), got.len());
    shutdown.cancel();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn asking_for_a_person_escalates_by_whatsapp_and_email_and_pauses_the_bot() {
    let e = env().await;
    let (smtp, smtp_url) = SmtpSink::start().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec {
        control: "escalation_phone: '0722333444'\nescalation_email: owner@shop.example\nhandoff_pause_minutes: 30",
        ..Default::default()
    }).await;
    // The owner wrote to the number today: their 24-hour window is open,
    // so the alert goes as text.
    wrote(&e.db.pool, t.id, "254722333444", 60).await;
    let mut cfg = e.config();
    cfg.smtp_url = Some(secrecy::SecretString::from(smtp_url));
    let stack = RunningStack::start(cfg, &Service::ALL).await;
    ask(
        &stack,
        &t,
        USER,
        "wamid.h.1",
        "I want to talk to a human please",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.h.1").await,
        alphadome_responder::escalation::HANDOFF_REPLY
    );
    // The owner is told on WhatsApp, through the tenant's own number ...
    let alert = eventually(Duration::from_secs(10), "the WhatsApp alert", || async {
        e.graph
            .received()
            .into_iter()
            .find(|r| r.to() == "254722333444")
    })
    .await;
    assert_eq!(
        (alert.phone_number_id.as_str(), alert.token.as_str()),
        (t.phone_number_id.as_str(), t.token.as_str())
    );
    assert!(alert.text().contains("I want to talk to a human please"));
    // ... and by e-mail.
    let mail = eventually(Duration::from_secs(10), "the e-mail", || async {
        smtp.messages().into_iter().next()
    })
    .await;
    let mail = unfold(&mail);
    assert!(
        mail.contains("owner@shop.example") && mail.contains("talk to a human"),
        "{mail}"
    );
    // The bot stays quiet in this conversation (messages still logged) ...
    ask(&stack, &t, USER, "wamid.h.2", "opening hours").await;
    eventually(Duration::from_secs(10), "logged", || async {
        (log_counts(&e.db.pool, t.id).await.0 == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        e.graph
            .received()
            .iter()
            .all(|r| r.in_reply_to() != "wamid.h.2"),
        "the bot answered during the handoff"
    );
    // ... but not in others.
    ask(&stack, &t, "254711555999", "wamid.h.3", "opening hours").await;
    assert_eq!(reply_to(&e.graph, "wamid.h.3").await, "We are open 9 to 5.");
    // Resumed from the CLI, it answers again.
    let (code, out, err) = tokio::task::spawn_blocking({
        let (url, phone) = (e.db.url.clone(), t.phone.clone());
        move || {
            cli(
                &["conversation", "resume", "--tenant", &phone, "--user", USER],
                &[("DATABASE_URL", &url)],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("answers"), "{out}");
    ask(&stack, &t, USER, "wamid.h.4", "opening hours").await;
    assert_eq!(reply_to(&e.graph, "wamid.h.4").await, "We are open 9 to 5.");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn housekeeping_removes_only_expired_limit_records() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    for (wamid, age) in [("old", 9), ("recent", 1)] {
        sqlx::query("INSERT INTO alphadome.rate_limit_events (bot_tenant_id, whatsapp_message_id, decision, created_at) VALUES ($1, $2, 'allow', now() - make_interval(days => $3))")
            .bind(t.id)
            .bind(wamid)
            .bind(age)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    // The responder purges its own records, as its own role.
    let responder = alphadome_core::db::connect_as(
        &secrecy::SecretString::from(db.url.clone()),
        alphadome_core::db::ServiceRole::Responder,
        2,
    )
    .await
    .unwrap();
    assert_eq!(
        alphadome_responder::store::purge_limit_records(
            &responder,
            alphadome_responder::LIMIT_RECORD_DAYS
        )
        .await
        .unwrap(),
        1
    );
    let left: Vec<String> =
        sqlx::query_scalar("SELECT whatsapp_message_id FROM alphadome.rate_limit_events")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(left, ["recent"]);
}

#[tokio::test]
async fn repeated_ai_failures_open_the_circuit_and_escalate() {
    let e = env().await;
    let (smtp, smtp_url) = SmtpSink::start().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec {
        control: "enable_ai_responses: true\nescalation_email: owner@shop.example\nfallback_reply: Staff will reply soon.",
        ..ai_tenant("ai_provider: openai\nai_api_key: sk-revoked\nai_model: m")
    }).await;
    let bad_key = r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#.to_owned();
    e.llm
        .script((0..5).map(|_| LlmBehaviour::Status(401, bad_key.clone(), None)));
    let mut cfg = e.config();
    cfg.smtp_url = Some(secrecy::SecretString::from(smtp_url));
    let stack = RunningStack::start(cfg, &Service::ALL).await;
    for i in 0..3 {
        let w = format!("wamid.cb.{i}");
        ask(
            &stack,
            &t,
            &format!("25471177700{i}"),
            &w,
            "a question only a model could answer",
        )
        .await;
        assert_eq!(reply_to(&e.graph, &w).await, "Staff will reply soon.");
    }
    assert_eq!(e.llm.requests().len(), 3, "a rejected key is not retried");
    // The third failure opened the circuit: the owner is told, and the next
    // question does not even reach the provider.
    let mail = eventually(Duration::from_secs(10), "the e-mail", || async {
        smtp.messages().into_iter().next()
    })
    .await;
    assert!(unfold(&mail).contains("the AI keeps failing"), "{mail}");
    ask(
        &stack,
        &t,
        "254711777009",
        "wamid.cb.9",
        "another question only a model could answer",
    )
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.cb.9").await,
        "Staff will reply soon."
    );
    assert_eq!(
        e.llm.requests().len(),
        3,
        "the open circuit still called the provider"
    );
    // A customer left unanswered twice in a row is handed to a person too.
    eventually(Duration::from_secs(10), "the first customer's rows", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_message_logs WHERE user_phone = '254711777000' AND direction = 'outgoing'")
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
        (n == 1).then_some(())
    })
    .await;
    ask(
        &stack,
        &t,
        "254711777000",
        "wamid.cb.again",
        "still no answer to my question?",
    )
    .await;
    reply_to(&e.graph, "wamid.cb.again").await;
    let mails = eventually(Duration::from_secs(10), "the second e-mail", || async {
        let m = smtp.messages();
        (m.len() >= 2).then_some(m)
    })
    .await;
    assert!(
        mails
            .iter()
            .any(|m| unfold(m).contains("could not answer twice")),
        "{mails:?}"
    );
    let error: Option<String> = sqlx::query_scalar("SELECT error_message FROM alphadome.bot_message_logs WHERE whatsapp_message_id = 'wamid.cb.9'")
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    assert!(error
        .unwrap_or_default()
        .contains("paused after repeated failures"));
    stack.stop().await.unwrap();
}

/// Undoes quoted-printable soft line breaks.
fn unfold(mail: &str) -> String {
    mail.replace("=\n", "")
}
