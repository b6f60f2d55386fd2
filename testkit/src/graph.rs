//! A local stand-in for the Graph API send endpoint
//! (`POST /{version}/{phone_number_id}/messages`), speaking Meta's formats
//! (protocols.md 2.6, 2.7). It records every request with the time it
//! arrived, and can be told to answer with Meta's errors or to hang, so
//! `alphadome simulate`, the tests and the load generator can see exactly
//! what the platform sent, without a Meta account.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub phone_number_id: String,
    /// The bearer token it carried.
    pub token: String,
    pub body: serde_json::Value,
    /// The wamid the stand-in answered with (empty if it answered an error).
    pub wamid: String,
    pub at: Instant,
}

impl Received {
    /// `to` without the leading `+`.
    pub fn to(&self) -> String {
        self.body["to"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('+')
            .to_owned()
    }
    /// The text body (of a list or buttons message: its body's text).
    pub fn text(&self) -> String {
        self.body["text"]["body"]
            .as_str()
            .or_else(|| self.body["interactive"]["body"]["text"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
    /// `context.message_id`: the inbound wamid answered.
    pub fn in_reply_to(&self) -> String {
        self.body["context"]["message_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answer with Meta's error body for `code` and HTTP `status`.
    Error { status: u16, code: i64 },
    /// Do not answer for this long (the client times out).
    Hang(Duration),
    /// Accept the message (it counts as sent), but answer only after this
    /// long: the client times out not knowing it went out.
    AcceptLate(Duration),
}

/// Shared state of a running stand-in.
#[derive(Default)]
pub struct GraphStandIn {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Behaviour>>,
    counter: AtomicU64,
    notify: Notify,
    /// Requests answered with an error or not answered.
    pub refused: AtomicU64,
    /// Until when every request is answered with a behaviour (a timed outage).
    outage: Mutex<Option<(Instant, Behaviour)>>,
    /// What `debug_token` says of a token: (expires_at, is_valid).
    tokens: Mutex<std::collections::HashMap<String, (i64, bool)>>,
    /// The app token `debug_token` requests carried.
    pub debug_token_callers: Mutex<Vec<String>>,
    /// Read receipts (`"status": "read"`, with or without the typing
    /// indicator), kept apart from the messages.
    receipts: Mutex<Vec<Received>>,
    /// Approved templates, by name and language, with their body's
    /// parameter count; when any are set, others are refused as Meta does
    /// (132001), as are wrong parameter counts (132000).
    templates: Mutex<std::collections::HashMap<(String, String), usize>>,
    /// Behaviours for the next messages to one recipient (`to`, no `+`).
    script_to: Mutex<std::collections::HashMap<String, VecDeque<Behaviour>>>,
}

impl GraphStandIn {
    /// Queues behaviours for the next requests (then back to success).
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        if let Ok(mut s) = self.script.lock() {
            s.extend(behaviours);
        }
    }

    /// Queues behaviours for the next messages to `to` only (then back to
    /// success).
    pub fn script_to(&self, to: &str, behaviours: impl IntoIterator<Item = Behaviour>) {
        if let Ok(mut s) = self.script_to.lock() {
            s.entry(to.trim_start_matches('+').to_owned())
                .or_default()
                .extend(behaviours);
        }
    }

    /// Answers every request with `behaviour` for the next `d` (429s for a
    /// while, a stretch of 500s, a stretch of time-outs).
    pub fn fail_for(&self, d: Duration, behaviour: Behaviour) {
        if let Ok(mut o) = self.outage.lock() {
            *o = Some((Instant::now() + d, behaviour));
        }
    }

    /// Approves template `name` in `language` with `parameters` body
    /// parameters.
    pub fn approve_template(&self, name: &str, language: &str, parameters: usize) {
        if let Ok(mut t) = self.templates.lock() {
            t.insert((name.to_owned(), language.to_owned()), parameters);
        }
    }

    /// The read receipts received so far.
    pub fn receipts(&self) -> Vec<Received> {
        self.receipts.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` read receipts came, or `timeout`.
    pub async fn wait_for_receipts(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            let got = self.receipts();
            if got.len() >= n || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.receipts();
            }
        }
    }

    /// Why Meta would refuse `json` as a message, if it would: no
    /// recipient, a text over 4,096 characters, a template not approved or
    /// with the wrong number of parameters.
    fn refusal(&self, json: &serde_json::Value) -> Option<(u16, i64)> {
        if json["to"].as_str().is_none() && json["recipient"].as_str().is_none() {
            return Some((400, 100));
        }
        match json["type"].as_str() {
            Some("text") => match json["text"]["body"].as_str() {
                Some(b) if !b.is_empty() && b.chars().count() <= 4096 => None,
                _ => Some((400, 100)),
            },
            Some("interactive") => {
                interactive_refusal(&json["interactive"]).then_some((400, 131009))
            }
            Some("template") => {
                let t = &json["template"];
                let (Some(name), Some(lang)) = (t["name"].as_str(), t["language"]["code"].as_str())
                else {
                    return Some((400, 131008));
                };
                let approved = self.templates.lock().ok()?;
                if approved.is_empty() {
                    return None;
                }
                let given = t["components"][0]["parameters"]
                    .as_array()
                    .map(Vec::len)
                    .unwrap_or(0);
                match approved.get(&(name.to_owned(), lang.to_owned())) {
                    None => Some((404, 132001)),
                    Some(&n) if n != given => Some((400, 132000)),
                    Some(_) => None,
                }
            }
            _ => None,
        }
    }

    /// How many messages were accepted so far.
    pub fn accepted(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or_default()
    }

    /// The messages accepted after the first `from` (a cursor for callers
    /// that follow the stream without copying all of it every time).
    pub fn received_from(&self, from: usize) -> Vec<Received> {
        self.received
            .lock()
            .map(|r| r.get(from..).map(<[Received]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Sets what `debug_token` reports for `token` (others: never expiring, valid).
    pub fn set_token(&self, token: &str, expires_at: i64, is_valid: bool) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_owned(), (expires_at, is_valid));
        }
    }

    /// Everything accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` messages were accepted, or `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.received();
            }
        }
    }

    /// Serves the stand-in on `listener` until `shutdown`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/{version}/{phone_number_id}/messages", post(send))
            .route("/{version}/debug_token", axum::routing::get(debug_token))
            .with_state(self.clone())
    }

    /// Starts a stand-in on a free port of 127.0.0.1; stops with the token
    /// returned.
    pub async fn start_local() -> std::io::Result<(Arc<Self>, String, CancellationToken)> {
        let shutdown = CancellationToken::new();
        let (me, url) =
            Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone()).await?;
        Ok((me, url, shutdown))
    }

    /// Starts a stand-in on `addr` (port 0 for any); returns it and its base
    /// URL including the API version, as `WHATSAPP_GRAPH_URL` takes it.
    pub async fn start(
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<(Arc<Self>, String)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://{}/v24.0", listener.local_addr()?);
        let me = Arc::new(Self::default());
        let router = me.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
        Ok((me, url))
    }
}

/// Whether Meta would refuse this list or buttons object (protocols.md
/// 2.4): a missing body, more than 3 buttons or 10 rows, a title or
/// description too long, ids repeated.
fn interactive_refusal(i: &serde_json::Value) -> bool {
    let len = |v: &serde_json::Value| v.as_str().map(|s| s.chars().count());
    let too_long = |v: &serde_json::Value, max: usize| len(v).is_none_or(|n| n == 0 || n > max);
    let mut ids = std::collections::HashSet::new();
    match i["type"].as_str() {
        Some("button") => {
            let Some(buttons) = i["action"]["buttons"].as_array() else {
                return true;
            };
            too_long(&i["body"]["text"], 1024)
                || buttons.is_empty()
                || buttons.len() > 3
                || buttons.iter().any(|b| {
                    too_long(&b["reply"]["title"], 20)
                        || too_long(&b["reply"]["id"], 256)
                        || !ids.insert(b["reply"]["id"].to_string())
                })
        }
        Some("list") => {
            let Some(sections) = i["action"]["sections"].as_array() else {
                return true;
            };
            let rows: Vec<&serde_json::Value> = sections
                .iter()
                .flat_map(|s| s["rows"].as_array().into_iter().flatten())
                .collect();
            too_long(&i["body"]["text"], 4096)
                || too_long(&i["action"]["button"], 20)
                || sections.len() > 10
                || rows.is_empty()
                || rows.len() > 10
                || rows.iter().any(|r| {
                    too_long(&r["title"], 24)
                        || too_long(&r["id"], 200)
                        || len(&r["description"]).is_some_and(|n| n > 72)
                        || !ids.insert(r["id"].to_string())
                })
        }
        _ => true,
    }
}

fn meta_error(status: u16, code: i64) -> Response {
    let body = serde_json::json!({"error": {
        "message": format!("(#{code}) stand-in error"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": "stand-in error"},
        "fbtrace_id": "StandInTrace"}});
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response()
}

async fn send(
    State(me): State<Arc<GraphStandIn>>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if token.is_empty() {
        me.refused.fetch_add(1, Ordering::Relaxed);
        return meta_error(401, 190);
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        me.refused.fetch_add(1, Ordering::Relaxed);
        return meta_error(400, 100);
    };
    if json["messaging_product"] != "whatsapp" {
        me.refused.fetch_add(1, Ordering::Relaxed);
        return meta_error(400, 131009);
    }
    if json["status"] == "read" {
        // A read receipt (protocols.md 2.5): never scripted to fail.
        if json["message_id"].as_str().is_none_or(str::is_empty) {
            return meta_error(400, 100);
        }
        if let Ok(mut r) = me.receipts.lock() {
            r.push(Received {
                phone_number_id,
                token,
                body: json,
                wamid: String::new(),
                at: Instant::now(),
            });
        }
        me.notify.notify_waiters();
        return axum::Json(serde_json::json!({"success": true})).into_response();
    }
    if let Some((status, code)) = me.refusal(&json) {
        me.refused.fetch_add(1, Ordering::Relaxed);
        return meta_error(status, code);
    }
    let outage = me.outage.lock().ok().and_then(|mut o| match &*o {
        Some((until, b)) if Instant::now() < *until => Some(b.clone()),
        Some(_) => {
            *o = None;
            None
        }
        None => None,
    });
    let to = json["to"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('+')
        .to_owned();
    let next = outage
        .or_else(|| {
            me.script_to
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(&to).and_then(VecDeque::pop_front))
        })
        .or_else(|| me.script.lock().ok().and_then(|mut s| s.pop_front()));
    match next {
        Some(Behaviour::Error { status, code }) => {
            me.refused.fetch_add(1, Ordering::Relaxed);
            return meta_error(status, code);
        }
        Some(Behaviour::Hang(d)) => {
            me.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
            return meta_error(500, 131000);
        }
        Some(Behaviour::AcceptLate(_)) | None => {}
    }
    let n = me.counter.fetch_add(1, Ordering::Relaxed);
    let wamid = format!("wamid.standin.{phone_number_id}.{n}");
    let to = json["to"].as_str().unwrap_or_default().to_owned();
    if let Ok(mut r) = me.received.lock() {
        r.push(Received {
            phone_number_id,
            token,
            body: json,
            wamid: wamid.clone(),
            at: Instant::now(),
        });
    }
    me.notify.notify_waiters();
    if let Some(Behaviour::AcceptLate(d)) = next {
        tokio::time::sleep(d).await;
    }
    axum::Json(serde_json::json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to.trim_start_matches('+')}],
        "messages": [{"id": wamid}],
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct DebugTokenQuery {
    input_token: String,
    access_token: String,
}

/// `GET /debug_token?input_token=&access_token=` (protocols.md 2.12).
async fn debug_token(
    State(me): State<Arc<GraphStandIn>>,
    axum::extract::Query(q): axum::extract::Query<DebugTokenQuery>,
) -> Response {
    if !q.access_token.contains('|') {
        return meta_error(400, 190);
    }
    if let Ok(mut c) = me.debug_token_callers.lock() {
        c.push(q.access_token.clone());
    }
    let (expires_at, is_valid) = me
        .tokens
        .lock()
        .ok()
        .and_then(|t| t.get(&q.input_token).copied())
        .unwrap_or((0, true));
    axum::Json(serde_json::json!({"data": {"app_id": "1", "type": "SYSTEM_USER", "application": "Alphadome",
        "expires_at": expires_at, "is_valid": is_valid, "scopes": ["whatsapp_business_messaging"]}}))
    .into_response()
}
