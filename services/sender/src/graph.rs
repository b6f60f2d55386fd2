//! The Graph API's send endpoint (`POST /{phone_number_id}/messages`) with
//! the tenant's token: a bounded number of requests in flight on kept-alive
//! connections, and every failure told apart by whether Meta may have the
//! message (protocols.md 2.6, 2.7).

use alphadome_core::meta::{self, GraphError, SendFailure};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// Most Graph API requests in flight at once per sender: each reuses a
/// kept-alive connection from a pool of this size instead of thousands of
/// sends in hand opening as many connections at once, and the request's
/// time-out runs only from the moment it has its slot, so waiting here is
/// never mistaken for a slow Graph API.
pub const MAX_CONCURRENT_POSTS: usize = 256;

/// Why a send failed.
#[derive(Debug)]
pub enum Failure {
    /// No usable answer (time-out, connection, unreadable body).
    /// `maybe_sent`: the request may have reached Meta (anything but a
    /// failed connection), so Meta may have the message.
    Transport { reason: String, maybe_sent: bool },
    /// Meta answered with an error; `maybe_sent` for a 5xx, after which
    /// Meta may or may not have sent it (protocols.md, sending).
    Meta {
        class: SendFailure,
        error: GraphError,
        maybe_sent: bool,
    },
}

/// The Graph API client shared by all tenants (each request carries the
/// tenant's own token).
pub struct GraphClient {
    http: reqwest::Client,
    base_url: String,
    posts: Semaphore,
}

impl GraphClient {
    /// A client of the Graph API at `base_url` (version included) whose
    /// requests time out after `timeout`.
    pub fn new(base_url: &str, timeout: std::time::Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(MAX_CONCURRENT_POSTS)
                .build()?,
            base_url: base_url.to_owned(),
            posts: Semaphore::new(MAX_CONCURRENT_POSTS),
        })
    }

    /// Sends one message from `pnid`; returns Meta's wamid for it.
    pub async fn send(
        &self,
        pnid: &str,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Result<String, Failure> {
        let bytes = self.post(pnid, token, body).await?;
        meta::sent_wamid(&bytes).ok_or_else(|| Failure::Transport {
            reason: "Graph API answered 2xx without messages[0].id".into(),
            maybe_sent: true,
        })
    }

    /// Marks a customer's message read (with the typing indicator when the
    /// body asks for it): Meta answers `{"success": true}`.
    pub async fn mark_read(
        &self,
        pnid: &str,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Result<(), Failure> {
        let bytes = self.post(pnid, token, body).await?;
        let ok = serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v["success"] == serde_json::Value::Bool(true));
        if ok {
            Ok(())
        } else {
            Err(Failure::Transport {
                reason: "Graph API answered 2xx without success: true".into(),
                maybe_sent: true,
            })
        }
    }

    /// Posts `body` to the number's messages endpoint; the answer's body
    /// when it is a 2xx.
    async fn post(
        &self,
        pnid: &str,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Result<bytes::Bytes, Failure> {
        let url = format!("{}/{}/messages", self.base_url, pnid);
        let _slot = self.posts.acquire().await.ok();
        let resp = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| Failure::Transport {
                reason: format!("Graph API request failed: {}", without_url(&e)),
                maybe_sent: !e.is_connect(),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Failure::Transport {
            reason: format!("Graph API response unreadable: {}", without_url(&e)),
            maybe_sent: true,
        })?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let (class, error) = meta::classify_send_error(status, &bytes);
        Err(Failure::Meta {
            class,
            error,
            maybe_sent: status >= 500,
        })
    }
}

/// reqwest errors carry the URL; keep it out of logs (it names the number).
fn without_url(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request error"
    }
}
