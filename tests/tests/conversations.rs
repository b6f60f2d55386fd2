//! Conversations as customers live them, against the real services with
//! the Graph API stand-in checking the payloads Meta expects: greetings
//! and opening hours, read receipts, customers known only by their user
//! id, STOP and START, flows left with "cancel", and Meta's 24-hour window
//! (templates outside it, 131047 and template errors told as what they
//! are, agents' follow-ups).
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use alphadome_admin::people::Role;
use alphadome_core::conversation;
use alphadome_responder::decide::{FLOW_CANCELLED_REPLY, OPTED_IN_REPLY, OPTED_OUT_REPLY};
use alphadome_tests::*;
use reqwest::Method;
use serde_json::{json, Value};

const ANSWER: &str = "We are open 9 to 5.";
const STAFF: &str = "254722333444";

/// Today in Nairobi, as business_hours' closed_dates write it.
fn today_in_nairobi() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(3))
        .format("%Y-%m-%d")
        .to_string()
}

/// The outgoing message to `to` whose text contains `needle`, once the
/// stand-in has it.
async fn sent_to(e: &TestEnv, to: &str, what: &str) -> Received {
    eventually(Duration::from_secs(15), what, || async {
        e.graph.received().into_iter().find(|r| r.to() == to)
    })
    .await
}

/// The outbound row of `id`: its state and last error.
async fn outbound(e: &TestEnv, id: &str) -> (String, Option<String>) {
    eventually(
        Duration::from_secs(15),
        "the outbound row settled",
        || async {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT state, last_error FROM alphadome.outbound_messages WHERE outbound_id = $1",
            )
            .bind(id)
            .fetch_optional(&e.db.pool)
            .await
            .unwrap()
            .filter(|(state, _)| state != "sending")
        },
    )
    .await
}

#[tokio::test]
async fn greetings_hours_read_receipts_and_customers_known_by_user_id() {
    let e = TestEnv::new().await;
    let always = r#"business_hours: {"timezone": "Africa/Nairobi", "weekly": {"mon": [["00:00", "24:00"]], "tue": [["00:00", "24:00"]], "wed": [["00:00", "24:00"]], "thu": [["00:00", "24:00"]], "fri": [["00:00", "24:00"]], "sat": [["00:00", "24:00"]], "sun": [["00:00", "24:00"]]}}"#;
    let open_control = format!("greeting_message: Karibu! Welcome to Test Shop.\n{always}");
    let open = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            control: &open_control,
            ..Default::default()
        },
    )
    .await;
    let closed_today = format!(
        r#"business_hours: {{"timezone": "Africa/Nairobi", "weekly": {{"mon": [["00:00", "24:00"]]}}, "closed_dates": ["{}"]}}"#,
        today_in_nairobi()
    );
    let shut_control = format!(
        "{closed_today}\nanswer_out_of_hours: false\nout_of_hours_reply: We're closed today.\nsend_read_receipts: false"
    );
    let shut = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000002",
            phone_number_id: "100000000000002",
            token: "EAAG-test-token-2",
            control: &shut_control,
            ..Default::default()
        },
    )
    .await;
    let noted_control =
        format!("{closed_today}\nout_of_hours_reply: \"Note: we're closed today.\"");
    let noted = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000003",
            phone_number_id: "100000000000003",
            token: "EAAG-test-token-3",
            control: &noted_control,
            ..Default::default()
        },
    )
    .await;
    let stack = e.stack().await;
    let user = "254711000001";

    // A new conversation opens with the greeting; the message is marked
    // read with the tenant's number and token, exactly as Meta expects.
    ask(&stack, &open, user, "wamid.c.1", "opening hours").await;
    assert_eq!(
        reply_to(&e.graph, "wamid.c.1").await,
        format!("Karibu! Welcome to Test Shop.\n\n{ANSWER}")
    );
    let receipts = e.graph.wait_for_receipts(1, Duration::from_secs(10)).await;
    assert_eq!(
        receipts[0].body,
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.c.1"})
    );
    assert_eq!(
        (
            receipts[0].phone_number_id.as_str(),
            receipts[0].token.as_str()
        ),
        (open.phone_number_id.as_str(), open.token.as_str())
    );
    // The next message is the same conversation: no greeting.
    ask(&stack, &open, user, "wamid.c.2", "opening hours").await;
    assert_eq!(reply_to(&e.graph, "wamid.c.2").await, ANSWER);

    // Closed today: the out-of-hours reply instead of the answer, and no
    // read receipt for a tenant that turned them off ...
    ask(&stack, &shut, user, "wamid.c.3", "opening hours").await;
    assert_eq!(reply_to(&e.graph, "wamid.c.3").await, "We're closed today.");
    // ... or the answer with the note, for one that still answers.
    ask(&stack, &noted, user, "wamid.c.4", "opening hours").await;
    assert_eq!(
        reply_to(&e.graph, "wamid.c.4").await,
        format!("{ANSWER}\n\nNote: we're closed today.")
    );

    // A customer WhatsApp knows only by their business-scoped user id is
    // answered with `recipient`, and has a session of their own.
    let bsuid = "KE.48213095775120";
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "0", "phone_number_id": open.phone_number_id},
            "contacts": [{"profile": {"name": "Username Only"}, "user_id": bsuid}],
            "messages": [{"from_user_id": bsuid, "id": "wamid.c.5",
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "type": "text", "text": {"body": "opening hours"}}]
        }}]}]
    })
    .to_string();
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
            .await
            .status(),
        200
    );
    let reply = eventually(Duration::from_secs(15), "the reply by user id", || async {
        e.graph
            .received()
            .into_iter()
            .find(|r| r.in_reply_to() == "wamid.c.5")
    })
    .await;
    assert_eq!(reply.body["recipient"], bsuid);
    assert!(reply.body.get("to").is_none(), "{}", reply.body);
    assert_eq!(
        reply.text(),
        format!("Karibu! Welcome to Test Shop.\n\n{ANSWER}")
    );
    let w = conversation::window(&e.db.pool, open.id, bsuid)
        .await
        .unwrap()
        .expect("the user id's session");
    assert!(w.is_open(chrono::Utc::now()));
    let receipts = e.graph.wait_for_receipts(4, Duration::from_secs(10)).await;
    let read: Vec<&str> = receipts
        .iter()
        .map(|r| r.body["message_id"].as_str().unwrap())
        .collect();
    assert!(!read.contains(&"wamid.c.3"), "{read:?}");
    for w in ["wamid.c.1", "wamid.c.2", "wamid.c.4", "wamid.c.5"] {
        assert!(read.contains(&w), "{w} not marked read: {read:?}");
    }
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn stop_holds_proactive_messages_until_start_and_cancel_leaves_a_flow() {
    let e = TestEnv::new().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            control: &format!("escalation_phone: '{STAFF}'\nopt_out_keywords: [acha]"),
            ..Default::default()
        },
    )
    .await;
    // The staff member wrote today: alerts to them go as text.
    wrote(&e.db.pool, t.id, STAFF, 30).await;
    let stack = e.stack().await;

    // The staff member writes their own STOP word: confirmed, recorded,
    // and listed by the API.
    ask(&stack, &t, STAFF, "wamid.s.1", "Acha!").await;
    assert_eq!(reply_to(&e.graph, "wamid.s.1").await, OPTED_OUT_REPLY);
    let admin = api_token(&e.db.pool, "admin", Role::TenantAdmin, Some(&t.phone)).await;
    let api = ApiClient::new(&stack);
    let (s, list) = api
        .call(
            Method::GET,
            &format!("/tenants/{}/opt-outs", t.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list[0]["customer"], STAFF, "{list}");
    // An escalation now reaches them by no WhatsApp message: the reason
    // says why, and nothing is dead-lettered for it.
    ask(&stack, &t, "254711000009", "wamid.s.2", "I want a human").await;
    reply_to(&e.graph, "wamid.s.2").await;
    let (state, error) = outbound(&e, "escalation:wamid.s.2").await;
    assert_eq!(state, "failed");
    assert!(error.unwrap_or_default().contains("wrote STOP"));
    assert!(e
        .graph
        .received()
        .iter()
        .all(|r| r.to() != STAFF || r.in_reply_to() == "wamid.s.1"));
    // START: the next alert goes.
    ask(&stack, &t, STAFF, "wamid.s.3", "start").await;
    assert_eq!(reply_to(&e.graph, "wamid.s.3").await, OPTED_IN_REPLY);
    let (_, list) = api
        .call(
            Method::GET,
            &format!("/tenants/{}/opt-outs", t.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(list, json!([]));
    ask(
        &stack,
        &t,
        "254711000010",
        "wamid.s.4",
        "can I talk to a person",
    )
    .await;
    let alert = eventually(Duration::from_secs(15), "the alert after START", || async {
        e.graph
            .received()
            .into_iter()
            .find(|r| r.to() == STAFF && r.text().contains("can I talk to a person"))
    })
    .await;
    assert_eq!(alert.body["type"], "text");

    // A flow (as the payments flow keeps one): "cancel" leaves it.
    let customer = "254711000011";
    ask(&stack, &t, customer, "wamid.f.1", "opening hours").await;
    reply_to(&e.graph, "wamid.f.1").await;
    conversation::set_state(
        &e.db.pool,
        t.id,
        customer,
        "payment:choose_plan",
        &json!({"plan": "monthly"}),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let w = conversation::window(&e.db.pool, t.id, customer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.state, "payment:choose_plan");
    ask(&stack, &t, customer, "wamid.f.2", "Cancel").await;
    assert_eq!(reply_to(&e.graph, "wamid.f.2").await, FLOW_CANCELLED_REPLY);
    let w = conversation::window(&e.db.pool, t.id, customer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.state, conversation::IDLE);
    // A step that lapsed is idle: "cancel" is then an ordinary message.
    conversation::set_state(
        &e.db.pool,
        t.id,
        customer,
        "payment:confirm",
        &json!({}),
        Duration::ZERO,
    )
    .await
    .unwrap();
    ask(&stack, &t, customer, "wamid.f.3", "cancel").await;
    assert_ne!(reply_to(&e.graph, "wamid.f.3").await, FLOW_CANCELLED_REPLY);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn outside_the_window_only_templates_go_and_metas_refusals_are_named() {
    let e = TestEnv::new().await;
    let templates = "  - name: staff_alert\n    language: en\n    parameters: [customer, reason]\n    use_for: [escalation]\n  - name: follow_up\n    language: en_US\n    parameters: [customer_name]\n    use_for: [agent]\n";
    let with = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            control: &format!("escalation_phone: '{STAFF}'"),
            whatsapp_templates: templates,
            ..Default::default()
        },
    )
    .await;
    let without = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000002",
            phone_number_id: "100000000000002",
            token: "EAAG-test-token-2",
            control: &format!("escalation_phone: '{STAFF}'"),
            ..Default::default()
        },
    )
    .await;
    e.graph.approve_template("staff_alert", "en", 2);
    e.graph.approve_template("follow_up", "en_US", 1);
    let stack = e.stack().await;

    // The staff member never wrote: the escalation goes as the approved
    // template, filled as Meta expects.
    ask(&stack, &with, "254711000001", "wamid.w.1", "I want a human").await;
    let alert = sent_to(&e, STAFF, "the template alert").await;
    assert_eq!(
        alert.body,
        json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": format!("+{STAFF}"),
            "type": "template",
            "template": {"name": "staff_alert", "language": {"code": "en"},
                "components": [{"type": "body", "parameters": [
                    {"type": "text", "text": "+254711000001"},
                    {"type": "text", "text": "the customer asked for a person"}]}]},
            "biz_opaque_callback_data": "escalation:wamid.w.1#0"
        })
    );
    // Without a template nothing free-form goes: the row says why, and the
    // dead letter is there to replay once the staff member writes.
    ask(
        &stack,
        &without,
        "254711000002",
        "wamid.w.2",
        "I want a human",
    )
    .await;
    let (state, error) = outbound(&e, "escalation:wamid.w.2").await;
    assert_eq!(state, "failed");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("24-hour window") && error.contains("escalation"),
        "{error}"
    );
    assert_eq!(
        e.graph
            .received()
            .iter()
            .filter(|r| r.to() == STAFF)
            .count(),
        1
    );

    // Meta says the window is closed though the platform thought it open
    // (131047): the template goes instead of the text.
    wrote(&e.db.pool, with.id, STAFF, 30).await;
    e.graph.script_to(
        STAFF,
        [Behaviour::Error {
            status: 400,
            code: 131047,
        }],
    );
    ask(&stack, &with, "254711000003", "wamid.w.3", "I want a human").await;
    let second = eventually(
        Duration::from_secs(15),
        "the template after 131047",
        || async {
            let to_staff: Vec<Received> = e
                .graph
                .received()
                .into_iter()
                .filter(|r| r.to() == STAFF)
                .collect();
            (to_staff.len() == 2).then(|| to_staff[1].clone())
        },
    )
    .await;
    assert_eq!(second.body["type"], "template");
    assert_eq!(
        second.body["template"]["components"][0]["parameters"][0]["text"],
        "+254711000003"
    );
    assert_eq!(outbound(&e, "escalation:wamid.w.3").await.0, "sent");

    // An agent's follow-up: text is refused outside the window, a template
    // goes, a wrong one is named.
    let customer = "254711000001";
    let admin = api_token(&e.db.pool, "admin", Role::TenantAdmin, Some(&with.phone)).await;
    let api = ApiClient::new(&stack);
    sqlx::query("UPDATE alphadome.conversation_sessions SET last_inbound_at = now() - interval '2 days' WHERE customer = $1")
        .bind(customer)
        .execute(&e.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE alphadome.bot_message_logs SET created_at = now() - interval '2 days' WHERE user_phone = $1")
        .bind(customer)
        .execute(&e.db.pool)
        .await
        .unwrap();
    let path = format!("/tenants/{}/conversations/{customer}/messages", with.id);
    let post = |body: Value| api.call(Method::POST, &path, &admin, Some(body));
    let (s, p) = post(json!({"text": "Are you still there?"})).await;
    assert_eq!(s, 409, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("template"), "{p}");
    let (s, p) =
        post(json!({"template": {"name": "follow_up", "parameters": ["Amina", "extra"]}})).await;
    assert_eq!(
        (s, p["field"].as_str()),
        (422, Some("template.parameters")),
        "{p}"
    );
    let (s, p) = post(json!({"template": {"name": "no_such_template", "parameters": []}})).await;
    assert_eq!(
        (s, p["field"].as_str()),
        (422, Some("template.name")),
        "{p}"
    );
    let (s, p) = post(json!({"template": {"name": "follow_up", "parameters": ["Amina"]}})).await;
    assert_eq!(s, 202, "{p}");
    let follow = eventually(Duration::from_secs(15), "the follow-up", || async {
        e.graph
            .received()
            .into_iter()
            .find(|r| r.to() == customer && r.body["type"] == "template")
    })
    .await;
    assert_eq!(
        follow.body["template"],
        json!({"name": "follow_up", "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Amina"}]}]})
    );

    // Meta refuses a template (not approved in that language: 132001):
    // the row names the template, never as a silent dead letter.
    let (s, _) = api
        .call(
            Method::PUT,
            &format!("/tenants/{}/whatsapp-templates", with.id),
            &admin,
            Some(json!([{"name": "follow_up", "language": "sw", "parameters": ["customer_name"], "use_for": ["agent"]}])),
        )
        .await;
    assert_eq!(s, 200);
    let (s, p) = post(json!({"template": {"name": "follow_up", "parameters": ["Amina"]}})).await;
    assert_eq!(s, 202, "{p}");
    let id = p["outbound_id"].as_str().unwrap().to_owned();
    let (state, error) = outbound(&e, &id).await;
    assert_eq!(state, "failed");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("follow_up (sw)") && error.contains("132001"),
        "{error}"
    );
    // The templates API checks what it stores, naming the field.
    let (s, p) = api
        .call(
            Method::PUT,
            &format!("/tenants/{}/whatsapp-templates", with.id),
            &admin,
            Some(json!([{"name": "Bad Name", "language": "en"}])),
        )
        .await;
    assert_eq!((s, p["field"].as_str()), (422, Some("[0].name")), "{p}");
    let (_, list) = api
        .call(
            Method::GET,
            &format!("/tenants/{}/whatsapp-templates", with.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(list[0]["language"], "sw");
    // Another tenant's templates are not this admin's to see.
    let (s, _) = api
        .call(
            Method::GET,
            &format!("/tenants/{}/whatsapp-templates", without.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(s, 404);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn quick_messages_are_answered_once_as_one_question() {
    let e = TestEnv::new().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            control: "debounce_ms: 700",
            ..Default::default()
        },
    )
    .await;
    let stack = e.stack().await;
    let user = "254711000020";
    // Three messages in quick succession: one answer, to the last, for
    // the three read as one question.
    for (w, text) in [
        ("wamid.d.1", "hello"),
        ("wamid.d.2", "what are your"),
        ("wamid.d.3", "opening hours?"),
    ] {
        ask(&stack, &t, user, w, text).await;
    }
    assert_eq!(reply_to(&e.graph, "wamid.d.3").await, ANSWER);
    // Every message is logged, in order; the first two as answered by the
    // third.
    let rows: Vec<(String, String)> =
        eventually(Duration::from_secs(15), "three logged", || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT whatsapp_message_id, metadata->>'reason' FROM alphadome.bot_message_logs \
             WHERE bot_tenant_id = $1 AND direction = 'incoming' ORDER BY created_at",
            )
            .bind(t.id)
            .fetch_all(&e.db.pool)
            .await
            .unwrap();
            (rows.len() == 3).then_some(rows)
        })
        .await;
    assert_eq!(
        rows,
        [
            ("wamid.d.1".to_owned(), "debounced".to_owned()),
            ("wamid.d.2".to_owned(), "debounced".to_owned()),
            ("wamid.d.3".to_owned(), "faq_match".to_owned()),
        ]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        e.graph.received().iter().filter(|r| r.to() == user).count(),
        1,
        "the burst was answered more than once"
    );
    // After a pause, the next message is a question of its own.
    ask(&stack, &t, user, "wamid.d.4", "opening hours").await;
    assert_eq!(reply_to(&e.graph, "wamid.d.4").await, ANSWER);

    // The settings say what is wrong with a bad value.
    let admin = api_token(&e.db.pool, "admin", Role::TenantAdmin, Some(&t.phone)).await;
    let api = ApiClient::new(&stack);
    let settings = format!("/tenants/{}/settings", t.id);
    for (body, field) in [
        (json!({"debounce_ms": 20000}), "debounce_ms"),
        (
            json!({"business_hours": {"timezone": "Mars/Olympus"}}),
            "business_hours.timezone",
        ),
        (
            json!({"business_hours": {"timezone": "Africa/Nairobi", "weekly": {"mon": [["18:00", "08:00"]]}}}),
            "business_hours.weekly.mon[0]",
        ),
        (json!({"opt_out_keywords": ["  "]}), "opt_out_keywords[0]"),
    ] {
        let (s, p) = api.call(Method::PATCH, &settings, &admin, Some(body)).await;
        assert_eq!((s, p["field"].as_str()), (422, Some(field)), "{p}");
    }
    let (s, p) = api
        .call(
            Method::PATCH,
            &settings,
            &admin,
            Some(
                json!({"debounce_ms": 0, "greeting_message": "Hi!", "opt_out_keywords": ["Acha"]}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (
            &p["debounce_ms"],
            &p["greeting_message"],
            &p["opt_out_keywords"]
        ),
        (&json!(0), &json!("Hi!"), &json!(["acha"]))
    );
    stack.stop().await.unwrap();
}

/// A customer's tap on a list row or a reply button (`kind`: `list_reply`
/// or `button_reply`), as Meta sends it.
fn tap(pnid: &str, from: &str, wamid: &str, kind: &str, id: &str, title: &str) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "0", "phone_number_id": pnid},
            "contacts": [{"profile": {"name": "Test User"}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid,
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "type": "interactive",
                "interactive": {"type": kind, kind: {"id": id, "title": title}}}]
        }}]}]
    })
    .to_string()
}

/// The reply to `wamid`, once the stand-in has it.
async fn reply_body(e: &TestEnv, wamid: &str) -> Value {
    eventually(Duration::from_secs(15), "the reply", || async {
        e.graph
            .received()
            .into_iter()
            .find(|r| r.in_reply_to() == wamid)
            .map(|r| r.body)
    })
    .await
}

#[tokio::test]
async fn the_menu_lists_topics_and_answers_carry_buttons() {
    let e = TestEnv::new().await;
    let faq = "  - data_type: faq\n    question: Do you deliver to Mombasa by courier?\n    answer: Yes, in 2 days.\n    category: Delivery\n\
               \x20 - data_type: faq\n    question: Do you deliver to Kisumu by courier?\n    answer: Yes, in 1 to 3 days.\n    category: Delivery\n\
               \x20 - data_type: faq\n    question: Are you open on public holidays?\n    answer: From 10 to 4.\n    category: Hours\n";
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            faq: &[],
            training_extra: faq,
            control: &format!("escalation_phone: '{STAFF}'"),
            ..Default::default()
        },
    )
    .await;
    wrote(&e.db.pool, t.id, STAFF, 30).await;
    let stack = e.stack().await;
    let user = "254711000030";
    let send = |body: String| {
        let url = stack.webhook_url();
        async move {
            assert_eq!(
                post_signed(&url, PLATFORM_APP_SECRET, &body).await.status(),
                200
            );
        }
    };

    // "menu": the topics, as a list Meta takes (the stand-in checks its
    // limits).
    ask(&stack, &t, user, "wamid.m.1", "menu").await;
    let menu = reply_body(&e, "wamid.m.1").await;
    assert_eq!(menu["type"], "interactive");
    assert_eq!(menu["context"]["message_id"], "wamid.m.1");
    assert_eq!(
        menu["interactive"],
        json!({"type": "list",
            "body": {"text": "Here's what I can help with. Pick a topic:"},
            "action": {"button": "Choose", "sections": [{"title": "Topics", "rows": [
                {"id": "cat:Delivery", "title": "Delivery", "description": "2 questions"},
                {"id": "cat:Hours", "title": "Hours", "description": "1 question"}]}]}})
    );
    // A topic: its questions.
    send(tap(
        &t.phone_number_id,
        user,
        "wamid.m.2",
        "list_reply",
        "cat:Delivery",
        "Delivery",
    ))
    .await;
    let topic = reply_body(&e, "wamid.m.2").await;
    let rows = topic["interactive"]["action"]["sections"][0]["rows"].clone();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_eq!(rows[0]["title"], "Do you deliver to Kisum…");
    assert_eq!(
        rows[0]["description"],
        "Do you deliver to Kisumu by courier?"
    );
    // A question: its answer, with buttons back to the menu and to a person.
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    send(tap(
        &t.phone_number_id,
        user,
        "wamid.m.3",
        "list_reply",
        &id,
        "Do you deliver to Kisum…",
    ))
    .await;
    let answer = reply_body(&e, "wamid.m.3").await;
    assert_eq!(
        answer["interactive"],
        json!({"type": "button", "body": {"text": "Yes, in 1 to 3 days."},
            "action": {"buttons": [
                {"type": "reply", "reply": {"id": "menu", "title": "Menu"}},
                {"type": "reply", "reply": {"id": "person", "title": "Talk to a person"}}]}})
    );
    // An unclear question near both delivery entries: the choice of them.
    ask(&stack, &t, user, "wamid.m.4", "courier").await;
    let choice = reply_body(&e, "wamid.m.4").await;
    assert_eq!(choice["interactive"]["type"], "list");
    assert_eq!(
        choice["interactive"]["body"]["text"],
        alphadome_responder::decide::CLARIFY_BODY
    );
    // The log keeps the choices as text.
    let logged: String = eventually(Duration::from_secs(10), "the list logged", || async {
        sqlx::query_scalar(
            "SELECT message_text FROM alphadome.bot_message_logs \
             WHERE direction = 'outgoing' AND metadata->>'in_reply_to' = 'wamid.m.4'",
        )
        .fetch_optional(&e.db.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(
        logged.contains("• Do you deliver to Mombasa by courier?"),
        "{logged}"
    );
    // The person button hands the conversation over.
    send(tap(
        &t.phone_number_id,
        user,
        "wamid.m.5",
        "button_reply",
        "person",
        "Talk to a person",
    ))
    .await;
    assert_eq!(
        reply_to(&e.graph, "wamid.m.5").await,
        alphadome_responder::escalation::HANDOFF_REPLY
    );
    let alert = sent_to(&e, STAFF, "the staff alert").await;
    assert_eq!(alert.body["type"], "text");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_keep_order_and_answer_a_redelivery_as_the_first_time() {
    let db = TestDb::migrated().await;
    let (_, ring) = keyring();
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let responder = alphadome_core::db::connect_as(
        &secrecy::SecretString::from(db.url.clone()),
        alphadome_core::db::ServiceRole::Responder,
        2,
    )
    .await
    .unwrap();
    // (whole milliseconds: PostgreSQL keeps microseconds)
    let base = chrono::DateTime::from_timestamp_millis(
        (chrono::Utc::now() - chrono::Duration::minutes(10)).timestamp_millis(),
    )
    .unwrap();
    let at = |ms: i64| base + chrono::Duration::milliseconds(ms);
    let touch = |w: &str, text: &str, ms: i64| {
        let responder = responder.clone();
        let req = (
            t.id,
            "254711000040".to_owned(),
            w.to_owned(),
            at(ms),
            text.to_owned(),
            1000,
        );
        async move {
            let mut conn = responder.acquire().await.unwrap();
            conversation::touch_batch(&mut conn, vec![req])
                .await
                .unwrap()
                .remove(0)
                .1
        }
    };
    // The first message of a customer starts a conversation.
    let first = touch("w1", "hi", 0).await;
    assert_eq!(first.previous_inbound_at, None);
    // The third is recorded before the second (two responders at once).
    let third = touch("w3", "opening hours?", 900).await;
    assert_eq!(third.previous_inbound_at, Some(at(0)));
    let second = touch("w2", "what are your", 400).await;
    assert_eq!(
        second.previous_inbound_at,
        Some(at(900)),
        "a later one exists"
    );
    let burst = conversation::burst(&responder, t.id, "254711000040")
        .await
        .unwrap();
    let order: Vec<&str> = burst.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(order, ["w1", "w2", "w3"]);
    assert_eq!(
        conversation::debounced(&burst, "w3", "opening hours?"),
        conversation::Debounced::Answer {
            texts: vec!["hi".into(), "what are your".into(), "opening hours?".into()]
        }
    );
    // A redelivery answers as the first delivery did and changes nothing.
    assert_eq!(touch("w3", "opening hours?", 900).await, third);
    assert_eq!(
        conversation::burst(&responder, t.id, "254711000040")
            .await
            .unwrap(),
        burst
    );
    // After a pause longer than the debounce time, a new burst.
    touch("w4", "thanks", 5_000).await;
    let burst = conversation::burst(&responder, t.id, "254711000040")
        .await
        .unwrap();
    assert_eq!(burst.len(), 1);
    let w = conversation::window(&responder, t.id, "254711000040")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.last_inbound_at, at(5_000));
}
