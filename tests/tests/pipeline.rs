//! The message pipeline end to end, against the real Postgres and NATS:
//! ingress -> JetStream -> responder -> sender -> Graph API stand-in, and
//! logger -> bot_message_logs / public.conversations.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::atomic::Ordering;
use std::time::Duration;

use alphadome_cli::stack::{RunOptions, Service};
use alphadome_testkit::graph::Behaviour;
use alphadome_tests::*;

const USER: &str = "254711222333";

async fn env() -> TestEnv {
    TestEnv::new().await
}

#[tokio::test]
async fn faq_reply_end_to_end_with_the_tenants_token_and_number() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let body = text_webhook(
        &t.phone_number_id,
        USER,
        "wamid.e2e.1",
        "when are you OPEN? opening hours pls",
    );
    let resp = post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    assert_eq!(resp.status(), 200);
    let got = e.graph.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(
        r.phone_number_id, t.phone_number_id,
        "sent from the tenant's number"
    );
    assert_eq!(r.token, t.token, "with the tenant's token");
    assert_eq!(r.to(), USER);
    assert_eq!(r.text(), "We are open 9 to 5.");
    assert_eq!(
        r.in_reply_to(),
        "wamid.e2e.1",
        "a contextual reply to the inbound message"
    );
    assert_eq!(r.body["messaging_product"], "whatsapp");

    // Both directions logged to the tenant, the outgoing row pointing at the inbound wamid.
    let (inc, out) = eventually(Duration::from_secs(10), "both log rows", || async {
        let c = log_counts(&e.db.pool, t.id).await;
        (c == (1, 1)).then_some(c)
    })
    .await;
    assert_eq!((inc, out), (1, 1));
    let (training, meta, wamid): (Option<uuid::Uuid>, serde_json::Value, String) = sqlx::query_as(
        "SELECT training_data_id, metadata, whatsapp_message_id FROM alphadome.bot_message_logs WHERE direction = 'outgoing'",
    )
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert!(training.is_some(), "the FAQ row used is recorded");
    assert_eq!(meta["in_reply_to"], "wamid.e2e.1");
    assert_eq!(wamid, r.wamid, "the outgoing row holds Meta's wamid");
    let user_phone: String = sqlx::query_scalar(
        "SELECT user_phone FROM alphadome.bot_message_logs WHERE direction = 'incoming'",
    )
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(user_phone, USER);
    // Mirrored to the existing system's conversations with the tenant's brand.
    let mirrored: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.direction, c.brand_id = t.brand_id, c.user_id = u.id FROM public.conversations c \
         JOIN alphadome.bot_tenants t ON t.id = $1 JOIN public.users u ON u.phone = $2 ORDER BY c.direction",
    )
    .bind(t.id)
    .bind(USER)
    .fetch_all(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(
        mirrored,
        vec![
            ("incoming".into(), true, true),
            ("outgoing".into(), true, true)
        ]
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn customers_are_resolved_to_the_live_systems_users_once_and_new_ones_registered_once() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    // A customer the live system registered (twice, as it can: no unique
    // phone); the older row is the one the existing system uses.
    const KNOWN: &str = "254722000001";
    const NEW: &str = "254722000002";
    let known: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO public.users (phone, full_name, created_at) VALUES ($1, 'Wanjiru', now() - interval '1 day') RETURNING id",
    )
    .bind(KNOWN)
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO public.users (phone, full_name) VALUES ($1, 'Unknown User')")
        .bind(KNOWN)
        .execute(&e.db.pool)
        .await
        .unwrap();
    let stack = e.stack().await;
    for (i, from) in [KNOWN, NEW, KNOWN, NEW].into_iter().enumerate() {
        let body = text_webhook(
            &t.phone_number_id,
            from,
            &format!("wamid.users.{i}"),
            "opening hours",
        );
        let resp = post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
        assert_eq!(resp.status(), 200);
        // One at a time, so the later messages find the earlier mapping.
        eventually(Duration::from_secs(10), "both log rows", || async {
            let c = log_counts(&e.db.pool, t.id).await;
            (c == (i as i64 + 1, i as i64 + 1)).then_some(())
        })
        .await;
    }
    let users_of = |phone: &'static str| {
        let pool = e.db.pool.clone();
        async move {
            let logs: Vec<Option<uuid::Uuid>> = sqlx::query_scalar(
                "SELECT DISTINCT user_id FROM alphadome.bot_message_logs WHERE user_phone = $1",
            )
            .bind(phone)
            .fetch_all(&pool)
            .await
            .unwrap();
            let registered: i64 =
                sqlx::query_scalar("SELECT count(*) FROM public.users WHERE phone = $1")
                    .bind(phone)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let mapped: Vec<uuid::Uuid> =
                sqlx::query_scalar("SELECT user_id FROM alphadome.customer_users WHERE phone = $1")
                    .bind(phone)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            (logs, registered, mapped)
        }
    };
    let (logs, registered, mapped) = users_of(KNOWN).await;
    assert_eq!(
        logs,
        vec![Some(known)],
        "logged under the live system's user"
    );
    assert_eq!(registered, 2, "no third user for a known customer");
    assert_eq!(mapped, vec![known]);
    let (logs, registered, mapped) = users_of(NEW).await;
    assert_eq!(registered, 1, "a new customer is registered once");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0], mapped.first().copied());
    let mirrored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.conversations WHERE user_id = $1")
            .bind(known)
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    assert_eq!(mirrored, 4, "two messages and two replies");
    stack.stop().await.unwrap();
    // A user the live system deletes takes its mapping with it.
    let gone: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO public.users (phone) VALUES ('254722000003') RETURNING id")
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO alphadome.customer_users (phone, user_id) VALUES ('254722000003', $1)",
    )
    .bind(gone)
    .execute(&e.db.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM public.users WHERE id = $1")
        .bind(gone)
        .execute(&e.db.pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.customer_users WHERE phone = '254722000003'",
    )
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn bad_or_missing_signatures_are_refused_and_nothing_is_published() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let body = text_webhook(&t.phone_number_id, USER, "wamid.sig.1", "opening hours");
    let wrong = post_signed(&stack.webhook_url(), "not-the-secret", &body).await;
    assert_eq!(wrong.status(), 401);
    let missing = reqwest::Client::new()
        .post(stack.webhook_url())
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    // A valid signature over other bytes (a replayed signature, altered body).
    let sig = alphadome_core::meta::sign(PLATFORM_APP_SECRET.as_bytes(), body.as_bytes());
    let altered = body.replace("opening hours", "opening hourz");
    let replayed = reqwest::Client::new()
        .post(stack.webhook_url())
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sig)
        .body(altered)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(e.graph.received().is_empty());
    assert_eq!(log_counts(&e.db.pool, t.id).await, (0, 0));
    // The tenant's own app secret, when it has one, is the one that applies:
    // a body signed with the platform's secret is another app's, accepted
    // (Meta signed it) but nothing of it reaches this tenant.
    let own = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000002",
            phone_number_id: "200",
            token: "EAAG-2",
            app_secret: Some("own-secret"),
            ..Default::default()
        },
    )
    .await;
    let body = text_webhook(&own.phone_number_id, USER, "wamid.sig.2", "opening hours");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        e.graph.received().is_empty(),
        "another app's body reached the tenant"
    );
    assert_eq!(
        post_signed(&stack.webhook_url(), "own-secret", &body)
            .await
            .status(),
        200
    );
    let got = e.graph.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].in_reply_to(), "wamid.sig.2");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn escaped_unicode_bodies_verify_on_the_raw_bytes() {
    let e = env().await;
    let t = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            faq: &[(
                "Habari za asubuhi, bei ya gitaa?",
                "Gitaa ni KES 15,000 — karibu!",
            )],
            ..Default::default()
        },
    )
    .await;
    let stack = e.stack().await;
    // Meta signs the escaped form; the bytes must be hashed as received.
    let body = text_webhook(&t.phone_number_id, USER, "wamid.uni.1", "PLACEHOLDER").replace(
        "PLACEHOLDER",
        "bei ya gitaa? \\u00e4\\u00f6\\u00e5 \\ud83c\\udfb8",
    );
    let resp = post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    assert_eq!(resp.status(), 200);
    let got = e.graph.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].text(), "Gitaa ni KES 15,000 — karibu!");
    let text: String = eventually(Duration::from_secs(10), "incoming row", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT message_text FROM alphadome.bot_message_logs WHERE direction = 'incoming'",
        )
        .fetch_optional(&e.db.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(text, "bei ya gitaa? äöå 🎸");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_webhook_three_times_and_again_after_the_window_and_a_restart_gets_one_reply() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let mut cfg = e.config();
    cfg.duplicate_window = Duration::from_secs(1);
    let stack = RunningStack::start(cfg.clone(), &Service::ALL).await;
    let body = text_webhook(&t.phone_number_id, USER, "wamid.dup.1", "opening hours");
    for _ in 0..3 {
        assert_eq!(
            post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    let got = e.graph.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    stack.stop().await.unwrap();
    // Past JetStream's duplicate window, after a restart: Meta retries once more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stack = RunningStack::start(cfg, &Service::ALL).await;
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
            .await
            .status(),
        200
    );
    // The redelivered message is processed (its log event arrives again) ...
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ... but no second reply is sent and no row is logged twice.
    assert_eq!(e.graph.received().len(), 1, "a second reply was sent");
    assert_eq!(log_counts(&e.db.pool, t.id).await, (1, 1));
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM alphadome.outbound_messages")
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn two_tenants_asking_each_others_questions_get_only_their_own_answers() {
    let e = env().await;
    let a = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            name: "A Guitars",
            phone: "254700000010",
            phone_number_id: "1010",
            token: "EAAG-token-A",
            faq: &[("Do you sell guitars?", "A: yes, guitars!")],
            control: "fallback_reply: A does not know.",
            ..Default::default()
        },
    )
    .await;
    let b = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            name: "B Bakery",
            phone: "254700000020",
            phone_number_id: "2020",
            token: "EAAG-token-B",
            faq: &[("Do you bake bread?", "B: fresh bread daily.")],
            control: "fallback_reply: B does not know.",
            ..Default::default()
        },
    )
    .await;
    let stack = e.stack().await;
    for (t, wamid, text) in [
        (&a, "wamid.x.1", "do you bake bread"),
        (&b, "wamid.x.2", "do you sell guitars"),
        (&a, "wamid.x.3", "sell guitars?"),
        (&b, "wamid.x.4", "bake bread?"),
    ] {
        let body = text_webhook(&t.phone_number_id, USER, wamid, text);
        assert_eq!(
            post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    let got = e.graph.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4);
    let by = |w: &str| got.iter().find(|r| r.in_reply_to() == w).unwrap().clone();
    assert_eq!(by("wamid.x.1").text(), "A does not know.");
    assert_eq!(by("wamid.x.2").text(), "B does not know.");
    assert_eq!(by("wamid.x.3").text(), "A: yes, guitars!");
    assert_eq!(by("wamid.x.4").text(), "B: fresh bread daily.");
    for (w, t) in [
        ("wamid.x.1", &a),
        ("wamid.x.2", &b),
        ("wamid.x.3", &a),
        ("wamid.x.4", &b),
    ] {
        let r = by(w);
        assert_eq!(
            (r.phone_number_id.as_str(), r.token.as_str()),
            (t.phone_number_id.as_str(), t.token.as_str())
        );
    }
    eventually(Duration::from_secs(10), "logs", || async {
        (log_counts(&e.db.pool, a.id).await == (2, 2)
            && log_counts(&e.db.pool, b.id).await == (2, 2))
            .then_some(())
    })
    .await;
    // Each tenant's log holds only its own conversation.
    let crossed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alphadome.bot_message_logs l WHERE (l.bot_tenant_id = $1 AND l.message_text LIKE 'B%') \
         OR (l.bot_tenant_id = $2 AND l.message_text LIKE 'A%')",
    )
    .bind(a.id)
    .bind(b.id)
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(crossed, 0);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn statuses_update_the_outgoing_row_without_regressing() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let body = text_webhook(&t.phone_number_id, USER, "wamid.st.1", "opening hours");
    post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    let sent = e.graph.wait_for(1, Duration::from_secs(10)).await[0]
        .wamid
        .clone();
    eventually(Duration::from_secs(10), "outgoing row", || async {
        (log_counts(&e.db.pool, t.id).await.1 == 1).then_some(())
    })
    .await;
    // Out of order: read arrives before delivered; sent arrives last.
    for (status, ts) in [
        ("read", 300),
        ("delivered", 200),
        ("sent", 100),
        ("read", 300),
    ] {
        let s = status_webhook(&t.phone_number_id, &sent, status, 1_750_000_000 + ts, None);
        assert_eq!(
            post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &s)
                .await
                .status(),
            200
        );
    }
    let st: String = eventually(Duration::from_secs(10), "read status", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT delivery_status FROM alphadome.bot_message_logs WHERE whatsapp_message_id = $1",
        )
        .bind(&sent)
        .fetch_one(&e.db.pool)
        .await
        .unwrap()
        .filter(|s| s == "read")
    })
    .await;
    assert_eq!(st, "read");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (st, at): (String, i64) = sqlx::query_as(
        "SELECT delivery_status, extract(epoch FROM delivery_status_at)::bigint FROM alphadome.bot_message_logs WHERE whatsapp_message_id = $1",
    )
    .bind(&sent)
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (st.as_str(), at),
        ("read", 1_750_000_300),
        "a later lower status moved the row back"
    );

    // A failed status records Meta's error.
    let body = text_webhook(&t.phone_number_id, USER, "wamid.st.2", "opening hours");
    post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    let second = e.graph.wait_for(2, Duration::from_secs(10)).await[1]
        .wamid
        .clone();
    eventually(Duration::from_secs(10), "second outgoing row", || async {
        (log_counts(&e.db.pool, t.id).await.1 == 2).then_some(())
    })
    .await;
    let s = status_webhook(
        &t.phone_number_id,
        &second,
        "failed",
        1_750_000_500,
        Some(131049),
    );
    post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &s).await;
    let err: String = eventually(Duration::from_secs(10), "failed status", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT error_message FROM alphadome.bot_message_logs WHERE whatsapp_message_id = $1 AND delivery_status = 'failed'",
        )
        .bind(&second)
        .fetch_optional(&e.db.pool)
        .await
        .unwrap()
        .flatten()
    })
    .await;
    assert!(err.contains("131049"), "{err}");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn inactive_tenants_and_disabled_bots_log_but_do_not_answer() {
    let e = env().await;
    let inactive = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            active: false,
            ..Default::default()
        },
    )
    .await;
    let disabled = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000003",
            phone_number_id: "300",
            token: "EAAG-3",
            control: "is_bot_enabled: false",
            ..Default::default()
        },
    )
    .await;
    let no_auto = tenant(
        &e.db.pool,
        &e.ring,
        TenantSpec {
            phone: "254700000004",
            phone_number_id: "400",
            token: "EAAG-4",
            control: "enable_auto_reply: false",
            ..Default::default()
        },
    )
    .await;
    let stack = e.stack().await;
    for (t, w) in [
        (&inactive, "wamid.in.1"),
        (&disabled, "wamid.in.2"),
        (&no_auto, "wamid.in.3"),
    ] {
        let body = text_webhook(&t.phone_number_id, USER, w, "opening hours");
        assert_eq!(
            post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    for t in [&inactive, &disabled, &no_auto] {
        eventually(Duration::from_secs(10), "incoming row", || async {
            (log_counts(&e.db.pool, t.id).await == (1, 0)).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        e.graph.received().is_empty(),
        "an inactive or disabled tenant answered"
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT metadata->>'reason' FROM alphadome.bot_message_logs ORDER BY 1")
            .fetch_all(&e.db.pool)
            .await
            .unwrap();
    assert_eq!(
        reasons,
        ["auto_reply_disabled", "bot_disabled", "tenant_inactive"]
    );
    // Unknown phone number id: 200, counted, nothing published.
    let body = text_webhook("999999", USER, "wamid.unknown", "hello");
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
            .await
            .status(),
        200
    );
    let metrics = reqwest::get(format!("http://{}/metrics", stack.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("alphadome_ingress_unknown_tenant_total 1"),
        "{metrics}"
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn deactivating_with_the_cli_reaches_running_instances_within_seconds() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let mut cfg = e.config();
    cfg.tenant_refresh = Duration::from_secs(60); // only the announcement can make it fast
    let stack = RunningStack::start(cfg, &Service::ALL).await;
    let body = text_webhook(&t.phone_number_id, USER, "wamid.live.1", "opening hours");
    post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    assert_eq!(e.graph.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let bus = e.nats.bus().await;
    alphadome_admin::set_active(&e.db.pool, Some(&bus), &t.phone, "254", false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = text_webhook(&t.phone_number_id, USER, "wamid.live.2", "opening hours");
    post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    eventually(
        Duration::from_secs(10),
        "the second incoming row",
        || async { (log_counts(&e.db.pool, t.id).await.0 == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        e.graph.received().len(),
        1,
        "the deactivated tenant still answered"
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn graph_throughput_error_then_success_sends_one_reply() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    e.graph.script([
        Behaviour::Error {
            status: 400,
            code: 130429,
        },
        Behaviour::Error {
            status: 500,
            code: 131000,
        },
    ]);
    let stack = e.stack().await;
    let body = text_webhook(&t.phone_number_id, USER, "wamid.rl.1", "opening hours");
    post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    let got = e.graph.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(e.graph.refused.load(Ordering::Relaxed), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.graph.received().len(), 1);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM alphadome.outbound_messages")
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("sent", 3));
    stack.stop().await.unwrap();
}

/// Meta accepted the send but its answer never came (the request timed
/// out). The part's status webhook, echoing the callback data the sender
/// set, shows it went out: the sender's next try sends nothing and logs the
/// reply with Meta's wamid. Without a status, the next try sends again
/// (a lost reply is worse than a repeated one).
#[tokio::test]
async fn a_send_that_timed_out_is_reconciled_from_its_status_webhook_not_repeated() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let mut config = e.config();
    config.send_reconcile_wait = Duration::from_secs(4);
    // Accepted, answered after the sender's 2 s time-out: twice.
    e.graph.script([
        Behaviour::AcceptLate(Duration::from_secs(3)),
        Behaviour::AcceptLate(Duration::from_secs(3)),
    ]);
    let stack = RunningStack::start(config, &Service::ALL).await;
    let webhook = stack.webhook_url();

    // 1. Meta reports the send: reconciled, not repeated.
    post_signed(
        &webhook,
        PLATFORM_APP_SECRET,
        &text_webhook(&t.phone_number_id, USER, "wamid.late.1", "opening hours"),
    )
    .await;
    let got = e.graph.wait_for(1, Duration::from_secs(10)).await;
    let callback = got[0].body["biz_opaque_callback_data"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        callback, "reply:wamid.late.1#0",
        "each part names its reply and its place"
    );
    let status = with_callback(
        &status_webhook(
            &t.phone_number_id,
            &got[0].wamid,
            "sent",
            1_751_142_888,
            None,
        ),
        &callback,
    );
    let resp = post_signed(&webhook, PLATFORM_APP_SECRET, &status).await;
    assert_eq!(resp.status(), 200);
    let (state, wamid): (String, Option<String>) = eventually(
        Duration::from_secs(20),
        "the reply recorded as sent",
        || async {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT state, whatsapp_message_id FROM alphadome.outbound_messages WHERE outbound_id = 'reply:wamid.late.1'",
            )
            .fetch_optional(&e.db.pool)
            .await
            .ok()
            .flatten()
            .filter(|(state, _)| state == "sent")
        },
    )
    .await;
    assert_eq!(
        (state.as_str(), wamid.as_deref()),
        ("sent", Some(got[0].wamid.as_str()))
    );
    let logged: String = eventually(Duration::from_secs(10), "the outgoing log row", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT whatsapp_message_id FROM alphadome.bot_message_logs WHERE dedup_key = 'out:wamid.late.1'",
        )
        .fetch_optional(&e.db.pool)
        .await
        .ok()
        .flatten()
    })
    .await;
    assert_eq!(logged, got[0].wamid);
    // The status reached the row once the row existed.
    let delivery: Option<String> = eventually(Duration::from_secs(20), "the status on the row", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT delivery_status FROM alphadome.bot_message_logs WHERE dedup_key = 'out:wamid.late.1'",
        )
        .fetch_one(&e.db.pool)
        .await
        .ok()
        .flatten()
        .map(Some)
    })
    .await;
    assert_eq!(delivery.as_deref(), Some("sent"));
    assert_eq!(e.graph.received().len(), 1, "the reply went out once");

    // 2. No status comes: after the wait the reply is sent again, once.
    post_signed(
        &webhook,
        PLATFORM_APP_SECRET,
        &text_webhook(&t.phone_number_id, USER, "wamid.late.2", "opening hours"),
    )
    .await;
    let got = e.graph.wait_for(3, Duration::from_secs(20)).await;
    let to_second = |r: &&alphadome_testkit::graph::Received| r.in_reply_to() == "wamid.late.2";
    assert_eq!(got.iter().filter(to_second).count(), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.graph.received().len(), 3, "sent again once, not more");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn a_permanent_error_is_dead_lettered_and_a_190_holds_the_tenant() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    e.graph.script([
        Behaviour::Error {
            status: 400,
            code: 131026,
        },
        Behaviour::Error {
            status: 401,
            code: 190,
        },
    ]);
    let stack = e.stack().await;
    post_signed(
        &stack.webhook_url(),
        PLATFORM_APP_SECRET,
        &text_webhook(&t.phone_number_id, USER, "wamid.p.1", "opening hours"),
    )
    .await;
    let bus = e.nats.bus().await;
    let dlq = bus.stream_name(alphadome_core::bus::StreamKind::DeadLetter);
    eventually(Duration::from_secs(10), "a dead letter", || async {
        let mut s = bus.js.get_stream(&dlq).await.ok()?;
        (s.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await;
    let err: String = eventually(
        Duration::from_secs(10),
        "the failed outgoing row",
        || async {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT error_message FROM alphadome.bot_message_logs WHERE direction = 'outgoing'",
            )
            .fetch_optional(&e.db.pool)
            .await
            .unwrap()
            .flatten()
        },
    )
    .await;
    assert!(err.contains("131026"), "{err}");
    // 190: the tenant's token is marked invalid and its sends are held.
    post_signed(
        &stack.webhook_url(),
        PLATFORM_APP_SECRET,
        &text_webhook(&t.phone_number_id, USER, "wamid.p.2", "opening hours"),
    )
    .await;
    eventually(Duration::from_secs(10), "token marked invalid", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT whatsapp_token_invalid_at IS NOT NULL FROM alphadome.bot_tenants",
        )
        .fetch_one(&e.db.pool)
        .await
        .unwrap()
        .then_some(())
    })
    .await;
    let list = alphadome_admin::list(&e.db.pool, 90).await.unwrap();
    assert!(list[0]
        .degraded
        .as_deref()
        .unwrap_or_default()
        .contains("190"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(e.graph.received().is_empty(), "sent despite a held tenant");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn two_responder_instances_share_the_load_and_answer_each_message_once() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let cfg = e.config();
    let edge = RunningStack::start(
        cfg.clone(),
        &[Service::Ingress, Service::Sender, Service::Logger],
    )
    .await;
    let mut responders = Vec::new();
    let shutdown = alphadome_core::CancellationToken::new();
    for _ in 0..2 {
        let bus = e.nats.bus().await;
        let r =
            alphadome_responder::Responder::start(&cfg, e.db.pool.clone(), bus, shutdown.clone())
                .await
                .unwrap();
        let settings = alphadome_core::bus::ConsumerSettings {
            concurrency: 4,
            ..Default::default()
        };
        let run = tokio::spawn(r.clone().run(settings, shutdown.clone()));
        responders.push((r, run));
    }
    let n = 60;
    for i in 0..n {
        let body = text_webhook(
            &t.phone_number_id,
            &format!("2547110{i:05}"),
            &format!("wamid.share.{i}"),
            "opening hours",
        );
        assert_eq!(
            post_signed(&edge.webhook_url(), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    let got = e.graph.wait_for(n, Duration::from_secs(20)).await;
    assert_eq!(got.len(), n);
    let mut replied: Vec<String> = got.iter().map(|r| r.in_reply_to()).collect();
    replied.sort();
    replied.dedup();
    assert_eq!(replied.len(), n, "a message was answered twice");
    let handled: Vec<u64> = responders
        .iter()
        .map(|(r, _)| r.handled.load(Ordering::Relaxed))
        .collect();
    assert!(
        handled.iter().all(|&h| h > 0),
        "one instance did no work: {handled:?}"
    );
    assert_eq!(handled.iter().sum::<u64>(), n as u64);
    shutdown.cancel();
    for (_, run) in responders {
        run.await.unwrap().unwrap();
    }
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_work() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let n = 20;
    for i in 0..n {
        let body = text_webhook(
            &t.phone_number_id,
            USER,
            &format!("wamid.gs.{i}"),
            "opening hours",
        );
        assert_eq!(
            post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    eprintln!("posted; stopping");
    stack.stop().await.unwrap();
    // Whatever was accepted is answered once, by this or the next run.
    let stack = RunningStack::start_with(e.config(), RunOptions::new(&Service::ALL)).await;
    let got = e.graph.wait_for(n, Duration::from_secs(20)).await;
    assert_eq!(got.len(), n);
    eventually(Duration::from_secs(10), "all logs", || async {
        (log_counts(&e.db.pool, t.id).await == (n as i64, n as i64)).then_some(())
    })
    .await;
    stack.stop().await.unwrap();
}

fn webhook_with(phone_number_id: &str, message: serde_json::Value) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "0", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "T"}, "wa_id": USER}], "messages": [message]}}]}]})
    .to_string()
}

#[tokio::test]
async fn buttons_and_lists_are_answered_like_text_media_politely_reactions_not_at_all() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let msgs = [
        serde_json::json!({"from": USER, "id": "wamid.k.button", "timestamp": "1714510003", "type": "interactive",
            "context": {"from": "1", "id": "wamid.biz"},
            "interactive": {"type": "button_reply", "button_reply": {"id": "hours", "title": "Opening hours"}}}),
        serde_json::json!({"from": USER, "id": "wamid.k.list", "timestamp": "1714510003", "type": "interactive",
            "interactive": {"type": "list_reply", "list_reply": {"id": "h", "title": "Opening hours", "description": "when"}}}),
        serde_json::json!({"from": USER, "id": "wamid.k.template", "timestamp": "1714510003", "type": "button",
            "button": {"payload": "HOURS", "text": "Opening hours"}}),
        serde_json::json!({"from": USER, "id": "wamid.k.image", "timestamp": "1714510003", "type": "image",
            "image": {"mime_type": "image/jpeg", "sha256": "x", "id": "media1"}}),
        serde_json::json!({"from": USER, "id": "wamid.k.audio", "timestamp": "1714510003", "type": "audio",
            "audio": {"mime_type": "audio/ogg; codecs=opus", "sha256": "x", "id": "media2", "voice": true}}),
        serde_json::json!({"from": USER, "id": "wamid.k.location", "timestamp": "1714510003", "type": "location",
            "location": {"latitude": -1.28, "longitude": 36.82}}),
        serde_json::json!({"from": USER, "id": "wamid.k.reaction", "timestamp": "1714510003", "type": "reaction",
            "reaction": {"message_id": "wamid.biz", "emoji": "👍"}}),
        serde_json::json!({"from": USER, "id": "wamid.k.future", "timestamp": "1714510003", "type": "hologram"}),
    ];
    for m in msgs {
        let body = webhook_with(&t.phone_number_id, m);
        assert_eq!(
            post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    e.graph.wait_for(7, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = e.graph.received();
    let reply = |w: &str| got.iter().find(|r| r.in_reply_to() == w).map(|r| r.text());
    for w in ["wamid.k.button", "wamid.k.list", "wamid.k.template"] {
        assert_eq!(reply(w).as_deref(), Some("We are open 9 to 5."), "{w}");
    }
    for w in [
        "wamid.k.image",
        "wamid.k.audio",
        "wamid.k.location",
        "wamid.k.future",
    ] {
        assert_eq!(
            reply(w).as_deref(),
            Some(alphadome_responder::MEDIA_REPLY),
            "{w}"
        );
    }
    assert_eq!(reply("wamid.k.reaction"), None, "reactions get no reply");
    assert_eq!(got.len(), 7);
    eventually(Duration::from_secs(10), "all incoming rows", || async {
        (log_counts(&e.db.pool, t.id).await == (8, 7)).then_some(())
    })
    .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_service_keeps_serving() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let url = stack.webhook_url();
    let client = reqwest::Client::new();
    // Wrong content type.
    let body = text_webhook(&t.phone_number_id, USER, "wamid.bad.1", "opening hours");
    let sig = alphadome_core::meta::sign(PLATFORM_APP_SECRET.as_bytes(), body.as_bytes());
    let r = client
        .post(&url)
        .header("content-type", "text/plain")
        .header("x-hub-signature-256", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.text().await.unwrap().contains("application/json"));
    // Malformed JSON, correctly signed: Meta signed it, so it is accepted,
    // and the answer says why nothing was done with it.
    let r = post_signed(
        &url,
        PLATFORM_APP_SECRET,
        "{\"object\": \"whatsapp_business_account\", \"entry\": [",
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("nothing to process") && text.contains("JSON"),
        "{text}"
    );
    // Not a WhatsApp envelope.
    let r = post_signed(&url, PLATFORM_APP_SECRET, "{\"object\": \"page\"}").await;
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("whatsapp_business_account"));
    // Oversized body.
    let huge = format!(
        "{{\"object\": \"whatsapp_business_account\", \"pad\": \"{}\"}}",
        "x".repeat(5 * 1024 * 1024)
    );
    let r = post_signed(&url, PLATFORM_APP_SECRET, &huge).await;
    assert_eq!(r.status(), 413);
    // Verification handshake: right token, wrong token, missing fields.
    let ok = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=verify-{}",
            t.phone_number_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "text/plain");
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let wrong = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=nope"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let mode = client
        .get(format!(
            "{url}?hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=verify-{}",
            t.phone_number_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(mode.status(), 403);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 400);
    // Still serving.
    assert_eq!(
        post_signed(&url, PLATFORM_APP_SECRET, &body).await.status(),
        200
    );
    assert_eq!(e.graph.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn sends_are_paced_per_number_and_per_recipient() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let mut cfg = e.config();
    cfg.send_mps = 2;
    cfg.pair_burst = 1;
    let stack = RunningStack::start(cfg, &Service::ALL).await;
    // Six customers at 2 messages/s for the number (burst 2): about 2 s in all.
    for i in 0..6 {
        let body = text_webhook(
            &t.phone_number_id,
            &format!("25471300000{i}"),
            &format!("wamid.pace.{i}"),
            "opening hours",
        );
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    }
    // Pacing applies when a send is let through; the stand-in sees it
    // later by that send's own claim and HTTP time, which a loaded CI
    // machine stretched past 0.5 s for one send while the next was quick.
    // The bounds below leave room for that: unpaced, these sends arrive
    // within milliseconds of each other.
    let got = e.graph.wait_for(6, Duration::from_secs(20)).await;
    let span = got[5].at.duration_since(got[0].at);
    assert!(
        span >= Duration::from_millis(1400),
        "6 sends at 2/s took only {span:?}"
    );
    // One customer writing twice: the second reply waits for the pair rate (1 per 6 s).
    for i in 0..2 {
        let body = text_webhook(
            &t.phone_number_id,
            "254713999999",
            &format!("wamid.pair.{i}"),
            "opening hours",
        );
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body).await;
    }
    let got = e.graph.wait_for(8, Duration::from_secs(20)).await;
    let gap = got[7].at.duration_since(got[6].at);
    assert!(
        gap >= Duration::from_millis(4500),
        "two sends to one recipient only {gap:?} apart"
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_unsigned_requests_is_refused_without_starving_metas_deliveries() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let url = stack.webhook_url();
    let body = text_webhook(&t.phone_number_id, USER, "wamid.flood.ok", "opening hours");
    // The attacker, from its own address.
    let attacker = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let r = attacker
            .post(&url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", format!("sha256={:064x}", i))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[0], 401);
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 30,
        "{statuses:?}"
    );
    // Even correctly signed requests from the flooding source wait out the block ...
    let blocked = attacker
        .post(&url)
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            alphadome_core::meta::sign(PLATFORM_APP_SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 429);
    assert!(blocked.headers().contains_key("retry-after"));
    // ... while Meta, from elsewhere, is served as usual.
    let meta = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = meta
        .post(&url)
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            alphadome_core::meta::sign(PLATFORM_APP_SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        e.graph.wait_for(1, Duration::from_secs(10)).await[0].in_reply_to(),
        "wamid.flood.ok"
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn verify_tokens_are_stored_as_digests_and_rotate_with_a_grace_period() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    let stack = e.stack().await;
    let handshake = |token: String| {
        let url = stack.webhook_url();
        async move {
            reqwest::get(format!(
                "{url}?hub.mode=subscribe&hub.challenge=42&hub.verify_token={token}"
            ))
            .await
            .unwrap()
            .status()
            .as_u16()
        }
    };
    let original = format!("verify-{}", t.phone_number_id);
    let stored: String =
        sqlx::query_scalar("SELECT webhook_verify_token FROM alphadome.bot_tenants")
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    assert!(
        stored.starts_with("sha256:") && !stored.contains(&original),
        "{stored}"
    );
    assert_eq!(handshake(original.clone()).await, 200);

    // Rotation from the CLI prints the new token once; the old one still works during the grace period.
    let (code, out, err) = tokio::task::spawn_blocking({
        let (url, phone) = (e.db.url.clone(), t.phone.clone());
        move || {
            cli(
                &["tenant", "rotate-verify-token", &phone],
                &[("DATABASE_URL", &url)],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let new = out.trim().to_owned();
    assert!(new.len() >= 40, "{new}");
    assert_eq!(handshake(new.clone()).await, 200);
    assert_eq!(
        handshake(original.clone()).await,
        200,
        "the previous token is refused during its grace period"
    );
    let stored: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT unnest(ARRAY[webhook_verify_token, webhook_verify_token_previous]) FROM alphadome.bot_tenants",
    )
    .fetch_all(&e.db.pool)
    .await
    .unwrap();
    assert!(stored
        .iter()
        .flatten()
        .all(|s| s.starts_with("sha256:") && !s.contains(&new)));

    // With no grace, the previous token stops working at once.
    let (_, newer) =
        alphadome_admin::rotate_verify_token(&e.db.pool, None, &t.phone, "254", Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(handshake(newer).await, 200);
    assert_eq!(handshake(new).await, 403);
    assert_eq!(handshake(original).await, 403);

    // Tokens older than the configured age are reported.
    sqlx::query("UPDATE alphadome.bot_tenants SET webhook_verify_token_rotated_at = now() - interval '200 days'")
        .execute(&e.db.pool)
        .await
        .unwrap();
    let (code, out, _) = tokio::task::spawn_blocking({
        let url = e.db.url.clone();
        move || cli(&["tenant", "list"], &[("DATABASE_URL", &url)])
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("verify token 200 days old, rotate it"),
        "{out}"
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_reason_and_replayed_without_double_sends() {
    let e = env().await;
    let t = tenant(&e.db.pool, &e.ring, TenantSpec::default()).await;
    e.graph.script([Behaviour::Error {
        status: 400,
        code: 131026,
    }]);
    let stack = e.stack().await;
    post_signed(
        &stack.webhook_url(),
        PLATFORM_APP_SECRET,
        &text_webhook(&t.phone_number_id, USER, "wamid.dlq.1", "opening hours"),
    )
    .await;
    let envs = [
        ("NATS_URL", nats_url()),
        ("ALPHADOME_NATS_PREFIX", e.nats.prefix.clone()),
        ("DATABASE_URL", e.db.url.clone()),
    ];
    let run = |args: Vec<&'static str>| {
        let envs = envs.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let env: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                cli(&args, &env)
            })
            .await
            .unwrap()
        }
    };
    let listed = eventually(Duration::from_secs(15), "the dead letter", || async {
        let (code, out, _) = run(vec!["dlq", "list", "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (code == 0 && v.as_array()?.len() == 1).then_some(v)
    })
    .await;
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("131026"),
        "{listed}"
    );
    assert_eq!(listed[0]["tenant_id"], t.id.to_string());
    let (_, table, _) = run(vec!["dlq", "list"]).await;
    assert!(table.contains("131026"), "{table}");
    assert!(e.graph.received().is_empty());

    // The cause is fixed (the stand-in now accepts): replay sends it once.
    let (code, out, err) = run(vec!["dlq", "replay"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1"), "{out}");
    let got = e.graph.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].in_reply_to(), "wamid.dlq.1");
    let (code, out, _) = run(vec!["dlq", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
    assert!(run(vec!["dlq", "replay"]).await.1.contains("replayed 0"));

    // A dead letter for a reply that was sent meanwhile never sends it again.
    let bus = e.nats.bus().await;
    let out_msg = alphadome_core::events::v1::OutboundMessage {
        outbound_id: "reply:wamid.dlq.1".into(),
        tenant_id: t.id.to_string(),
        in_reply_to: "wamid.dlq.1".into(),
        to: USER.into(),
        text: "We are open 9 to 5.".into(),
        ..Default::default()
    };
    use alphadome_core::events::Message as _;
    bus.dead_letter(alphadome_core::events::v1::DeadLetter {
        tenant_id: t.id.to_string(),
        wamid: "reply:wamid.dlq.1".into(),
        source_stream: bus.stream_name(alphadome_core::bus::StreamKind::Outbound),
        source_subject: bus.subject(alphadome_core::bus::StreamKind::Outbound, &t.id.to_string()),
        reason: "test".into(),
        deliveries: 20,
        failed_at_ms: 1,
        payload: out_msg.encode_to_vec(),
        trace: None,
    })
    .await
    .unwrap();
    assert!(run(vec!["dlq", "replay"]).await.1.contains("replayed 1"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.graph.received().len(), 1, "a replay sent a reply twice");
    stack.stop().await.unwrap();
}
