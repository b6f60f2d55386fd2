//! Configuration read once at start-up from the environment. A bad value is
//! refused with the name of the variable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::crypto::{KeyError, Keyring};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Default Graph API base (version included).
pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com/v24.0";

/// Everything the services need to run.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: Postgres connection string (may hold a password).
    pub database_url: SecretString,
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `ALPHADOME_NATS_PREFIX`, default `alphadome`: prefix of every stream,
    /// subject and consumer, so several deployments (or tests) can share one
    /// NATS server.
    pub nats_prefix: String,
    /// `ALPHADOME_MASTER_KEY` (+ `ALPHADOME_PREVIOUS_MASTER_KEYS`).
    pub keyring: Arc<Keyring>,
    /// `META_APP_SECRET`: the platform's Meta app secret, used for tenants
    /// without their own.
    pub meta_app_secret: Option<SecretString>,
    /// `META_APP_ID`: with `META_APP_SECRET`, the app token for Meta's
    /// `debug_token` (token expiry checks); the checks use the stored
    /// expiry alone when unset.
    pub meta_app_id: Option<String>,
    /// `WHATSAPP_GRAPH_URL`, default [`DEFAULT_GRAPH_URL`].
    pub graph_url: String,
    /// `ALPHADOME_HTTP_ADDR`, default `0.0.0.0:8080`: the webhook (ingress)
    /// and health endpoints.
    pub http_addr: SocketAddr,
    /// `ALPHADOME_SEND_TIMEOUT_MS`, default 10000: Graph API request timeout.
    pub send_timeout: Duration,
    /// How long a send that may have reached Meta (a time-out, a 5xx)
    /// waits for its status webhook before it is tried again.
    pub send_reconcile_wait: Duration,
    /// `ALPHADOME_TENANT_REFRESH_MS`, default 2000: how often cached tenant
    /// context is checked against the database.
    pub tenant_refresh: Duration,
    /// `ALPHADOME_DEFAULT_FALLBACK_REPLY`: reply when nothing matches and the
    /// tenant set no fallback of its own.
    pub default_fallback_reply: String,
    /// `ALPHADOME_DUPLICATE_WINDOW_SECS`, default 120: JetStream's
    /// publish-deduplication window for streams this deployment creates.
    /// Durable records in Postgres cover what happens after it.
    pub duplicate_window: Duration,
    /// `ALPHADOME_SEND_MPS`, default 80: sends per second per business
    /// phone number (Meta's default throughput; 1000 once upgraded).
    pub send_mps: u32,
    /// `ALPHADOME_PAIR_BURST`, default 45: sends to one recipient allowed in
    /// a burst; sustained, one per 6 seconds (Meta's pair rate limit).
    pub pair_burst: u32,
    /// LLM providers' base URLs and time budget.
    pub ai: AiSettings,
    /// `SMTP_URL` (e.g. `smtp://mail:25`, `smtps://user:pass@host`): where
    /// escalation e-mails go; none are sent when unset.
    pub smtp_url: Option<SecretString>,
    /// `ALPHADOME_SMTP_FROM`, default `Alphadome <alphadome@localhost>`.
    pub smtp_from: String,
}

/// Where each LLM provider is reached, and how long an answer may take.
#[derive(Debug, Clone)]
pub struct AiSettings {
    /// `OPENAI_BASE_URL`, default `https://api.openai.com/v1`.
    pub openai_base: String,
    /// `OPENROUTER_BASE_URL`, default `https://openrouter.ai/api/v1`.
    pub openrouter_base: String,
    /// `HF_BASE_URL`, default `https://router.huggingface.co/v1`.
    pub huggingface_base: String,
    /// `ALPHADOME_AI_TIMEOUT_MS`, default 8000: the whole budget of one
    /// answer, retries included, so the reply stays within seconds.
    pub timeout: Duration,
}

impl Default for AiSettings {
    fn default() -> Self {
        Self {
            openai_base: "https://api.openai.com/v1".into(),
            openrouter_base: "https://openrouter.ai/api/v1".into(),
            huggingface_base: "https://router.huggingface.co/v1".into(),
            timeout: Duration::from_secs(8),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &self.nats_url)
            .field("nats_prefix", &self.nats_prefix)
            .field("keyring", &self.keyring)
            .field(
                "meta_app_secret",
                &self.meta_app_secret.as_ref().map(|_| "********"),
            )
            .field("graph_url", &self.graph_url)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Default reply when nothing matches and no AI is enabled.
pub const DEFAULT_FALLBACK_REPLY: &str = "Thanks for your message! We couldn't find an answer to that right away. A member of our team will get back to you soon.";

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            var: name,
            reason: e.to_string(),
        }),
    }
}

fn url_var(name: &'static str, default: &str) -> Result<String, ConfigError> {
    let v = var(name).unwrap_or_else(|| default.to_owned());
    if v.starts_with("http://") || v.starts_with("https://") {
        Ok(v.trim_end_matches('/').to_owned())
    } else {
        Err(ConfigError::Invalid {
            var: name,
            reason: "must be an http(s) URL".into(),
        })
    }
}

/// `DATABASE_URL`, required.
pub fn database_url() -> Result<SecretString, ConfigError> {
    let url = var("DATABASE_URL").ok_or(ConfigError::Missing("DATABASE_URL"))?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::Invalid {
            var: "DATABASE_URL",
            reason: "must start with postgres:// or postgresql://".into(),
        });
    }
    Ok(SecretString::from(url))
}

/// `NATS_URL`, default `nats://127.0.0.1:4222`.
pub fn nats_url() -> String {
    var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
}

/// `ALPHADOME_NATS_PREFIX`, default `alphadome`; letters, digits, `_`, `-`.
pub fn nats_prefix() -> Result<String, ConfigError> {
    let p = var("ALPHADOME_NATS_PREFIX").unwrap_or_else(|| "alphadome".to_owned());
    if p.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(p)
    } else {
        Err(ConfigError::Invalid {
            var: "ALPHADOME_NATS_PREFIX",
            reason: "only letters, digits, '_' and '-' are allowed".into(),
        })
    }
}

impl Config {
    /// Reads and validates the whole configuration.
    pub fn from_env() -> Result<Self, ConfigError> {
        let graph_url = var("WHATSAPP_GRAPH_URL").unwrap_or_else(|| DEFAULT_GRAPH_URL.to_owned());
        if !(graph_url.starts_with("http://") || graph_url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                var: "WHATSAPP_GRAPH_URL",
                reason: "must be an http(s) URL".into(),
            });
        }
        Ok(Self {
            database_url: database_url()?,
            nats_url: nats_url(),
            nats_prefix: nats_prefix()?,
            keyring: Arc::new(Keyring::from_env()?),
            meta_app_secret: var("META_APP_SECRET").map(SecretString::from),
            meta_app_id: var("META_APP_ID"),
            graph_url: graph_url.trim_end_matches('/').to_owned(),
            http_addr: parse(
                "ALPHADOME_HTTP_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
            )?,
            send_timeout: Duration::from_millis(parse("ALPHADOME_SEND_TIMEOUT_MS", 10_000u64)?),
            send_reconcile_wait: Duration::from_millis(parse(
                "ALPHADOME_SEND_RECONCILE_WAIT_MS",
                15_000u64,
            )?),
            tenant_refresh: Duration::from_millis(parse("ALPHADOME_TENANT_REFRESH_MS", 2_000u64)?),
            default_fallback_reply: var("ALPHADOME_DEFAULT_FALLBACK_REPLY")
                .unwrap_or_else(|| DEFAULT_FALLBACK_REPLY.to_owned()),
            duplicate_window: Duration::from_secs(parse(
                "ALPHADOME_DUPLICATE_WINDOW_SECS",
                120u64,
            )?),
            send_mps: parse("ALPHADOME_SEND_MPS", 80u32)?.max(1),
            pair_burst: parse("ALPHADOME_PAIR_BURST", 45u32)?.max(1),
            ai: AiSettings {
                openai_base: url_var("OPENAI_BASE_URL", "https://api.openai.com/v1")?,
                openrouter_base: url_var("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1")?,
                huggingface_base: url_var("HF_BASE_URL", "https://router.huggingface.co/v1")?,
                timeout: Duration::from_millis(parse("ALPHADOME_AI_TIMEOUT_MS", 8_000u64)?),
            },
            smtp_url: var("SMTP_URL").map(SecretString::from),
            smtp_from: var("ALPHADOME_SMTP_FROM")
                .unwrap_or_else(|| "Alphadome <alphadome@localhost>".to_owned()),
        })
    }
}
