//! A local stand-in for an OpenAI-compatible Chat Completions API (any
//! base path, `.../chat/completions`): records every request and answers
//! as scripted (a reply, an error status with its body and Retry-After, or
//! silence), with an optional latency for every answer.

use std::sync::Arc;
use std::time::Duration;

/// One request the LLM stand-in received.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    pub path: String,
    pub key: String,
    pub body: serde_json::Value,
    pub headers: Vec<(String, String)>,
}

impl LlmRequest {
    /// The system prompt.
    pub fn system(&self) -> String {
        self.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    /// The last user message.
    pub fn last_user(&self) -> String {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A scripted LLM answer.
#[derive(Debug, Clone)]
pub enum LlmBehaviour {
    /// 200 with this completion text.
    Reply(String),
    /// This status and JSON body, with an optional Retry-After (seconds).
    Status(u16, String, Option<u64>),
    /// No answer for this long.
    Hang(Duration),
}

/// A local OpenAI-compatible Chat Completions stand-in (any base path,
/// `.../chat/completions`). Unscripted requests get
/// `"AI answer to: <last user message>"`.
#[derive(Default)]
pub struct LlmStandIn {
    /// How long every answer takes (a slow model).
    latency: std::sync::Mutex<Duration>,
    requests: std::sync::Mutex<Vec<LlmRequest>>,
    script: std::sync::Mutex<std::collections::VecDeque<LlmBehaviour>>,
}

impl LlmStandIn {
    pub async fn start() -> (Arc<Self>, String) {
        use axum::extract::State;
        async fn handle(
            State(me): State<Arc<LlmStandIn>>,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let key = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let req = LlmRequest {
                path: uri.path().to_owned(),
                key,
                body: json,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect(),
            };
            let last = req.last_user();
            me.requests.lock().expect("lock").push(req);
            let latency = *me.latency.lock().expect("lock");
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let next = me.script.lock().expect("lock").pop_front();
            let reply = |text: String| {
                axum::Json(serde_json::json!({"id": "chatcmpl-standin", "object": "chat.completion", "model": "standin-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}}))
                .into_response()
            };
            match next {
                None => reply(format!("AI answer to: {last}")),
                Some(LlmBehaviour::Reply(t)) => reply(t),
                Some(LlmBehaviour::Status(code, body, retry_after)) => {
                    let mut r = (
                        axum::http::StatusCode::from_u16(code).expect("status"),
                        body,
                    )
                        .into_response();
                    r.headers_mut().insert(
                        "content-type",
                        axum::http::HeaderValue::from_static("application/json"),
                    );
                    if let Some(s) = retry_after {
                        r.headers_mut().insert(
                            "retry-after",
                            axum::http::HeaderValue::from_str(&s.to_string()).expect("header"),
                        );
                    }
                    r
                }
                Some(LlmBehaviour::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    reply("too late".into())
                }
            }
        }
        let me = Arc::new(Self::default());
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(handle))
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind llm stand-in");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (me, url)
    }

    /// Makes every answer take `d`.
    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock().expect("lock") = d;
    }

    pub fn script(&self, b: impl IntoIterator<Item = LlmBehaviour>) {
        self.script.lock().expect("lock").extend(b);
    }

    pub fn requests(&self) -> Vec<LlmRequest> {
        self.requests.lock().expect("lock").clone()
    }
}
