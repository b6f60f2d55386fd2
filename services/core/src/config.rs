//! The platform's configuration: every setting in one typed struct
//! ([`Settings`]), read once at start-up from the environment (each
//! variable also has a command-line flag), so `alphadome run --help` lists
//! them all with their defaults. A bad value stops start-up with a message
//! naming the variable; secrets are never echoed, in help or in errors.
//!
//! [`Settings`] is what was given; [`Config`] is what the services run
//! with, validated and resolved (the master keys parsed, durations made).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::ArgAction;
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
/// Default reply when nothing matches and no AI is enabled.
pub const DEFAULT_FALLBACK_REPLY: &str = "Thanks for your message! We couldn't find an answer to that right away. A member of our team will get back to you soon.";
/// Default NATS server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default prefix of streams, subjects and consumers.
pub const DEFAULT_NATS_PREFIX: &str = "alphadome";
/// Default sender of e-mails.
pub const DEFAULT_SMTP_FROM: &str = "Alphadome <alphadome@localhost>";
/// Default country code of national phone numbers (Kenya).
pub const DEFAULT_COUNTRY_CODE: &str = "254";
const DEFAULT_OPENAI_BASE: &str = "https://api.openai.com/v1";
const DEFAULT_OPENROUTER_BASE: &str = "https://openrouter.ai/api/v1";
const DEFAULT_HF_BASE: &str = "https://router.huggingface.co/v1";

fn secret(v: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(v.to_owned()))
}

fn http_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.starts_with("http://") || v.starts_with("https://") {
        Ok(v.trim_end_matches('/').to_owned())
    } else {
        Err("must be an http(s) URL".into())
    }
}

fn nats_prefix(v: &str) -> Result<String, String> {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(v.to_owned())
    } else {
        Err("only letters, digits, '_' and '-' are allowed".into())
    }
}

fn country_code(v: &str) -> Result<String, String> {
    let v = v.trim().trim_start_matches('+');
    if (1..=3).contains(&v.len()) && v.chars().all(|c| c.is_ascii_digit()) {
        Ok(v.to_owned())
    } else {
        Err("must be a country calling code of 1 to 3 digits, such as 254".into())
    }
}

fn log_filter(v: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(v)
        .map(|_| v.to_owned())
        .map_err(|e| e.to_string())
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of the platform. Each field is read from the environment
/// variable named in its `env` (or its flag); empty variables count as
/// unset. Fields without a default are optional here; the commands that
/// need them ask for them ([`Settings::database_url`], [`Settings::keyring`]).
#[derive(Clone, clap::Args)]
pub struct Settings {
    /// PostgreSQL URL (may hold a password).
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", value_parser = secret,
          hide_env_values = true, global = true, help_heading = "Connections")]
    pub database_url: Option<SecretString>,
    /// NATS server (JetStream enabled).
    #[arg(long, env = "NATS_URL", value_name = "NATS_URL", default_value = DEFAULT_NATS_URL,
          global = true, help_heading = "Connections")]
    pub nats_url: String,
    /// Prefix of every stream, subject and consumer, so several deployments
    /// (or tests) share one NATS server.
    #[arg(long, env = "ALPHADOME_NATS_PREFIX", value_name = "ALPHADOME_NATS_PREFIX",
          default_value = DEFAULT_NATS_PREFIX, value_parser = nats_prefix, global = true,
          help_heading = "Connections")]
    pub nats_prefix: String,
    /// Webhook, health, metrics and admin API address.
    #[arg(
        long,
        env = "ALPHADOME_HTTP_ADDR",
        value_name = "ALPHADOME_HTTP_ADDR",
        default_value = "0.0.0.0:8080",
        global = true,
        help_heading = "Connections"
    )]
    pub http_addr: SocketAddr,
    /// How long a request may take, body included, before it is answered
    /// 408 (and, unauthenticated, counted as a failure of its address), in
    /// milliseconds.
    #[arg(long, env = "ALPHADOME_REQUEST_TIMEOUT_MS", value_name = "ALPHADOME_REQUEST_TIMEOUT_MS",
          default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..),
          global = true, help_heading = "Connections")]
    pub request_timeout_ms: u64,
    /// How long a connection may take to send a request's headers before it
    /// is closed, in milliseconds (also the most a kept-alive connection
    /// waits idle for its next request).
    #[arg(long, env = "ALPHADOME_HEADER_TIMEOUT_MS", value_name = "ALPHADOME_HEADER_TIMEOUT_MS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..),
          global = true, help_heading = "Connections")]
    pub header_timeout_ms: u64,
    /// Connections one client address may hold open (not applied behind a
    /// trusted proxy, where every connection comes from the proxy).
    #[arg(long, env = "ALPHADOME_MAX_CONNECTIONS_PER_SOURCE", value_name = "ALPHADOME_MAX_CONNECTIONS_PER_SOURCE",
          default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..),
          global = true, help_heading = "Connections")]
    pub max_connections_per_source: u32,
    /// Webhook requests one client address may have in flight at once.
    #[arg(long, env = "ALPHADOME_MAX_REQUESTS_PER_SOURCE", value_name = "ALPHADOME_MAX_REQUESTS_PER_SOURCE",
          default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..),
          global = true, help_heading = "Connections")]
    pub max_requests_per_source: u32,
    /// Postgres connections of the responder and the sender each (ingress,
    /// logger and the process itself take half).
    #[arg(long, env = "ALPHADOME_DB_POOL_SIZE", value_name = "ALPHADOME_DB_POOL_SIZE",
          default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=256),
          global = true, help_heading = "Connections")]
    pub db_pool_size: u32,

    /// Base64 of 32 random bytes: encrypts tenant credentials
    /// (`alphadome keys generate`).
    #[arg(long, env = "ALPHADOME_MASTER_KEY", value_name = "ALPHADOME_MASTER_KEY",
          value_parser = secret, hide_env_values = true, global = true, help_heading = "Secrets")]
    pub master_key: Option<SecretString>,
    /// Older master keys, comma-separated, still accepted for decryption
    /// while a key rotation runs.
    #[arg(long, env = "ALPHADOME_PREVIOUS_MASTER_KEYS", value_name = "ALPHADOME_PREVIOUS_MASTER_KEYS",
          value_parser = secret, hide_env_values = true, global = true, help_heading = "Secrets")]
    pub previous_master_keys: Option<SecretString>,
    /// The platform's Meta app secret: verifies webhooks of tenants without
    /// their own `whatsapp_app_secret`.
    #[arg(long, env = "META_APP_SECRET", value_name = "META_APP_SECRET", value_parser = secret,
          hide_env_values = true, global = true, help_heading = "Secrets")]
    pub meta_app_secret: Option<SecretString>,
    /// With META_APP_SECRET, lets the admin service ask Meta's `debug_token`
    /// about tenants' token expiry.
    #[arg(
        long,
        env = "META_APP_ID",
        value_name = "META_APP_ID",
        global = true,
        help_heading = "Secrets"
    )]
    pub meta_app_id: Option<String>,
    /// Enables the read-only admin API with this bearer token (16 or more
    /// characters).
    #[arg(long, env = "ALPHADOME_ADMIN_TOKEN", value_name = "ALPHADOME_ADMIN_TOKEN",
          value_parser = secret, hide_env_values = true, global = true, help_heading = "Secrets")]
    pub admin_token: Option<SecretString>,

    /// Graph API base, version included.
    #[arg(long, env = "WHATSAPP_GRAPH_URL", value_name = "WHATSAPP_GRAPH_URL",
          default_value = DEFAULT_GRAPH_URL, value_parser = http_url, global = true,
          help_heading = "WhatsApp")]
    pub graph_url: String,
    /// Graph API request time-out, in milliseconds.
    #[arg(long, env = "ALPHADOME_SEND_TIMEOUT_MS", value_name = "ALPHADOME_SEND_TIMEOUT_MS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..),
          global = true, help_heading = "WhatsApp")]
    pub send_timeout_ms: u64,
    /// After a send that may have reached Meta without an answer (time-out,
    /// 5xx), how long to wait for its status webhook before trying again.
    #[arg(
        long,
        env = "ALPHADOME_SEND_RECONCILE_WAIT_MS",
        value_name = "ALPHADOME_SEND_RECONCILE_WAIT_MS",
        default_value_t = 15_000,
        global = true,
        help_heading = "WhatsApp"
    )]
    pub send_reconcile_wait_ms: u64,
    /// Sends per second per business phone number (Meta's default throughput).
    #[arg(long, env = "ALPHADOME_SEND_MPS", value_name = "ALPHADOME_SEND_MPS",
          default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..),
          global = true, help_heading = "WhatsApp")]
    pub send_mps: u32,
    /// Sends to one recipient allowed in a burst (sustained: one per 6 s).
    #[arg(long, env = "ALPHADOME_PAIR_BURST", value_name = "ALPHADOME_PAIR_BURST",
          default_value_t = 45, value_parser = clap::value_parser!(u32).range(1..),
          global = true, help_heading = "WhatsApp")]
    pub pair_burst: u32,
    /// JetStream publish-deduplication window of new streams, in seconds.
    #[arg(long, env = "ALPHADOME_DUPLICATE_WINDOW_SECS", value_name = "ALPHADOME_DUPLICATE_WINDOW_SECS",
          default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..),
          global = true, help_heading = "WhatsApp")]
    pub duplicate_window_secs: u64,
    /// Behind a reverse proxy: take the client address from the last
    /// X-Forwarded-For hop.
    #[arg(long, env = "ALPHADOME_TRUST_X_FORWARDED_FOR", value_name = "ALPHADOME_TRUST_X_FORWARDED_FOR",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value_t = false,
          global = true, help_heading = "WhatsApp")]
    pub trust_x_forwarded_for: bool,
    /// Messages the sender works on at once.
    #[arg(long, env = "ALPHADOME_SENDER_IN_HAND", value_name = "ALPHADOME_SENDER_IN_HAND",
          default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65_536),
          global = true, help_heading = "WhatsApp")]
    pub sender_in_hand: u32,

    /// How often cached tenant context is checked against the database, in
    /// milliseconds.
    #[arg(long, env = "ALPHADOME_TENANT_REFRESH_MS", value_name = "ALPHADOME_TENANT_REFRESH_MS",
          default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..),
          global = true, help_heading = "Answering")]
    pub tenant_refresh_ms: u64,
    /// Reply when nothing matches and the tenant set no fallback of its own.
    #[arg(long, env = "ALPHADOME_DEFAULT_FALLBACK_REPLY", value_name = "ALPHADOME_DEFAULT_FALLBACK_REPLY",
          default_value = DEFAULT_FALLBACK_REPLY, hide_default_value = true, global = true,
          help_heading = "Answering")]
    pub default_fallback_reply: String,
    /// Country calling code of national phone numbers (written with a leading 0).
    #[arg(long, env = "ALPHADOME_DEFAULT_COUNTRY_CODE", value_name = "ALPHADOME_DEFAULT_COUNTRY_CODE",
          default_value = DEFAULT_COUNTRY_CODE, value_parser = country_code, global = true,
          help_heading = "Answering")]
    pub default_country_code: String,
    /// Messages the responder works on at once.
    #[arg(long, env = "ALPHADOME_RESPONDER_IN_HAND", value_name = "ALPHADOME_RESPONDER_IN_HAND",
          default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_536),
          global = true, help_heading = "Answering")]
    pub responder_in_hand: u32,
    /// LLM calls one tenant may have under way at once per responder.
    #[arg(long, env = "ALPHADOME_AI_CALLS_PER_TENANT", value_name = "ALPHADOME_AI_CALLS_PER_TENANT",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096),
          global = true, help_heading = "Answering")]
    pub ai_calls_per_tenant: u32,
    /// Time budget of one AI answer, retries included, in milliseconds.
    #[arg(long, env = "ALPHADOME_AI_TIMEOUT_MS", value_name = "ALPHADOME_AI_TIMEOUT_MS",
          default_value_t = 8_000, value_parser = clap::value_parser!(u64).range(1..),
          global = true, help_heading = "Answering")]
    pub ai_timeout_ms: u64,
    /// OpenAI's API base.
    #[arg(long, env = "OPENAI_BASE_URL", value_name = "OPENAI_BASE_URL",
          default_value = DEFAULT_OPENAI_BASE, value_parser = http_url, global = true,
          help_heading = "Answering")]
    pub openai_base_url: String,
    /// OpenRouter's API base.
    #[arg(long, env = "OPENROUTER_BASE_URL", value_name = "OPENROUTER_BASE_URL",
          default_value = DEFAULT_OPENROUTER_BASE, value_parser = http_url, global = true,
          help_heading = "Answering")]
    pub openrouter_base_url: String,
    /// The Hugging Face router's API base.
    #[arg(long, env = "HF_BASE_URL", value_name = "HF_BASE_URL", default_value = DEFAULT_HF_BASE,
          value_parser = http_url, global = true, help_heading = "Answering")]
    pub hf_base_url: String,
    /// SMTP server for escalation and alert e-mails (`smtp://host:25`,
    /// `smtps://user:pass@host:465`); none are sent when unset.
    #[arg(long, env = "SMTP_URL", value_name = "SMTP_URL", value_parser = secret,
          hide_env_values = true, global = true, help_heading = "Answering")]
    pub smtp_url: Option<SecretString>,
    /// Sender of e-mails.
    #[arg(long, env = "ALPHADOME_SMTP_FROM", value_name = "ALPHADOME_SMTP_FROM",
          default_value = DEFAULT_SMTP_FROM, global = true, help_heading = "Answering")]
    pub smtp_from: String,
    /// Directory of the local sentence-embedding model (all-MiniLM-L6-v2:
    /// config.json, tokenizer.json, model.safetensors; scripts/setup.sh
    /// installs it). Without it the responder matches FAQs by their words
    /// only.
    #[arg(
        long,
        env = "ALPHADOME_EMBEDDING_MODEL",
        value_name = "ALPHADOME_EMBEDDING_MODEL",
        global = true,
        help_heading = "Answering"
    )]
    pub embedding_model: Option<std::path::PathBuf>,
    /// How long a message waits for the model, in milliseconds, before it
    /// is matched by its words alone (the model never holds a reply up for
    /// longer, however many new texts arrive at once).
    #[arg(long, env = "ALPHADOME_EMBEDDING_BUDGET_MS", value_name = "ALPHADOME_EMBEDDING_BUDGET_MS",
          default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000),
          global = true, help_heading = "Answering")]
    pub embedding_budget_ms: u64,

    /// How often the admin service checks tokens and sends expiry alerts,
    /// in seconds.
    #[arg(long, env = "ALPHADOME_TOKEN_CHECK_SECS", value_name = "ALPHADOME_TOKEN_CHECK_SECS",
          default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..),
          global = true, help_heading = "Administration")]
    pub token_check_secs: u64,
    /// `tenant list` flags webhook verify tokens older than this many days.
    #[arg(long, env = "ALPHADOME_VERIFY_TOKEN_MAX_AGE_DAYS", value_name = "ALPHADOME_VERIFY_TOKEN_MAX_AGE_DAYS",
          default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36_500),
          global = true, help_heading = "Administration")]
    pub verify_token_max_age_days: u32,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", value_name = "RUST_LOG", default_value = "info",
          value_parser = log_filter, global = true, help_heading = "Observability")]
    pub log_filter: String,
    /// Log format.
    #[arg(long, env = "ALPHADOME_LOG_FORMAT", value_name = "ALPHADOME_LOG_FORMAT",
          value_enum, default_value_t = LogFormat::Text, global = true,
          help_heading = "Observability")]
    pub log_format: LogFormat,
    /// Exports traces over OTLP/HTTP to this collector (its base URL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "OTEL_EXPORTER_OTLP_ENDPOINT",
          value_parser = http_url, global = true, help_heading = "Observability")]
    pub otlp_endpoint: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("nats_url", &self.nats_url)
            .field("nats_prefix", &self.nats_prefix)
            .field("http_addr", &self.http_addr)
            .field("graph_url", &self.graph_url)
            .finish_non_exhaustive()
    }
}

/// Environment variables that hold secrets (never shown).
pub const SECRET_VARS: [&str; 6] = [
    "DATABASE_URL",
    "ALPHADOME_MASTER_KEY",
    "ALPHADOME_PREVIOUS_MASTER_KEYS",
    "META_APP_SECRET",
    "ALPHADOME_ADMIN_TOKEN",
    "SMTP_URL",
];

impl Settings {
    /// `DATABASE_URL`, required by every command that uses the database.
    pub fn database_url(&self) -> Result<SecretString, ConfigError> {
        let url = self
            .database_url
            .clone()
            .ok_or(ConfigError::Missing("DATABASE_URL"))?;
        let s = secrecy::ExposeSecret::expose_secret(&url);
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(url)
        } else {
            Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: "must start with postgres:// or postgresql://".into(),
            })
        }
    }

    /// The master keys, required by every command that handles credentials.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        use secrecy::ExposeSecret;
        let current = self
            .master_key
            .as_ref()
            .map(|k| k.expose_secret().trim().to_owned())
            .filter(|k| !k.is_empty())
            .ok_or(KeyError::Missing(crate::crypto::MASTER_KEY_VAR))?;
        let previous = self
            .previous_master_keys
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .unwrap_or_default();
        let previous: Vec<&str> = previous
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Keyring::from_base64(&current, &previous)?)
    }

    /// The admin API token, if one is set: refused when shorter than 16
    /// characters (a guessable token must not open the API).
    pub fn admin_token(&self) -> Result<Option<SecretString>, ConfigError> {
        use secrecy::ExposeSecret;
        match &self.admin_token {
            Some(t) if t.expose_secret().chars().count() < 16 => Err(ConfigError::Invalid {
                var: "ALPHADOME_ADMIN_TOKEN",
                reason: "must be at least 16 characters".into(),
            }),
            other => Ok(other.clone()),
        }
    }

    /// What the logs and traces need.
    pub fn telemetry(&self) -> TelemetrySettings {
        TelemetrySettings {
            filter: self.log_filter.clone(),
            format: self.log_format,
            otlp_endpoint: self.otlp_endpoint.clone(),
        }
    }

    /// The whole configuration the services run with.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Ok(Config {
            database_url: self.database_url()?,
            nats_url: self.nats_url.clone(),
            nats_prefix: self.nats_prefix.clone(),
            keyring: Arc::new(self.keyring()?),
            meta_app_secret: self.meta_app_secret.clone(),
            meta_app_id: self.meta_app_id.clone(),
            graph_url: self.graph_url.clone(),
            http_addr: self.http_addr,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_connections_per_source: self.max_connections_per_source as usize,
            max_requests_per_source: self.max_requests_per_source as usize,
            send_timeout: Duration::from_millis(self.send_timeout_ms),
            send_reconcile_wait: Duration::from_millis(self.send_reconcile_wait_ms),
            tenant_refresh: Duration::from_millis(self.tenant_refresh_ms),
            default_fallback_reply: self.default_fallback_reply.clone(),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            send_mps: self.send_mps,
            pair_burst: self.pair_burst,
            trust_x_forwarded_for: self.trust_x_forwarded_for,
            ai: AiSettings {
                openai_base: self.openai_base_url.clone(),
                openrouter_base: self.openrouter_base_url.clone(),
                huggingface_base: self.hf_base_url.clone(),
                timeout: Duration::from_millis(self.ai_timeout_ms),
                calls_per_tenant: self.ai_calls_per_tenant as usize,
            },
            smtp_url: self.smtp_url.clone(),
            smtp_from: self.smtp_from.clone(),
            embedding_model: self
                .embedding_model
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            embedding_budget: Duration::from_millis(self.embedding_budget_ms),
            country_code: self.default_country_code.clone(),
            db_pool_size: self.db_pool_size,
            responder_in_hand: self.responder_in_hand as usize,
            sender_in_hand: self.sender_in_hand as usize,
            admin_token: self.admin_token()?,
            token_check_every: Duration::from_secs(self.token_check_secs),
            verify_token_max_age_days: self.verify_token_max_age_days,
        })
    }
}

/// What [`crate::telemetry::init`] needs.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `RUST_LOG`.
    pub filter: String,
    /// `ALPHADOME_LOG_FORMAT`.
    pub format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// Everything the services need to run (see [`Settings`] for what each
/// field means and which variable sets it).
#[derive(Clone)]
pub struct Config {
    pub database_url: SecretString,
    pub nats_url: String,
    pub nats_prefix: String,
    pub keyring: Arc<Keyring>,
    pub meta_app_secret: Option<SecretString>,
    pub meta_app_id: Option<String>,
    pub graph_url: String,
    pub http_addr: SocketAddr,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections_per_source: usize,
    pub max_requests_per_source: usize,
    pub send_timeout: Duration,
    pub send_reconcile_wait: Duration,
    pub tenant_refresh: Duration,
    pub default_fallback_reply: String,
    pub duplicate_window: Duration,
    pub send_mps: u32,
    pub pair_burst: u32,
    pub trust_x_forwarded_for: bool,
    pub ai: AiSettings,
    pub smtp_url: Option<SecretString>,
    pub smtp_from: String,
    pub embedding_model: Option<std::path::PathBuf>,
    pub embedding_budget: Duration,
    pub country_code: String,
    pub db_pool_size: u32,
    pub responder_in_hand: usize,
    pub sender_in_hand: usize,
    pub admin_token: Option<SecretString>,
    pub token_check_every: Duration,
    pub verify_token_max_age_days: u32,
}

impl Config {
    /// The defaults of every setting, with the two that have none.
    pub fn new(database_url: SecretString, keyring: Arc<Keyring>) -> Self {
        Self {
            database_url,
            nats_url: DEFAULT_NATS_URL.into(),
            nats_prefix: DEFAULT_NATS_PREFIX.into(),
            keyring,
            meta_app_secret: None,
            meta_app_id: None,
            graph_url: DEFAULT_GRAPH_URL.into(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            request_timeout: Duration::from_secs(15),
            header_timeout: Duration::from_secs(10),
            max_connections_per_source: 1024,
            max_requests_per_source: 512,
            send_timeout: Duration::from_secs(10),
            send_reconcile_wait: Duration::from_secs(15),
            tenant_refresh: Duration::from_secs(2),
            default_fallback_reply: DEFAULT_FALLBACK_REPLY.into(),
            duplicate_window: Duration::from_secs(120),
            send_mps: 80,
            pair_burst: 45,
            trust_x_forwarded_for: false,
            ai: AiSettings::default(),
            smtp_url: None,
            smtp_from: DEFAULT_SMTP_FROM.into(),
            embedding_model: None,
            embedding_budget: Duration::from_millis(50),
            country_code: DEFAULT_COUNTRY_CODE.into(),
            db_pool_size: 8,
            responder_in_hand: 512,
            sender_in_hand: 2048,
            admin_token: None,
            token_check_every: Duration::from_secs(3600),
            verify_token_max_age_days: 90,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &self.nats_url)
            .field("nats_prefix", &self.nats_prefix)
            .field("keyring", &self.keyring)
            .field("graph_url", &self.graph_url)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Where each LLM provider is reached, how long an answer may take, and
/// how many calls one tenant may have under way.
#[derive(Debug, Clone)]
pub struct AiSettings {
    pub openai_base: String,
    pub openrouter_base: String,
    pub huggingface_base: String,
    /// The whole budget of one answer, retries included, so the reply stays
    /// within seconds.
    pub timeout: Duration,
    /// LLM calls one tenant may have under way at once per responder.
    pub calls_per_tenant: usize,
}

impl Default for AiSettings {
    fn default() -> Self {
        Self {
            openai_base: DEFAULT_OPENAI_BASE.into(),
            openrouter_base: DEFAULT_OPENROUTER_BASE.into(),
            huggingface_base: DEFAULT_HF_BASE.into(),
            timeout: Duration::from_secs(8),
            calls_per_tenant: 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use secrecy::ExposeSecret;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Cli::try_parse_from(std::iter::once("alphadome").chain(args.iter().copied()))
            .map(|c| c.settings)
    }

    #[test]
    fn every_default_matches_config_new() {
        let mut s = parse(&[
            "--database-url",
            "postgres://localhost/x",
            "--master-key",
            &Keyring::generate_key(),
        ])
        .unwrap();
        // The environment of the test run may set these.
        s.log_filter = "info".into();
        let c = s.config().unwrap();
        let d = Config::new(c.database_url.clone(), c.keyring.clone());
        assert_eq!(
            format!(
                "{:?}",
                (
                    c.send_timeout,
                    c.send_reconcile_wait,
                    c.tenant_refresh,
                    c.duplicate_window
                )
            ),
            format!(
                "{:?}",
                (
                    d.send_timeout,
                    d.send_reconcile_wait,
                    d.tenant_refresh,
                    d.duplicate_window
                )
            )
        );
        assert_eq!(
            (
                c.send_mps,
                c.pair_burst,
                c.db_pool_size,
                c.responder_in_hand,
                c.sender_in_hand
            ),
            (
                d.send_mps,
                d.pair_burst,
                d.db_pool_size,
                d.responder_in_hand,
                d.sender_in_hand
            )
        );
        assert_eq!(c.ai.calls_per_tenant, d.ai.calls_per_tenant);
        assert_eq!(c.country_code, d.country_code);
        assert_eq!(c.verify_token_max_age_days, d.verify_token_max_age_days);
        assert_eq!(c.token_check_every, d.token_check_every);
        assert_eq!(
            (c.request_timeout, c.header_timeout),
            (d.request_timeout, d.header_timeout)
        );
        assert_eq!(
            (c.max_connections_per_source, c.max_requests_per_source),
            (d.max_connections_per_source, d.max_requests_per_source)
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = parse(&["--send-timeout-ms", "soon"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ALPHADOME_SEND_TIMEOUT_MS"), "{e}");
        let e = parse(&["--graph-url", "ftp://x"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("WHATSAPP_GRAPH_URL") && e.contains("http(s)"),
            "{e}"
        );
        let e = parse(&["--db-pool-size", "1"]).err().unwrap().to_string();
        assert!(e.contains("ALPHADOME_DB_POOL_SIZE"), "{e}");
        let e = parse(&["--default-country-code", "kenya"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ALPHADOME_DEFAULT_COUNTRY_CODE"), "{e}");
    }

    #[test]
    fn secrets_are_checked_without_being_echoed() {
        let s = parse(&["--master-key", "not-base64-secret!"]).unwrap();
        let e = s.keyring().err().unwrap().to_string();
        assert!(
            e.contains("ALPHADOME_MASTER_KEY") && !e.contains("not-base64-secret"),
            "{e}"
        );
        let s = parse(&["--database-url", "mysql://user:hunter2@host/db"]).unwrap();
        let e = s.database_url().err().unwrap().to_string();
        assert!(e.contains("DATABASE_URL") && !e.contains("hunter2"), "{e}");
        let s = parse(&["--admin-token", "short-secret"]).unwrap();
        let e = s.admin_token().err().unwrap().to_string();
        assert!(
            e.contains("ALPHADOME_ADMIN_TOKEN") && !e.contains("short-secret"),
            "{e}"
        );
        let s = parse(&["--admin-token", "a-long-enough-admin-token"]).unwrap();
        assert_eq!(
            s.admin_token().unwrap().unwrap().expose_secret(),
            "a-long-enough-admin-token"
        );
        assert!(!format!("{s:?}").contains("a-long-enough-admin-token"));
    }
}
