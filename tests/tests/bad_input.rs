//! Malformed and hostile requests to every HTTP endpoint: each gets a clear
//! 4xx or a logged-and-dropped 200, nothing panics, the service stays up,
//! and the next valid message is still answered.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use alphadome_cli::stack::Service;
use alphadome_tests::*;

const PNID: &str = "100000000000001";
const USER: &str = "254711999000";

fn envelope(value: serde_json::Value) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]})
        .to_string()
}

fn meta() -> serde_json::Value {
    serde_json::json!({"display_phone_number": "1", "phone_number_id": PNID})
}

fn msg(id: &str, extra: serde_json::Value) -> String {
    let mut m = serde_json::json!({"from": USER, "id": id, "timestamp": "1700000000", "type": "text", "text": {"body": "opening hours"}});
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    envelope(serde_json::json!({"metadata": meta(), "messages": [m]}))
}

/// How a request is signed.
#[derive(Clone, Copy)]
enum Sig {
    Good,
    None,
    Wrong,
    NotHex,
    Sha1,
    OtherBody,
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    sig: Sig,
    want: u16,
    /// What the answer's text must say.
    says: Option<&'static str>,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, want: u16) -> Case {
    Case {
        name,
        body: body.into(),
        content_type: Some("application/json"),
        sig: Sig::Good,
        want,
        says: None,
    }
}

/// A correctly signed body that is no webhook: Meta signed it, so it is
/// accepted (a refusal would only make Meta retry it), and the answer says
/// why nothing was done with it.
fn unreadable(name: &'static str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        says: Some("nothing to process"),
        ..case(name, body, 200)
    }
}

#[tokio::test]
async fn hostile_requests_get_clear_answers_and_the_service_keeps_serving() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let (_, ring) = keyring();
    let (graph, graph_url, _stop) = graph().await;
    let t = tenant(&db.pool, &ring, TenantSpec::default()).await;
    let stack =
        RunningStack::start(config(&db, &nats, ring.clone(), &graph_url), &Service::ALL).await;
    let url = stack.webhook_url();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let injection = "'; DROP TABLE alphadome.bot_tenants; -- <script>alert(1)</script> {{7*7}} ${jndi:ldap://x} \u{202e}";
    let mut cases = vec![
        unreadable("empty body", ""),
        unreadable(
            "truncated JSON",
            &msg("wamid.b.1", serde_json::json!({}))[..40],
        ),
        unreadable("not JSON", "hello there"),
        unreadable("a JSON array", "[1, 2, 3]"),
        unreadable("a JSON string", "\"whatsapp\""),
        unreadable("wrong object", r#"{"object": "page", "entry": []}"#),
        unreadable("object missing", r#"{"entry": []}"#),
        unreadable(
            "entry of the wrong type",
            r#"{"object": "whatsapp_business_account", "entry": "x"}"#,
        ),
        unreadable(
            "changes of the wrong type",
            r#"{"object": "whatsapp_business_account", "entry": [{"changes": 7}]}"#,
        ),
        unreadable(
            "deep nesting",
            format!(r#"{{"object": "whatsapp_business_account", "entry": {deep}}}"#),
        ),
        unreadable("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}']),
        case(
            "message without id",
            envelope(
                serde_json::json!({"metadata": meta(), "messages": [{"from": USER, "type": "text"}]}),
            ),
            200,
        ),
        case(
            "message without sender",
            envelope(
                serde_json::json!({"metadata": meta(), "messages": [{"id": "wamid.b.nofrom", "type": "text"}]}),
            ),
            200,
        ),
        case(
            "change without metadata",
            envelope(serde_json::json!({"messages": [{"from": USER, "id": "wamid.b.nometa"}]})),
            200,
        ),
        case(
            "text of the wrong type",
            msg("wamid.b.texttype", serde_json::json!({"text": 5})),
            200,
        ),
        case(
            "messages of the wrong type",
            envelope(serde_json::json!({"metadata": meta(), "messages": {"a": 1}})),
            200,
        ),
        case(
            "unknown message type",
            msg("wamid.b.hologram", serde_json::json!({"type": "hologram"})),
            200,
        ),
        case(
            "numeric timestamp",
            msg(
                "wamid.b.numts",
                serde_json::json!({"timestamp": 1700000000}),
            ),
            200,
        ),
        case(
            "unknown tenant",
            envelope(
                serde_json::json!({"metadata": {"phone_number_id": "999"}, "messages": [{"from": USER, "id": "wamid.b.unknown"}]}),
            ),
            200,
        ),
        case(
            "unknown status value",
            envelope(
                serde_json::json!({"metadata": meta(), "statuses": [{"id": "wamid.x", "status": "deleted", "timestamp": "1", "recipient_id": USER}]}),
            ),
            200,
        ),
        case(
            "errors only",
            envelope(
                serde_json::json!({"metadata": meta(), "errors": [{"code": 130429, "title": "Rate limit hit"}]}),
            ),
            200,
        ),
        case(
            "other field",
            r#"{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "account_update", "value": {}}]}]}"#,
            200,
        ),
        case(
            "injection strings in text",
            msg(
                "wamid.b.inject",
                serde_json::json!({"text": {"body": injection}}),
            ),
            200,
        ),
        case(
            "NUL in text",
            msg(
                "wamid.b.nul",
                serde_json::json!({"text": {"body": "opening\u{0000}hours"}}),
            ),
            200,
        ),
        case(
            "a very long text",
            msg(
                "wamid.b.long",
                serde_json::json!({"text": {"body": "x".repeat(100_000)}}),
            ),
            200,
        ),
        Case {
            content_type: Some("application/json; charset=utf-8"),
            ..case(
                "JSON with a charset",
                msg("wamid.b.charset", serde_json::json!({})),
                200,
            )
        },
        Case {
            content_type: Some("text/plain"),
            ..case("text/plain", msg("wamid.b.ct", serde_json::json!({})), 415)
        },
        Case {
            content_type: None,
            ..case(
                "no content type",
                msg("wamid.b.noct", serde_json::json!({})),
                415,
            )
        },
        Case {
            sig: Sig::None,
            ..case(
                "no signature",
                msg("wamid.b.nosig", serde_json::json!({})),
                401,
            )
        },
        Case {
            sig: Sig::Wrong,
            ..case(
                "wrong signature",
                msg("wamid.b.wrongsig", serde_json::json!({})),
                401,
            )
        },
        Case {
            sig: Sig::NotHex,
            ..case(
                "signature not hex",
                msg("wamid.b.nothex", serde_json::json!({})),
                401,
            )
        },
        Case {
            sig: Sig::Sha1,
            ..case(
                "legacy sha1 signature",
                msg("wamid.b.sha1", serde_json::json!({})),
                401,
            )
        },
        Case {
            sig: Sig::OtherBody,
            ..case(
                "replayed signature, altered body",
                msg("wamid.b.replay", serde_json::json!({})),
                401,
            )
        },
    ];
    assert!(cases.len() >= 30);
    let client = reqwest::Client::new();
    for c in cases.drain(..) {
        let sig = match c.sig {
            Sig::Good => Some(alphadome_core::meta::sign(
                PLATFORM_APP_SECRET.as_bytes(),
                &c.body,
            )),
            Sig::None => None,
            Sig::Wrong => Some(alphadome_core::meta::sign(b"wrong", &c.body)),
            Sig::NotHex => Some("sha256=not-hex-at-all".to_owned()),
            Sig::Sha1 => Some("sha1=0000000000000000000000000000000000000000".to_owned()),
            Sig::OtherBody => Some(alphadome_core::meta::sign(
                PLATFORM_APP_SECRET.as_bytes(),
                b"{\"object\":\"whatsapp_business_account\"}",
            )),
        };
        let mut req = client.post(&url).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.name));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, c.want, "{}: {text}", c.name);
        if let Some(says) = c.says {
            assert!(text.contains(says), "{}: {text}", c.name);
        }
        if status >= 400 {
            assert!(
                !text.trim().is_empty(),
                "{}: a 4xx must say what is wrong",
                c.name
            );
        }
    }
    // An oversized body is refused from its Content-Length, before it is read.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
        let head = format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: {}\r\n\r\n",
            5 * 1024 * 1024
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "oversized body: {answer}"
        );
    }
    // Other endpoints.
    let base = format!("http://{}", stack.addr);
    for (what, req, want) in [
        ("handshake without parameters", client.get(&url), 400),
        (
            "handshake with the wrong mode",
            client.get(format!(
                "{url}?hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=verify-{PNID}"
            )),
            403,
        ),
        (
            "handshake with the wrong token",
            client.get(format!(
                "{url}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=%27%20OR%201%3D1"
            )),
            403,
        ),
        ("unknown path", client.get(format!("{base}/nope")), 404),
        ("wrong method", client.put(&url), 405),
        ("health", client.get(format!("{base}/healthz")), 200),
        ("readiness", client.get(format!("{base}/readyz")), 200),
        ("metrics", client.get(format!("{base}/metrics")), 200),
    ] {
        assert_eq!(req.send().await.unwrap().status().as_u16(), want, "{what}");
    }
    // Still up, nothing panicked, and the next valid message is answered.
    assert!(!stack.task.is_finished(), "the stack stopped");
    let body = text_webhook(
        &t.phone_number_id,
        "254711999111",
        "wamid.b.after",
        "opening hours",
    );
    assert_eq!(
        post_signed(&url, PLATFORM_APP_SECRET, &body).await.status(),
        200
    );
    eventually(
        Duration::from_secs(15),
        "the reply after the barrage",
        || async {
            graph
                .received()
                .into_iter()
                .find(|r| r.in_reply_to() == "wamid.b.after")
                .map(|_| ())
        },
    )
    .await;
    // Hostile text is stored verbatim (parameters, not SQL), NUL removed.
    let stored: Vec<String> = eventually(Duration::from_secs(15), "the logged texts", || async {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT message_text FROM alphadome.bot_message_logs WHERE whatsapp_message_id IN ('wamid.b.inject', 'wamid.b.nul') \
             AND direction = 'incoming' ORDER BY whatsapp_message_id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(stored, [injection.to_owned(), "openinghours".to_owned()]);
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM alphadome.bot_tenants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(tenants, 1);
    stack.stop().await.unwrap();
}
