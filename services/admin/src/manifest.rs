//! Tenant manifests: a YAML (or JSON) document with the keys `tenant`,
//! `control_settings`, `templates` and `training_data`, named exactly as
//! the schema report's columns, applied as the whole truth about one tenant.
//!
//! Parsing validates everything it can (unknown keys, enumerations, ranges,
//! phone numbers, `${VAR}` references in secret fields), so serde reports
//! the field path, line and column. [`apply`] then upserts by
//! `client_phone` in one transaction: a second apply of the same file
//! changes no row; rows dropped from the file are deactivated, not deleted,
//! so message logs keep their references.

use std::collections::HashSet;

use alphadome_core::crypto::{self, Keyring, SecretColumn};
use alphadome_core::tenant::messaging::{check_templates, BusinessHours, WhatsAppTemplate};
use alphadome_core::tenant::store::{
    self as tenants, Existing, SettingsWrite, TemplateWrite, TenantWrite, TrainingWrite,
};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::phone;

/// Why a manifest was refused. Nothing is written when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{field}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        field: String,
        line: Option<usize>,
        message: String,
    },
    #[error("writing the tenant")]
    Database(#[from] sqlx::Error),
}

/// A phone number: as written until [`Manifest::parse`] normalises it to
/// international digits (with the configured country code for national
/// numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(pub String);

impl<'de> Deserialize<'de> for Phone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Phone(PhoneInput::deserialize(d)?.0))
    }
}

/// Accepts a phone number written as a string or a bare YAML number.
struct PhoneInput(String);

impl<'de> Deserialize<'de> for PhoneInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(u64),
        }
        Ok(PhoneInput(match Either::deserialize(d)? {
            Either::S(s) => s,
            Either::N(n) => n.to_string(),
        }))
    }
}

/// A value that may be `${VAR}`, read from the environment at parse time.
/// Debug never shows it.
#[derive(Clone)]
pub struct SecretInput(pub SecretString);

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretInput(********)")
    }
}

thread_local! {
    /// Whether `${VAR}` references are read from the environment: only for
    /// manifests an operator applies, never for one sent over the API.
    static ENV_REFERENCES: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn interpolate(raw: &str) -> Result<String, String> {
    let t = raw.trim();
    if !ENV_REFERENCES.with(|e| e.get()) {
        return if t.contains("${") {
            Err("`${...}` references are read only by `alphadome tenant apply`; give the value itself".to_owned())
        } else {
            Ok(raw.to_owned())
        };
    }
    if let Some(name) = t.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{t}` is not a valid ${{VARIABLE}} reference"));
        }
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("environment variable {name} is not set")),
        }
    } else if t.contains("${") {
        Err("a ${VARIABLE} reference must be the whole value".to_owned())
    } else {
        Ok(raw.to_owned())
    }
}

impl<'de> Deserialize<'de> for SecretInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let v = interpolate(&raw).map_err(serde::de::Error::custom)?;
        if v.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(SecretInput(SecretString::from(v)))
    }
}

/// A plain string that may be `${VAR}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let v = interpolate(&raw).map_err(serde::de::Error::custom)?;
        if v.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(EnvString(v.trim().to_owned()))
    }
}

/// `bot_tenants.ai_provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiProvider {
    Openai,
    Openrouter,
    Huggingface,
    OpenaiCompatible,
}

impl AiProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            AiProvider::Openai => "openai",
            AiProvider::Openrouter => "openrouter",
            AiProvider::Huggingface => "huggingface",
            AiProvider::OpenaiCompatible => "openai_compatible",
        }
    }
}

/// `bot_templates.tone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    Professional,
    Friendly,
}

impl Tone {
    pub fn as_str(self) -> &'static str {
        match self {
            Tone::Professional => "professional",
            Tone::Friendly => "friendly",
        }
    }
}

/// `bot_training_data.data_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    Faq,
    CannedReply,
    Example,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Faq => "faq",
            DataType::CannedReply => "canned_reply",
            DataType::Example => "example",
        }
    }
}

/// A number in 0.0..=1.0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence(pub f64);

impl<'de> Deserialize<'de> for Confidence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&v) {
            Ok(Confidence(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v} is outside 0.0 to 1.0"
            )))
        }
    }
}

/// `max_response_length`: 1 to 4096 (WhatsApp's text limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLength(pub i32);

impl<'de> Deserialize<'de> for ResponseLength {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if (1..=4096).contains(&v) {
            Ok(ResponseLength(v as i32))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v} is outside 1 to 4096"
            )))
        }
    }
}

/// A non-negative limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub i32);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        i32::try_from(v)
            .ok()
            .filter(|v| *v >= 0)
            .map(Limit)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{v} must be between 0 and 2147483647"))
            })
    }
}

/// A plausible e-mail address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(pub String);

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?.trim().to_owned();
        let ok = v
            .split_once('@')
            .is_some_and(|(l, dom)| !l.is_empty() && dom.contains('.') && !dom.starts_with('.'))
            && !v.contains(char::is_whitespace);
        if ok {
            Ok(Email(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v:?} is not an e-mail address"
            )))
        }
    }
}

fn object<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Object(_) => Ok(v),
        serde_json::Value::Null => Ok(serde_json::json!({})),
        _ => Err(serde::de::Error::custom("must be a mapping")),
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// The `tenant` section (columns of `bot_tenants`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub client_name: String,
    pub client_phone: Phone,
    pub client_email: Option<Email>,
    pub brand_id: Option<Uuid>,
    pub point_of_contact_name: Option<String>,
    pub point_of_contact_phone: Option<Phone>,
    pub whatsapp_phone_number_id: Option<EnvString>,
    pub whatsapp_business_account_id: Option<EnvString>,
    pub whatsapp_access_token: Option<SecretInput>,
    pub whatsapp_token_expires_at: Option<DateTime<Utc>>,
    pub whatsapp_app_secret: Option<SecretInput>,
    pub ai_provider: Option<AiProvider>,
    pub ai_api_key: Option<SecretInput>,
    pub ai_model: Option<String>,
    pub ai_base_url: Option<String>,
    pub is_active: Option<bool>,
    pub is_verified: Option<bool>,
    pub webhook_verify_token: Option<SecretInput>,
    pub webhook_url: Option<String>,
    #[serde(default = "empty_object", deserialize_with = "object")]
    pub metadata: serde_json::Value,
}

/// The `control_settings` section (columns of `bot_control_settings`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSpec {
    #[serde(default = "yes")]
    pub is_bot_enabled: bool,
    pub max_messages_per_hour: Option<Limit>,
    pub max_messages_per_user_per_day: Option<Limit>,
    #[serde(default)]
    pub enable_ai_responses: bool,
    #[serde(default)]
    pub enable_payment_flow: bool,
    #[serde(default)]
    pub enable_training_mode: bool,
    #[serde(default = "yes")]
    pub enable_auto_reply: bool,
    #[serde(default = "yes")]
    pub log_conversations: bool,
    #[serde(default = "yes")]
    pub log_errors: bool,
    pub escalation_phone: Option<Phone>,
    pub escalation_email: Option<Email>,
    pub fallback_reply: Option<String>,
    /// Minutes the bot stays quiet in a conversation handed to a human.
    pub handoff_pause_minutes: Option<Limit>,
    /// Opening hours; none: always open.
    pub business_hours: Option<BusinessHours>,
    /// What the bot says out of hours (its default when none).
    pub out_of_hours_reply: Option<String>,
    /// Whether the bot still answers out of hours, with the note.
    #[serde(default = "yes")]
    pub answer_out_of_hours: bool,
    /// Sent before the first answer of a new conversation.
    pub greeting_message: Option<String>,
    /// Whether answered messages are marked read (with typing while the AI writes).
    #[serde(default = "yes")]
    pub send_read_receipts: bool,
    /// The tenant's own words for STOP and START.
    #[serde(default)]
    pub opt_out_keywords: Vec<String>,
    #[serde(default)]
    pub opt_in_keywords: Vec<String>,
    /// Messages of one customer within this many milliseconds of each other
    /// are answered once, as one question (0: each on its own; default 1500).
    pub debounce_ms: Option<Limit>,
    #[serde(default = "empty_object", deserialize_with = "object")]
    pub metadata: serde_json::Value,
}

fn yes() -> bool {
    true
}

/// The debounce time of a tenant that sets none.
pub const DEFAULT_DEBOUNCE_MS: i32 = 1500;
/// The longest debounce time (the column's check).
pub const MAX_DEBOUNCE_MS: i32 = 10_000;

/// One of `templates` (columns of `bot_templates`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub template_name: String,
    pub description: Option<String>,
    pub system_prompt: Option<String>,
    #[serde(default = "empty_object", deserialize_with = "object")]
    pub conversation_context: serde_json::Value,
    pub tone: Option<Tone>,
    pub max_response_length: Option<ResponseLength>,
    #[serde(default = "yes")]
    pub is_active: bool,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default = "empty_object", deserialize_with = "object")]
    pub metadata: serde_json::Value,
}

/// One of `training_data` (columns of `bot_training_data`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub data_type: DataType,
    pub question: String,
    pub answer: String,
    pub category: Option<String>,
    #[serde(default)]
    pub priority: i32,
    pub confidence_score: Option<Confidence>,
    #[serde(default = "yes")]
    pub is_active: bool,
}

/// A whole manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub tenant: TenantSpec,
    pub control_settings: Option<ControlSpec>,
    #[serde(default)]
    pub templates: Vec<TemplateSpec>,
    #[serde(default)]
    pub training_data: Vec<TrainingSpec>,
    /// The approved WhatsApp message templates, for messages outside the
    /// 24-hour window.
    #[serde(default)]
    pub whatsapp_templates: Vec<WhatsAppTemplate>,
    /// Source text, for locating fields in errors.
    #[serde(skip)]
    source: Source,
}

/// The manifest's text; never printed (it may hold inline secrets).
#[derive(Default)]
struct Source(String);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<source>")
    }
}

/// Line (1-based) of the last line holding `key:` whose text contains
/// `hint`, at or after the line holding `section:` (the last, so that a
/// duplicate is reported where it is repeated).
fn line_of(source: &str, section: &str, key: &str, hint: &str) -> Option<usize> {
    let start = source
        .lines()
        .position(|l| l.trim_end().starts_with(&format!("{section}:")))
        .unwrap_or(0);
    let mut found = None;
    for (i, l) in source.lines().enumerate().skip(start) {
        if i > start && !l.starts_with([' ', '-', '\t', '#']) && !l.trim().is_empty() {
            break; // next top-level section
        }
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        if t.starts_with(&format!("{key}:")) && (hint.is_empty() || l.contains(hint)) {
            found = Some(i + 1);
        }
    }
    found
}

impl Manifest {
    /// Parses and validates a manifest from YAML or JSON text; national
    /// phone numbers take `country_code`.
    pub fn parse(source: &str, country_code: &str) -> Result<Self, ManifestError> {
        let de = serde_yaml_ng::Deserializer::from_str(source);
        let mut m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut msg = inner.to_string();
            // serde_yaml_ng prefixes some messages with (part of) the path.
            if let Some((head, rest)) = msg.split_once(": ") {
                if path.starts_with(head) && !head.is_empty() {
                    msg = rest.to_owned();
                }
            }
            if let Some(loc) = inner.location() {
                if !msg.contains("line") {
                    msg = format!("{msg} at line {} column {}", loc.line(), loc.column());
                }
            }
            if path == "." {
                ManifestError::Parse(msg)
            } else {
                ManifestError::Parse(format!("{path}: {msg}"))
            }
        })?;
        m.source = Source(source.to_owned());
        m.normalise_phones(country_code)?;
        m.validate()?;
        Ok(m)
    }

    /// [`Manifest::parse`] for a manifest from a client (the API): a
    /// `${VAR}` reference is refused, never read from the server's
    /// environment.
    pub fn parse_untrusted(source: &str, country_code: &str) -> Result<Self, ManifestError> {
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                ENV_REFERENCES.with(|e| e.set(true));
            }
        }
        ENV_REFERENCES.with(|e| e.set(false));
        let _restore = Restore;
        Self::parse(source, country_code)
    }

    /// Reads and parses the manifest at `path`.
    pub fn from_file(path: &str, country_code: &str) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, country_code)
    }

    /// Normalises every phone number, or names the first bad one.
    fn normalise_phones(&mut self, country_code: &str) -> Result<(), ManifestError> {
        let norm = |p: &mut Phone, section: &str, key: &str, me: &Source| match phone::normalize(
            &p.0,
            country_code,
        ) {
            Ok(n) => {
                p.0 = n;
                Ok(())
            }
            Err(e) => Err(ManifestError::Invalid {
                field: format!("{section}.{key}"),
                line: line_of(&me.0, section, key, ""),
                message: e.to_string(),
            }),
        };
        let source = &self.source;
        norm(
            &mut self.tenant.client_phone,
            "tenant",
            "client_phone",
            source,
        )?;
        if let Some(p) = self.tenant.point_of_contact_phone.as_mut() {
            norm(p, "tenant", "point_of_contact_phone", source)?;
        }
        if let Some(p) = self
            .control_settings
            .as_mut()
            .and_then(|c| c.escalation_phone.as_mut())
        {
            norm(p, "control_settings", "escalation_phone", source)?;
        }
        Ok(())
    }

    fn invalid(
        &self,
        section: &str,
        key: &str,
        hint: &str,
        field: String,
        message: String,
    ) -> ManifestError {
        ManifestError::Invalid {
            field,
            line: line_of(&self.source.0, section, key, hint),
            message,
        }
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let t = &self.tenant;
        if t.client_name.trim().is_empty() {
            return Err(self.invalid(
                "tenant",
                "client_name",
                "",
                "tenant.client_name".into(),
                "must not be empty".into(),
            ));
        }
        if t.ai_provider == Some(AiProvider::OpenaiCompatible) && t.ai_base_url.is_none() {
            return Err(self.invalid(
                "tenant",
                "ai_provider",
                "",
                "tenant.ai_base_url".into(),
                "is required when ai_provider is openai_compatible".into(),
            ));
        }
        if let Some(url) = &t.ai_base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.invalid(
                    "tenant",
                    "ai_base_url",
                    "",
                    "tenant.ai_base_url".into(),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        if let Some(c) = &self.control_settings {
            if c.debounce_ms.is_some_and(|d| d.0 > MAX_DEBOUNCE_MS) {
                return Err(self.invalid(
                    "control_settings",
                    "debounce_ms",
                    "",
                    "control_settings.debounce_ms".into(),
                    format!("must be at most {MAX_DEBOUNCE_MS} (ten seconds)"),
                ));
            }
            if let Some((field, why)) = c.business_hours.as_ref().and_then(|h| h.problem()) {
                return Err(self.invalid(
                    "control_settings",
                    "business_hours",
                    "",
                    format!("control_settings.business_hours.{field}"),
                    why,
                ));
            }
        }
        if let Err((field, why)) = check_templates(&self.whatsapp_templates) {
            return Err(self.invalid(
                "whatsapp_templates",
                "name",
                "",
                format!("whatsapp_templates{field}"),
                why,
            ));
        }
        let mut names = HashSet::new();
        let mut defaults = 0;
        for (i, tpl) in self.templates.iter().enumerate() {
            let field = format!("templates[{i}].template_name");
            if tpl.template_name.trim().is_empty() {
                return Err(self.invalid(
                    "templates",
                    "template_name",
                    "",
                    field,
                    "must not be empty".into(),
                ));
            }
            if !names.insert(tpl.template_name.trim()) {
                return Err(self.invalid(
                    "templates",
                    "template_name",
                    tpl.template_name.trim(),
                    field,
                    format!("template {:?} appears twice", tpl.template_name),
                ));
            }
            if tpl.is_default {
                defaults += 1;
                if defaults > 1 {
                    return Err(self.invalid(
                        "templates",
                        "is_default",
                        "",
                        format!("templates[{i}].is_default"),
                        "only one template may be the default".into(),
                    ));
                }
            }
        }
        let mut keys = HashSet::new();
        for (i, row) in self.training_data.iter().enumerate() {
            let q = row.question.trim();
            if q.is_empty() {
                return Err(self.invalid(
                    "training_data",
                    "question",
                    "",
                    format!("training_data[{i}].question"),
                    "must not be empty".into(),
                ));
            }
            if row.answer.trim().is_empty() {
                return Err(self.invalid(
                    "training_data",
                    "question",
                    q,
                    format!("training_data[{i}].answer"),
                    "must not be empty".into(),
                ));
            }
            if !keys.insert((row.data_type, q.to_owned())) {
                return Err(self.invalid(
                    "training_data",
                    "question",
                    q,
                    format!("training_data[{i}].question"),
                    format!("{} {q:?} appears twice", row.data_type.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub tenant_id: Uuid,
    pub created: bool,
    /// Rows inserted, updated or deactivated (0 when nothing changed).
    pub rows_changed: u64,
}

/// Applies `manifest` in one transaction: upserts the tenant by
/// `client_phone`, then its settings, templates and training data; a
/// second apply of the same manifest changes no row.
pub async fn apply(
    pool: &PgPool,
    keyring: &Keyring,
    manifest: &Manifest,
) -> Result<ApplyReport, ManifestError> {
    apply_as(pool, keyring, manifest, &crate::changes::cli_actor()).await
}

/// [`apply`], recording `actor` as who made the change: a change that
/// changes anything is recorded in the change audit (`tenant.apply`, the
/// tenant's configuration before and after, secrets masked) in the same
/// transaction.
pub async fn apply_as(
    pool: &PgPool,
    keyring: &Keyring,
    manifest: &Manifest,
    actor: &str,
) -> Result<ApplyReport, ManifestError> {
    let mut tx = pool.begin().await?;
    let existing = tenants::lock_by_phone(&mut tx, &manifest.tenant.client_phone.0).await?;
    let before = match &existing {
        Some(e) => crate::changes::tenant_snapshot(&mut tx, e.id).await?,
        None => None,
    };
    let report = apply_in(&mut tx, keyring, manifest, existing)
        .await
        .map_err(|e| match e {
            ManifestError::Database(ref db) => constraint_error(manifest, db).unwrap_or(e),
            other => other,
        })?;
    if report.rows_changed > 0 {
        let after = crate::changes::tenant_snapshot(&mut tx, report.tenant_id).await?;
        let subject = report.tenant_id.to_string();
        crate::changes::record(
            &mut tx,
            &crate::changes::Change {
                actor,
                tenant: Some(report.tenant_id),
                action: "tenant.apply",
                subject: &subject,
                before,
                after,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(report)
}

fn constraint_error(m: &Manifest, e: &sqlx::Error) -> Option<ManifestError> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    let (key, message) = match d.constraint()? {
        "bot_tenants_webhook_verify_token_key" => {
            ("webhook_verify_token", "is already used by another tenant")
        }
        "bot_tenants_whatsapp_phone_number_id_key" => (
            "whatsapp_phone_number_id",
            "is already used by another tenant",
        ),
        "bot_tenants_client_phone_key" => ("client_phone", "is already used by another tenant"),
        _ => return None,
    };
    Some(m.invalid("tenant", key, "", format!("tenant.{key}"), message.into()))
}

/// The ciphertext to store for a credential: the stored one when the
/// manifest gives the same secret (so an unchanged manifest writes
/// nothing), a fresh encryption when it gives another, the stored one when
/// it gives none.
fn seal(
    keyring: &Keyring,
    id: Uuid,
    column: SecretColumn,
    input: &Option<SecretInput>,
    stored: Option<&String>,
) -> Option<String> {
    match (input, stored) {
        (Some(new), Some(old)) if keyring.holds(id, column, old, new.0.expose_secret()) => {
            Some(old.clone())
        }
        (Some(new), _) => Some(keyring.encrypt(id, column, new.0.expose_secret())),
        (None, old) => old.cloned(),
    }
}

/// Writes `m` over `existing` (the stored tenant with its phone, locked by
/// the caller), in the caller's transaction.
async fn apply_in(
    conn: &mut PgConnection,
    keyring: &Keyring,
    m: &Manifest,
    existing: Option<Existing>,
) -> Result<ApplyReport, ManifestError> {
    let t = &m.tenant;
    let created = existing.is_none();
    let id = existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::new_v4);

    // Uniqueness against other tenants, reported by field before writing.
    let verify = t
        .webhook_verify_token
        .as_ref()
        .map(|s| crypto::verify_token_digest(s.0.expose_secret()));
    if let Some(v) = &verify {
        if tenants::verify_digest_taken(conn, v, id).await? {
            return Err(m.invalid(
                "tenant",
                "webhook_verify_token",
                "",
                "tenant.webhook_verify_token".into(),
                "is already used by another tenant".into(),
            ));
        }
    }
    if let Some(p) = &t.whatsapp_phone_number_id {
        if tenants::phone_number_id_taken(conn, &p.0, id).await? {
            return Err(m.invalid(
                "tenant",
                "whatsapp_phone_number_id",
                "",
                "tenant.whatsapp_phone_number_id".into(),
                format!("{:?} is already used by another tenant", p.0),
            ));
        }
    }

    let mut rows_changed = 0u64;
    let brand_id = match (t.brand_id, existing.as_ref().and_then(|e| e.brand_id)) {
        (Some(b), _) => {
            if !tenants::brand_exists(conn, b).await? {
                return Err(m.invalid(
                    "tenant",
                    "brand_id",
                    "",
                    "tenant.brand_id".into(),
                    format!("brand {b} does not exist in public.brands"),
                ));
            }
            b
        }
        (None, Some(b)) => b,
        (None, None) => {
            rows_changed += 1;
            tenants::create_brand(conn).await?
        }
    };

    let stored = |col: SecretColumn| existing.as_ref().and_then(|e| e.credential(col));
    let token = seal(
        keyring,
        id,
        SecretColumn::WhatsappAccessToken,
        &t.whatsapp_access_token,
        stored(SecretColumn::WhatsappAccessToken),
    );
    let app_secret = seal(
        keyring,
        id,
        SecretColumn::WhatsappAppSecret,
        &t.whatsapp_app_secret,
        stored(SecretColumn::WhatsappAppSecret),
    );
    let ai_key = seal(
        keyring,
        id,
        SecretColumn::AiApiKey,
        &t.ai_api_key,
        stored(SecretColumn::AiApiKey),
    );
    rows_changed += tenants::upsert_tenant(
        conn,
        &TenantWrite {
            id,
            client_name: t.client_name.trim(),
            client_phone: &t.client_phone.0,
            client_email: t.client_email.as_ref().map(|e| e.0.as_str()),
            brand_id,
            point_of_contact_name: t.point_of_contact_name.as_deref(),
            point_of_contact_phone: t.point_of_contact_phone.as_ref().map(|p| p.0.as_str()),
            whatsapp_phone_number_id: t.whatsapp_phone_number_id.as_ref().map(|p| p.0.as_str()),
            whatsapp_business_account_id: t
                .whatsapp_business_account_id
                .as_ref()
                .map(|p| p.0.as_str()),
            whatsapp_access_token: token.as_deref(),
            whatsapp_token_expires_at: t.whatsapp_token_expires_at,
            whatsapp_app_secret: app_secret.as_deref(),
            ai_provider: t.ai_provider.map(AiProvider::as_str),
            ai_api_key: ai_key.as_deref(),
            ai_model: t.ai_model.as_deref(),
            ai_base_url: t.ai_base_url.as_deref(),
            is_active: t.is_active,
            is_verified: t.is_verified,
            verify_digest: verify.as_deref(),
            webhook_url: t.webhook_url.as_deref(),
            metadata: &t.metadata,
        },
    )
    .await?;
    // Audit every credential the manifest set or changed (same transaction).
    for (col, now) in [
        (SecretColumn::WhatsappAccessToken, &token),
        (SecretColumn::WhatsappAppSecret, &app_secret),
        (SecretColumn::AiApiKey, &ai_key),
    ] {
        if now.is_some() && now.as_ref() != stored(col) {
            alphadome_core::audit::record(
                &mut *conn,
                id,
                col,
                "admin:cli",
                "tenant apply: credential set",
            )
            .await?;
        }
    }
    rows_changed += apply_settings(conn, id, m.control_settings.as_ref()).await?;
    let whatsapp_templates = serde_json::to_value(&m.whatsapp_templates)
        .map_err(|e| ManifestError::Parse(e.to_string()))?;
    rows_changed += tenants::set_whatsapp_templates(conn, id, &whatsapp_templates).await?;
    let templates: Vec<TemplateWrite<'_>> = m
        .templates
        .iter()
        .map(|t| TemplateWrite {
            template_name: t.template_name.trim(),
            description: t.description.as_deref(),
            system_prompt: t.system_prompt.as_deref(),
            conversation_context: &t.conversation_context,
            tone: t.tone.unwrap_or(Tone::Friendly).as_str(),
            max_response_length: t.max_response_length.map(|l| l.0),
            is_active: t.is_active,
            is_default: t.is_default,
            metadata: &t.metadata,
        })
        .collect();
    rows_changed += tenants::sync_templates(conn, id, &templates).await?;
    let training: Vec<TrainingWrite<'_>> = m
        .training_data
        .iter()
        .map(|r| TrainingWrite {
            data_type: r.data_type.as_str(),
            question: r.question.trim(),
            answer: r.answer.trim(),
            category: r.category.as_deref(),
            priority: r.priority,
            confidence_score: r.confidence_score.map(|c| c.0).unwrap_or(1.0),
            is_active: r.is_active,
        })
        .collect();
    rows_changed += tenants::sync_training(conn, id, &training).await?;
    Ok(ApplyReport {
        tenant_id: id,
        created,
        rows_changed,
    })
}

/// The settings row: the manifest's, or every column's default when it has
/// no `control_settings` section.
async fn apply_settings(
    conn: &mut PgConnection,
    id: Uuid,
    spec: Option<&ControlSpec>,
) -> Result<u64, ManifestError> {
    let default_spec;
    let s = match spec {
        Some(s) => s,
        None => {
            default_spec = serde_json::from_value::<ControlSpec>(serde_json::json!({}))
                .map_err(|e| ManifestError::Parse(e.to_string()))?;
            &default_spec
        }
    };
    let business_hours = s
        .business_hours
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ManifestError::Parse(e.to_string()))?;
    Ok(tenants::upsert_settings(
        conn,
        id,
        &SettingsWrite {
            is_bot_enabled: s.is_bot_enabled,
            max_messages_per_hour: s.max_messages_per_hour.map(|l| l.0),
            max_messages_per_user_per_day: s.max_messages_per_user_per_day.map(|l| l.0),
            enable_ai_responses: s.enable_ai_responses,
            enable_payment_flow: s.enable_payment_flow,
            enable_training_mode: s.enable_training_mode,
            enable_auto_reply: s.enable_auto_reply,
            log_conversations: s.log_conversations,
            log_errors: s.log_errors,
            escalation_phone: s.escalation_phone.as_ref().map(|p| p.0.as_str()),
            escalation_email: s.escalation_email.as_ref().map(|e| e.0.as_str()),
            fallback_reply: s.fallback_reply.as_deref(),
            metadata: &s.metadata,
            handoff_pause_minutes: s.handoff_pause_minutes.map(|l| l.0).unwrap_or(60),
            business_hours: business_hours.as_ref(),
            out_of_hours_reply: s.out_of_hours_reply.as_deref(),
            answer_out_of_hours: s.answer_out_of_hours,
            greeting_message: s.greeting_message.as_deref(),
            send_read_receipts: s.send_read_receipts,
            opt_out_keywords: &s.opt_out_keywords,
            opt_in_keywords: &s.opt_in_keywords,
            debounce_ms: s.debounce_ms.map(|l| l.0).unwrap_or(DEFAULT_DEBOUNCE_MS),
        },
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "tenant:\n  client_name: Shop\n  client_phone: '0702245555'\n";
    const CC: &str = "254";

    #[test]
    fn phones_take_the_configured_country_code_and_bad_ones_are_named() {
        let m = Manifest::parse(MIN, "255").unwrap();
        assert_eq!(m.tenant.client_phone.0, "255702245555");
        let e = Manifest::parse("tenant:\n  client_name: Shop\n  client_phone: '07o2'\n", CC)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenant.client_phone") && e.contains("line 3"),
            "{e}"
        );
        let e = Manifest::parse(
            &format!("{MIN}control_settings:\n  escalation_phone: '12'\n"),
            CC,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("control_settings.escalation_phone") && e.contains("line 5"),
            "{e}"
        );
    }

    #[test]
    fn minimal_manifest_normalises_phone() {
        let m = Manifest::parse(MIN, CC).unwrap();
        assert_eq!(m.tenant.client_phone.0, "254702245555");
    }

    #[test]
    fn errors_name_field_and_line() {
        let e = Manifest::parse(
            "tenant:\n  client_name: Shop\n  client_phone: '0702245555'\n  colour: red\n",
            CC,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown field `colour`") && e.contains("line 4"),
            "{e}"
        );
        let e = Manifest::parse(
            &format!("{MIN}training_data:\n  - data_type: faqq\n    question: q\n    answer: a\n"),
            CC,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("training_data[0].data_type") && e.contains("faqq") && e.contains("line 5"),
            "{e}"
        );
        let e = Manifest::parse("tenant:\n  client_name: Shop\n", CC)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `client_phone`"), "{e}");
        let e = Manifest::parse("tenant: [1, 2\n", CC)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line"), "{e}");
        let e = Manifest::parse(
            &format!("{MIN}templates:\n  - template_name: a\n    tone: grumpy\n"),
            CC,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("templates[0].tone") && e.contains("grumpy"),
            "{e}"
        );
        let e = Manifest::parse(
            &format!("{MIN}training_data:\n  - data_type: faq\n    question: q\n    answer: a\n    confidence_score: 1.5\n"),
            CC,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("training_data[0].confidence_score")
                && e.contains("outside")
                && e.contains("line 5"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_inside_the_manifest_are_refused_with_line() {
        let src = format!(
            "{MIN}training_data:\n  - data_type: faq\n    question: Hours?\n    answer: a\n  - data_type: faq\n    question: Hours?\n    answer: b\n"
        );
        let e = Manifest::parse(&src, CC).unwrap_err().to_string();
        assert!(
            e.contains("training_data[1].question")
                && e.contains("appears twice")
                && e.contains("line 9"),
            "{e}"
        );
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let src = format!("{MIN}  ai_api_key: ${{ALPHADOME_TEST_UNSET_VARIABLE}}\n");
        let e = Manifest::parse(&src, CC).unwrap_err().to_string();
        assert!(
            e.contains("ALPHADOME_TEST_UNSET_VARIABLE is not set"),
            "{e}"
        );
        let src = format!("{MIN}  ai_api_key: sk-inline-secret\n");
        let m = Manifest::parse(&src, CC).unwrap();
        assert!(!format!("{m:?}").contains("sk-inline-secret"));
    }

    #[test]
    fn a_manifest_from_a_client_reads_no_environment_variable() {
        std::env::set_var("ALPHADOME_TEST_SECRET_IN_ENV", "s3cr3t-value");
        let src =
            format!("{MIN}  whatsapp_business_account_id: ${{ALPHADOME_TEST_SECRET_IN_ENV}}\n");
        let e = Manifest::parse_untrusted(&src, CC).unwrap_err().to_string();
        assert!(
            e.contains("whatsapp_business_account_id")
                && e.contains("only by `alphadome tenant apply`"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        // The operator's own parse still reads it.
        let m = Manifest::parse(&src, CC).unwrap();
        assert_eq!(
            m.tenant.whatsapp_business_account_id.unwrap().0,
            "s3cr3t-value"
        );
    }

    #[test]
    fn json_manifests_parse_too() {
        let m = Manifest::parse(
            r#"{"tenant": {"client_name": "Shop", "client_phone": "+254702245555"}}"#,
            CC,
        )
        .unwrap();
        assert_eq!(m.tenant.client_phone.0, "254702245555");
    }
}
