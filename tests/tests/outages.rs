//! Outages of the broker: while NATS is down ingress answers 503 so Meta
//! retries, and once it is back the retried webhook is answered once.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use alphadome_cli::stack::Service;
use alphadome_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_gives_503_and_the_retry_is_answered_once_it_is_back() {
    let db = TestDb::migrated().await;
    let mut nats = OwnNats::start().await;
    let prefix = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let mut cfg = config(&db, &prefix, ring.clone(), &graph_url);
    cfg.nats_url = nats.url();
    let stack = RunningStack::start(cfg, &Service::ALL).await;

    let first = text_webhook(
        &t.phone_number_id,
        "254711000333",
        "wamid.out.1",
        "opening hours",
    );
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &first)
            .await
            .status(),
        200
    );
    assert_eq!(graph.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    nats.stop();
    let second = text_webhook(
        &t.phone_number_id,
        "254711000333",
        "wamid.out.2",
        "opening hours",
    );
    let during = post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &second).await;
    assert_eq!(
        during.status(),
        503,
        "an unstored message must not be acknowledged"
    );
    let ready = reqwest::get(format!("http://{}/readyz", stack.addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("nats: unavailable"));

    nats.resume().await;
    // Meta retries the same delivery until it gets a 200.
    let status = eventually(
        Duration::from_secs(30),
        "ingress accepting again",
        || async {
            let r = post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &second).await;
            r.status().is_success().then_some(r.status())
        },
    )
    .await;
    assert_eq!(status, 200);
    let got = graph.wait_for(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replies: Vec<String> = graph.received().iter().map(|r| r.in_reply_to()).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(
        replies.iter().filter(|w| *w == "wamid.out.2").count(),
        1,
        "{replies:?}"
    );
    stack.stop().await.unwrap();
}
