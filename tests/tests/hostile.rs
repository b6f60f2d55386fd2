//! The platform as Meta sees it and as an attacker does, against a running
//! stack: every webhook Meta signs is accepted (whatever its field, even
//! when it does not parse) and never counts against its address; an
//! unsigned body costs a bounded number of database lookups; requests that
//! time out count as failures and an address has a bounded number in
//! flight; slow headers are cut and an address has a bounded number of
//! connections; the admin API throttles wrong tokens and answers bad ids
//! with a 4xx.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use alphadome_cli::stack::Service;
use alphadome_tests::{
    config, eventually, graph, keyring, post_signed, tenant, text_webhook, RunningStack,
    TenantSpec, TestDb, TestNats, PLATFORM_APP_SECRET,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: &str = "254711000222";
const SECRET: &str = "shop-own-app-secret";
const WABA: &str = "900000000000001";
const PNID: &str = "100000000000001";

/// A change of `field` about the account, as Meta sends it.
fn account_change(waba: &str, field: &str, value: serde_json::Value) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": 1751247548,
        "changes": [{"field": field, "value": value}]}]})
    .to_string()
}

async fn metric(stack: &RunningStack, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", stack.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("alphadome_ingress_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

#[tokio::test]
async fn every_webhook_meta_signs_is_accepted_kept_and_never_counted_as_a_failure() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let t = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            app_secret: Some(SECRET),
            tenant_extra: &format!("whatsapp_business_account_id: \"{WABA}\""),
            ..Default::default()
        },
    )
    .await;
    let stack =
        RunningStack::start(config(&db, &nats, ring.clone(), &graph_url), &Service::ALL).await;
    let url = stack.webhook_url();
    let template = account_change(
        WABA,
        "message_template_status_update",
        serde_json::json!({"event": "APPROVED", "message_template_id": 1234,
            "message_template_name": "order_update", "message_template_language": "en_US", "reason": "NONE"}),
    );
    let bodies = [
        template.clone(),
        account_change(
            WABA,
            "phone_number_quality_update",
            serde_json::json!({"display_phone_number": "254700000001", "event": "FLAGGED", "current_limit": "TIER_1K"}),
        ),
        account_change(
            WABA,
            "account_update",
            serde_json::json!({"phone_number": "254700000001", "event": "VERIFIED_ACCOUNT"}),
        ),
        // An errors-only change: a phone number id, no messages.
        serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{"field": "messages",
            "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "0", "phone_number_id": PNID},
            "errors": [{"code": 130429, "title": "Rate limit hit", "message": "Rate limit hit"}]}}]}]})
        .to_string(),
        // A message with a lone surrogate escape: JSON parsers refuse it.
        text_webhook(PNID, USER, "wamid.h.surrogate", "opening hours")
            .replace("opening hours", "opening hours \\ud800"),
        // A message with a raw NUL inside a string.
        text_webhook(PNID, USER, "wamid.h.nul", "opening hours")
            .replace("opening hours", "opening\u{0} hours"),
    ];
    // Well past the failure burst (20), all from this test's one address.
    for round in 0..5 {
        for body in &bodies {
            let r = post_signed(&url, SECRET, body).await;
            assert_eq!(r.status(), 200, "round {round}: {body:.120}");
        }
    }
    // Nothing counted against the address: a message still goes through,
    // and the two that did not parse were answered once each (repaired).
    let r = post_signed(
        &url,
        SECRET,
        &text_webhook(PNID, USER, "wamid.h.after", "opening hours"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = graph.wait_for(3, Duration::from_secs(15)).await;
    let mut answered: Vec<String> = got.iter().map(|r| r.in_reply_to()).collect();
    answered.sort();
    assert_eq!(
        answered,
        ["wamid.h.after", "wamid.h.nul", "wamid.h.surrogate"],
        "each message answered once"
    );
    // The account changes are kept, each once, for the tenant.
    let kept: Vec<(String, Option<String>)> = eventually(
        Duration::from_secs(15),
        "the account events",
        || async {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT field, event FROM alphadome.account_events WHERE bot_tenant_id = $1 ORDER BY field",
            )
            .bind(t.id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (rows.len() >= 3).then_some(rows)
        },
    )
    .await;
    assert_eq!(
        kept,
        [
            (
                "account_update".to_owned(),
                Some("VERIFIED_ACCOUNT".to_owned())
            ),
            (
                "message_template_status_update".to_owned(),
                Some("APPROVED".to_owned())
            ),
            (
                "phone_number_quality_update".to_owned(),
                Some("FLAGGED".to_owned())
            ),
        ]
    );
    let events = alphadome_logger::store::account_events(&db.pool, t.id, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 3, "a redelivered change is kept once");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.as_deref() == Some("APPROVED"))
            .count(),
        1
    );
    assert_eq!(metric(&stack, "bad_signature_total").await, 0);

    // A body signed with the platform's secret but naming this tenant (which
    // has its own) is not the tenant's: accepted, its item dropped, and the
    // address not counted.
    let foreign = post_signed(
        &url,
        PLATFORM_APP_SECRET,
        &text_webhook(PNID, USER, "wamid.h.foreign", "opening hours"),
    )
    .await;
    assert_eq!(foreign.status(), 200);
    assert!(metric(&stack, "foreign_items_total").await >= 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(graph
        .received()
        .iter()
        .all(|r| r.in_reply_to() != "wamid.h.foreign"));
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn an_unsigned_body_costs_a_bounded_number_of_lookups_and_is_answered_at_once() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (_graph, graph_url, _stop) = graph().await;
    tenant(&db.pool, &ring, TenantSpec::default()).await;
    let stack = RunningStack::start(
        config(&db, &nats, ring.clone(), &graph_url),
        &[Service::Ingress],
    )
    .await;
    // About 3.9 MB naming 50,000 phone number ids no tenant has.
    let changes: Vec<serde_json::Value> = (0..50_000)
        .map(|i| serde_json::json!({"field": "messages", "value": {"metadata": {"phone_number_id": format!("7{i:014}")}}}))
        .collect();
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": changes}]})
        .to_string();
    assert!(
        (3_500_000..alphadome_ingress::MAX_BODY_BYTES).contains(&body.len()),
        "{}",
        body.len()
    );
    let bogus = format!("sha256={}", "ab".repeat(32));
    let send = |sig: String, body: String| async move {
        reqwest::Client::new()
            .post(format!("http://{}/webhook", stack.addr))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    };
    let before = metric(&stack, "tenant_lookups_total").await;
    let t0 = Instant::now();
    assert_eq!(send(bogus.clone(), body.clone()).await, 401);
    let first = metric(&stack, "tenant_lookups_total").await - before;
    assert!(
        first as usize <= alphadome_ingress::MAX_LOOKUPS_PER_BODY,
        "{first} lookups for one unsigned body"
    );
    // The same ids again: remembered as naming no tenant, no lookup.
    assert_eq!(send(bogus.clone(), body.clone()).await, 401);
    assert_eq!(metric(&stack, "tenant_lookups_total").await - before, first);
    // A header that cannot be a signature costs nothing at all.
    assert_eq!(send("sha256=zz".into(), body).await, 401);
    assert_eq!(metric(&stack, "tenant_lookups_total").await - before, first);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "three unsigned 3.9 MB bodies took {:?}",
        t0.elapsed()
    );
    stack.stop().await.unwrap();
}

/// Opens a request whose body never finishes.
async fn stalled_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"object\":",
    )
    .await
    .unwrap();
    s
}

/// The status line of the answer on `s`, if one comes within `wait`.
async fn status_of(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn requests_that_time_out_count_as_failures_and_in_flight_requests_are_bounded() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (_graph, graph_url, _stop) = graph().await;
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let mut cfg = config(&db, &nats, ring.clone(), &graph_url);
    cfg.request_timeout = Duration::from_millis(700);
    cfg.max_requests_per_source = 25;
    let stack = RunningStack::start(cfg, &[Service::Ingress]).await;
    let mut stalled = Vec::new();
    for _ in 0..25 {
        stalled.push(stalled_request(stack.addr).await);
    }
    // The 26th request in flight from the address is refused at once.
    let mut extra = stalled_request(stack.addr).await;
    let line = status_of(&mut extra, Duration::from_millis(500)).await;
    assert!(
        line.as_deref().is_some_and(|l| l.contains("429")),
        "{line:?}"
    );
    // Each stalled request is answered 408 at the time-out, and counts.
    for s in &mut stalled {
        let line = status_of(s, Duration::from_secs(5)).await;
        assert!(
            line.as_deref().is_some_and(|l| l.contains("408")),
            "{line:?}"
        );
    }
    // 25 failures: past the burst, the address is refused, signed or not.
    let r = post_signed(
        &stack.webhook_url(),
        PLATFORM_APP_SECRET,
        &text_webhook(&t.phone_number_id, USER, "wamid.h.blocked", "opening hours"),
    )
    .await;
    assert_eq!(r.status(), 429);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn slow_headers_are_cut_and_connections_per_source_are_bounded() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (_graph, graph_url, _stop) = graph().await;
    let mut cfg = config(&db, &nats, ring.clone(), &graph_url);
    cfg.header_timeout = Duration::from_millis(1_500);
    cfg.max_connections_per_source = 8;
    let stack = RunningStack::start(cfg, &[Service::Ingress]).await;
    // Part of the headers, then nothing: closed at the header time-out.
    let mut slow = TcpStream::connect(stack.addr).await.unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 may come first
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection with half its headers stayed open for 6 s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        t0.elapsed()
    );
    // Eight connections may stay open; the ninth is closed at once.
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(TcpStream::connect(stack.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ninth = TcpStream::connect(stack.addr).await.unwrap();
    let n = tokio::time::timeout(Duration::from_millis(800), ninth.read(&mut buf))
        .await
        .expect("the ninth connection was not closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Once they are gone, connections are taken again.
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::get(format!("http://{}/healthz", stack.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_api_throttles_wrong_tokens_and_answers_bad_ids_with_a_4xx() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (_graph, graph_url, _stop) = graph().await;
    tenant(&db.pool, &ring, TenantSpec::default()).await;
    let token = "an-admin-token-of-enough-length";
    let mut cfg = config(&db, &nats, ring.clone(), &graph_url);
    cfg.admin_token = Some(secrecy::SecretString::from(token.to_owned()));
    let stack = RunningStack::start(cfg, &[Service::Admin]).await;
    let client = reqwest::Client::new();
    let get = |path: &str, bearer: &str| {
        client
            .get(format!("http://{}{path}", stack.addr))
            .bearer_auth(bearer)
            .send()
    };
    // Bad ids are a 404, never a 5xx.
    for id in ["%00abc", "not-a-phone", "254%00700000001", "123"] {
        let r = get(&format!("/api/v1/tenants/{id}"), token).await.unwrap();
        assert_eq!(r.status(), 404, "{id}");
    }
    assert_eq!(
        get("/api/v1/tenants/254700000001", token)
            .await
            .unwrap()
            .status(),
        200
    );
    // Wrong tokens: 401 for the burst, then the address is refused.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            get("/api/v1/tenants", "wrong-token")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(get("/api/v1/tenants", token).await.unwrap().status(), 429);
    stack.stop().await.unwrap();
}
