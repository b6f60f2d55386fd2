//! One trace spans the services: the W3C trace context travels in NATS
//! headers from ingress to responder to sender, and spans are exported
//! over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alphadome_cli::stack::Service;
use alphadome_core::bus::StreamKind;
use alphadome_core::events::v1::{Direction, LogEvent};
use alphadome_core::events::Message as _;
use alphadome_tests::*;
use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;

fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_ingress_responder_and_sender_and_is_exported() {
    // A stand-in OTLP collector.
    let posts = Arc::new(AtomicUsize::new(0));
    let counter = posts.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                if !body.is_empty() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let guard = alphadome_core::telemetry::init(
        "alphadome-test",
        &alphadome_core::config::TelemetrySettings {
            otlp_endpoint: Some(format!("http://{collector}")),
            ..Default::default()
        },
    );

    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    // Without the logger, the log events stay in the stream to be inspected.
    let stack = RunningStack::start(
        config(&db, &nats, ring.clone(), &graph_url),
        &[Service::Ingress, Service::Responder, Service::Sender],
    )
    .await;
    let body = text_webhook(
        &t.phone_number_id,
        "254711000222",
        "wamid.trace.1",
        "opening hours",
    );
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
            .await
            .status(),
        200
    );
    assert_eq!(graph.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    let bus = nats.bus().await;
    let stream = bus
        .js
        .get_stream(bus.stream_name(StreamKind::Log))
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("inspect".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut events: Vec<LogEvent> = Vec::new();
    for _ in 0..20 {
        let mut msgs = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            events.push(LogEvent::decode(m.payload.clone()).unwrap());
            let _ = m.ack().await;
        }
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let incoming = events
        .iter()
        .find(|e| e.direction == Direction::Incoming as i32)
        .expect("incoming log event");
    let outgoing = events
        .iter()
        .find(|e| e.direction == Direction::Outgoing as i32)
        .expect("outgoing log event");
    let a = incoming.trace.clone().unwrap_or_default().traceparent;
    let b = outgoing.trace.clone().unwrap_or_default().traceparent;
    assert_eq!(
        trace_id(&a).len(),
        32,
        "responder span has a trace id: {a:?}"
    );
    assert_eq!(
        trace_id(&a),
        trace_id(&b),
        "responder and sender are in one trace"
    );
    assert_ne!(trace_id(&a), "00000000000000000000000000000000");
    stack.stop().await.unwrap();

    // Flushing the exporter posts the spans to the collector.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    assert!(
        posts.load(Ordering::SeqCst) > 0,
        "no spans were exported over OTLP"
    );
}
