//! Processes killed mid-stream: the platform runs as a real `alphadome up`
//! child process, is SIGKILLed while messages flow, and restarted. Every
//! accepted message is answered; a reply can only be repeated when its
//! send was in flight at the kill (Meta's send API has no idempotency key),
//! and then its claim shows the second attempt.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alphadome_tests::*;

struct Platform {
    child: Child,
    url: String,
}

fn spawn(db: &TestDb, nats: &TestNats, key: &str, graph_url: &str, port: u16) -> Platform {
    let child = Command::new(alphadome_bin())
        .arg("up")
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats_url())
        .env("ALPHADOME_NATS_PREFIX", &nats.prefix)
        .env("ALPHADOME_MASTER_KEY", key)
        .env("META_APP_SECRET", PLATFORM_APP_SECRET)
        .env("WHATSAPP_GRAPH_URL", graph_url)
        .env("ALPHADOME_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ALPHADOME_SEND_TIMEOUT_MS", "1000")
        .env("ALPHADOME_TENANT_REFRESH_MS", "500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn alphadome up");
    Platform {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn ready(p: &Platform) {
    eventually(Duration::from_secs(20), "platform ready", || async {
        reqwest::get(format!("{}/readyz", p.url))
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing_and_repeats_nothing() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (key, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let port = free_port();
    let mut p = spawn(&db, &nats, &key, &graph_url, port);
    ready(&p).await;

    let n = 120usize;
    let webhook = format!("{}/webhook", p.url);
    let mut accepted = Vec::new();
    for i in 0..n {
        if i == n / 2 {
            p.child.kill().expect("SIGKILL");
            p.child.wait().ok();
            p = spawn(&db, &nats, &key, &graph_url, port);
            ready(&p).await;
        }
        let wamid = format!("wamid.kill.{i}");
        let body = text_webhook(
            &t.phone_number_id,
            &format!("2547200{i:05}"),
            &wamid,
            "opening hours",
        );
        // Meta retries until it gets a 200; so does this sender.
        let status = loop {
            match reqwest::Client::new()
                .post(&webhook)
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    alphadome_core::meta::sign(PLATFORM_APP_SECRET.as_bytes(), body.as_bytes()),
                )
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => break r.status(),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert_eq!(status, 200);
        accepted.push(wamid);
    }
    graph.wait_for(n, Duration::from_secs(60)).await;
    // Let any late duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = graph.received();
    let mut replied: Vec<String> = got.iter().map(|r| r.in_reply_to()).collect();
    replied.sort();
    let total = replied.len();
    replied.dedup();
    let missing: Vec<&String> = accepted.iter().filter(|w| !replied.contains(w)).collect();
    let duplicated = total - replied.len();
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alphadome.outbound_messages WHERE attempts > 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    eprintln!("sent {n}, accepted {}, replied {}, lost {}, duplicated {duplicated}, claims retried {retried}", accepted.len(), replied.len(), missing.len());
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(
        duplicated as i64 <= retried,
        "{duplicated} duplicates but only {retried} sends were in flight at the kill"
    );
    eventually(
        Duration::from_secs(60),
        "every message logged once each way",
        || async {
            let c = log_counts(&db.pool, t.id).await;
            (c == (n as i64, n as i64)).then_some(())
        },
    )
    .await;
    p.child.kill().ok();
    p.child.wait().ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (key, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let port = free_port();
    let mut p = spawn(&db, &nats, &key, &graph_url, port);
    ready(&p).await;
    let n = 30;
    for i in 0..n {
        let body = text_webhook(
            &t.phone_number_id,
            &format!("2547300{i:05}"),
            &format!("wamid.term.{i}"),
            "opening hours",
        );
        assert_eq!(
            post_signed(&format!("{}/webhook", p.url), PLATFORM_APP_SECRET, &body)
                .await
                .status(),
            200
        );
    }
    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    // Whatever was accepted is answered once, by this run or the next.
    let mut p = spawn(&db, &nats, &key, &graph_url, port);
    ready(&p).await;
    let got = graph.wait_for(n, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(got.len(), n);
    assert_eq!(
        graph.received().len(),
        n,
        "a reply was sent twice across a graceful restart"
    );
    p.child.kill().ok();
    p.child.wait().ok();
}
