//! The tenant's LLM: one OpenAI-compatible Chat Completions client for
//! OpenAI, OpenRouter, the Hugging Face router and self-hosted servers
//! (protocols.md 4), with the tenant's own key, model and base URL.
//!
//! One answer has a fixed time budget (retries included). 429 and 5xx are
//! retried, honouring `Retry-After` when it fits the budget; a rejected key
//! or exhausted quota is not retried. OpenRouter's errors inside an HTTP
//! 200 body are recognised. A circuit breaker per tenant and provider fails
//! fast after repeated failures, so a broken provider costs one tenant
//! nothing but its fallback reply.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alphadome_core::config::AiSettings;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Failures in a row that open a tenant's circuit.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit fails fast.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

impl ChatMessage {
    pub fn system(c: impl Into<String>) -> Self {
        Self {
            role: "system",
            content: c.into(),
        }
    }
    pub fn user(c: impl Into<String>) -> Self {
        Self {
            role: "user",
            content: c.into(),
        }
    }
    pub fn assistant(c: impl Into<String>) -> Self {
        Self {
            role: "assistant",
            content: c.into(),
        }
    }
}

/// A provider and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub provider: String,
    pub base_url: String,
}

/// Resolves the tenant's provider to a base URL.
pub fn endpoint(
    settings: &AiSettings,
    provider: Option<&str>,
    tenant_base: Option<&str>,
) -> Result<Endpoint, LlmError> {
    let provider =
        provider.ok_or_else(|| LlmError::NotConfigured("the tenant has no ai_provider".into()))?;
    let base_url = match provider {
        "openai" => tenant_base.unwrap_or(&settings.openai_base),
        "openrouter" => tenant_base.unwrap_or(&settings.openrouter_base),
        "huggingface" => tenant_base.unwrap_or(&settings.huggingface_base),
        "openai_compatible" => tenant_base.ok_or_else(|| {
            LlmError::NotConfigured("openai_compatible needs the tenant's ai_base_url".into())
        })?,
        other => {
            return Err(LlmError::NotConfigured(format!(
                "unknown ai_provider {other:?}"
            )))
        }
    };
    Ok(Endpoint {
        provider: provider.to_owned(),
        base_url: base_url.trim_end_matches('/').to_owned(),
    })
}

/// Why the LLM gave no answer. Never carries the key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LlmError {
    #[error("AI is not configured: {0}")]
    NotConfigured(String),
    #[error("the provider rejected the tenant's API key (HTTP {0})")]
    Auth(u16),
    #[error("the tenant's AI quota or credit is exhausted: {0}")]
    Quota(String),
    #[error("the provider refused the request (HTTP {status}): {message}")]
    BadRequest { status: u16, message: String },
    #[error("the provider did not answer in time or is unavailable: {0}")]
    Unavailable(String),
    #[error("AI calls for this tenant are paused after repeated failures")]
    CircuitOpen,
    #[error("the tenant's AI calls are all in use and many more are waiting")]
    Busy,
}

/// An answer and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAnswer {
    pub text: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: String,
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ApiError,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// What one attempt came to.
enum Attempt {
    Done(ChatAnswer),
    /// Retry after the delay (if the budget allows).
    Again(Duration, String),
    Fail(LlmError),
}

/// The client shared by all tenants (each request carries its own key).
pub struct LlmClient {
    http: reqwest::Client,
    settings: AiSettings,
    breakers: Mutex<HashMap<(Uuid, String), Breaker>>,
}

impl LlmClient {
    pub fn new(settings: AiSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(32)
                .build()?,
            settings,
            breakers: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &AiSettings {
        &self.settings
    }

    /// Asks the tenant's model. `max_tokens` bounds the completion.
    pub async fn chat(
        &self,
        tenant: Uuid,
        endpoint: &Endpoint,
        key: &SecretString,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
    ) -> Result<ChatAnswer, LlmError> {
        let breaker_key = (tenant, endpoint.provider.clone());
        if let Ok(mut b) = self.breakers.lock() {
            let e = b.entry(breaker_key.clone()).or_default();
            match e.open_until {
                Some(t) if Instant::now() < t => return Err(LlmError::CircuitOpen),
                Some(_) => e.open_until = None, // half-open: let this one try
                None => {}
            }
        }
        let result = self
            .chat_with_retries(endpoint, key, model, messages, max_tokens)
            .await;
        if let Ok(mut b) = self.breakers.lock() {
            let e = b.entry(breaker_key).or_default();
            match &result {
                Ok(_) | Err(LlmError::BadRequest { .. }) => *e = Breaker::default(),
                Err(_) => {
                    e.failures += 1;
                    if e.failures >= BREAKER_THRESHOLD {
                        e.open_until = Some(Instant::now() + BREAKER_OPEN_FOR);
                    }
                }
            }
        }
        result
    }

    /// Whether the tenant's circuit is open now (errors have repeated).
    pub fn circuit_open(&self, tenant: Uuid, provider: &str) -> bool {
        self.breakers
            .lock()
            .ok()
            .and_then(|b| {
                b.get(&(tenant, provider.to_owned()))
                    .and_then(|e| e.open_until)
            })
            .is_some_and(|t| Instant::now() < t)
    }

    async fn chat_with_retries(
        &self,
        endpoint: &Endpoint,
        key: &SecretString,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
    ) -> Result<ChatAnswer, LlmError> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut body =
            serde_json::json!({"model": model, "messages": messages, "temperature": 0.3});
        // OpenAI deprecates max_tokens (reasoning models refuse it); the
        // OpenAI-compatible servers still take max_tokens.
        let limit_field = if endpoint.provider == "openai" {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[limit_field] = serde_json::json!(max_tokens);
        let url = format!("{}/chat/completions", endpoint.base_url);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LlmError::Unavailable("time budget used up".into()));
            }
            let mut req = self
                .http
                .post(&url)
                .bearer_auth(key.expose_secret())
                .json(&body)
                .timeout(left);
            if endpoint.provider == "openrouter" {
                req = req.header("X-OpenRouter-Title", "Alphadome");
            }
            let outcome = match req.send().await {
                Err(e) if e.is_timeout() => {
                    Attempt::Fail(LlmError::Unavailable("request timed out".into()))
                }
                Err(_) => Attempt::Again(backoff(attempt), "connection failed".into()),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(Duration::from_secs_f64);
                    match resp.bytes().await {
                        Err(e) if e.is_timeout() => {
                            Attempt::Fail(LlmError::Unavailable("response timed out".into()))
                        }
                        Err(_) => Attempt::Again(backoff(attempt), "response unreadable".into()),
                        Ok(bytes) => classify(status, &bytes, retry_after, attempt),
                    }
                }
            };
            match outcome {
                Attempt::Done(a) => return Ok(a),
                Attempt::Fail(e) => return Err(e),
                Attempt::Again(delay, why) => {
                    if attempt >= 3 || Instant::now() + delay >= deadline {
                        return Err(LlmError::Unavailable(why));
                    }
                    tracing::info!(attempt, delay_ms = delay.as_millis() as u64, reason = %why, "retrying the AI request");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250 * (1 << attempt.min(4)));
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

fn code_str(e: &ApiError) -> String {
    match &e.code {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn is_quota(e: &ApiError) -> bool {
    let code = code_str(e);
    let kind = e.kind.clone().unwrap_or_default();
    ["insufficient_quota", "credit_balance_exhausted"]
        .iter()
        .any(|q| code == *q || kind == *q)
}

fn classify(status: u16, body: &[u8], retry_after: Option<Duration>, attempt: u32) -> Attempt {
    if (200..300).contains(&status) {
        let parsed: Completion = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => {
                return Attempt::Again(backoff(attempt), format!("unparseable completion: {e}"))
            }
        };
        if let Some(err) = parsed.error {
            // OpenRouter: an error after generation started, inside a 200;
            // its code is the HTTP status it stands for.
            let code = code_str(&err).parse::<u16>().unwrap_or(502);
            return classify_error(code, err, retry_after, attempt);
        }
        let choice = parsed.choices.into_iter().next();
        let finish_reason = choice
            .as_ref()
            .and_then(|c| c.finish_reason.clone())
            .unwrap_or_default();
        let text = choice
            .and_then(|c| c.message)
            .and_then(|m| m.content)
            .unwrap_or_default();
        if text.trim().is_empty() {
            return Attempt::Fail(LlmError::BadRequest {
                status,
                message: "the completion has no text".into(),
            });
        }
        let usage = parsed.usage.unwrap_or_default();
        return Attempt::Done(ChatAnswer {
            text: text.trim().to_owned(),
            model: parsed.model,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            finish_reason,
        });
    }
    let err = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    classify_error(status, err, retry_after, attempt)
}

fn classify_error(
    status: u16,
    err: ApiError,
    retry_after: Option<Duration>,
    attempt: u32,
) -> Attempt {
    let message: String = err.message.chars().take(200).collect();
    match status {
        401 | 403 if !is_quota(&err) => Attempt::Fail(LlmError::Auth(status)),
        402 => Attempt::Fail(LlmError::Quota(message)),
        429 if is_quota(&err) => Attempt::Fail(LlmError::Quota(message)),
        408 | 429 | 500..=599 => Attempt::Again(
            retry_after.unwrap_or_else(|| backoff(attempt)),
            format!("HTTP {status}: {message}"),
        ),
        _ => Attempt::Fail(LlmError::BadRequest { status, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_provider_errors() {
        let q = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(
            classify(429, q, None, 1),
            Attempt::Fail(LlmError::Quota(_))
        ));
        let rl = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert!(
            matches!(classify(429, rl, Some(Duration::from_secs(2)), 1), Attempt::Again(d, _) if d == Duration::from_secs(2))
        );
        assert!(matches!(
            classify(
                401,
                br#"{"error":{"message":"bad key","code":"invalid_api_key"}}"#,
                None,
                1
            ),
            Attempt::Fail(LlmError::Auth(401))
        ));
        assert!(matches!(
            classify(
                402,
                br#"{"error":{"code":402,"message":"no credits"}}"#,
                None,
                1
            ),
            Attempt::Fail(LlmError::Quota(_))
        ));
        assert!(matches!(classify(503, b"", None, 1), Attempt::Again(..)));
        assert!(matches!(
            classify(400, b"{}", None, 1),
            Attempt::Fail(LlmError::BadRequest { status: 400, .. })
        ));
        let in_200 =
            br#"{"id":"gen-1","choices":[],"error":{"code":502,"message":"upstream died"}}"#;
        assert!(matches!(classify(200, in_200, None, 1), Attempt::Again(..)));
        let ok = br#"{"model":"m","choices":[{"message":{"role":"assistant","content":" Hi! "},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#;
        match classify(200, ok, None, 1) {
            Attempt::Done(a) => assert_eq!(
                (a.text.as_str(), a.prompt_tokens, a.completion_tokens),
                ("Hi!", 12, 3)
            ),
            _ => panic!("not done"),
        }
    }

    #[test]
    fn endpoints_follow_the_provider() {
        let s = AiSettings::default();
        assert_eq!(
            endpoint(&s, Some("openrouter"), None).unwrap().base_url,
            "https://openrouter.ai/api/v1"
        );
        assert_eq!(
            endpoint(&s, Some("huggingface"), None).unwrap().base_url,
            "https://router.huggingface.co/v1"
        );
        assert_eq!(
            endpoint(&s, Some("openai_compatible"), Some("http://llm:8000/v1/"))
                .unwrap()
                .base_url,
            "http://llm:8000/v1"
        );
        assert!(endpoint(&s, Some("openai_compatible"), None).is_err());
        assert!(endpoint(&s, None, None).is_err());
    }
}
