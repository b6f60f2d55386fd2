//! Tenants, their activation and their control settings.

use std::sync::Arc;

use alphadome_core::crypto::SecretColumn;
use alphadome_core::db::is_constraint;
use alphadome_core::tenant::messaging::BusinessHours;
use alphadome_core::tenant::store::{self as tenant_store, edits, SettingsWrite};
use alphadome_core::tenant::TenantSummary;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::problem::{nullable, parse_json, present};
use super::{require, Access, Api, Caller, Problem, Scope};
use crate::changes::{self, Change};
use crate::manifest::{AiProvider, Email, Limit, Manifest, ManifestError, MAX_DEBOUNCE_MS};
use crate::people::Principal;
use crate::phone;
use crate::tenants::TenantView;

/// The tenants the caller may see, by name.
#[utoipa::path(get, path = "/tenants", tag = "tenants",
    responses((status = 200, body = [TenantSummary]), (status = 401, body = Problem)))]
pub async fn list(State(api): State<Arc<Api>>, caller: Caller) -> Result<Response, Problem> {
    Ok(Json(load_list(&api, &caller.principal).await?).into_response())
}

/// Creates or updates a tenant from a manifest in its JSON form (as
/// `alphadome tenant apply` takes it): 201 when it was created.
#[utoipa::path(post, path = "/tenants", tag = "tenants",
    request_body(content = serde_json::Value, description = "A tenant manifest (JSON)"),
    responses((status = 201, body = TenantView), (status = 200, body = TenantView),
              (status = 422, body = Problem), (status = 403, body = Problem)))]
pub async fn create(
    State(api): State<Arc<Api>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, Problem> {
    require(&caller.principal, Access::Platform)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?;
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return Err(Problem::bad_request("the body is not valid JSON"));
    }
    let manifest = Manifest::parse_untrusted(text, &api.country_code).map_err(manifest_problem)?;
    let report =
        crate::manifest::apply_as(&api.db, &api.keyring, &manifest, &caller.principal.actor)
            .await
            .map_err(manifest_problem)?;
    api.announce(report.tenant_id).await;
    let view =
        crate::tenants::show(&api.db, &report.tenant_id.to_string(), &api.country_code).await?;
    let status = if report.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// A manifest's error as a problem naming its field.
fn manifest_problem(e: ManifestError) -> Problem {
    match e {
        ManifestError::Invalid { field, message, .. } => Problem::invalid(field, message),
        ManifestError::Parse(msg) => match msg.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => Problem::invalid(path, rest),
            _ => Problem::invalid("tenant", msg),
        },
        ManifestError::Database(e) => e.into(),
        ManifestError::Read { .. } => Problem::bad_request(e.to_string()),
    }
}

/// One tenant, its secrets masked (never their values).
#[utoipa::path(get, path = "/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = TenantView), (status = 404, body = Problem)))]
pub async fn show(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_view(&api, &caller.principal, &tenant).await?).into_response())
}

/// A tenant, its secrets masked, as `who` may see it.
pub async fn load_view(api: &Api, who: &Principal, tenant: &str) -> Result<TenantView, Problem> {
    let scope = api.scope(who, tenant).await?;
    let id = scope.tenant;
    scope.tx.commit().await?;
    Ok(crate::tenants::show(&api.db, &id.to_string(), &api.country_code).await?)
}

/// The tenants `who` may see, by name.
pub async fn load_list(api: &Api, who: &Principal) -> Result<Vec<TenantSummary>, Problem> {
    let mut all = crate::tenants::list(&api.db, api.verify_token_max_age_days).await?;
    all.retain(|t| who.sees(t.id));
    Ok(all)
}

/// A tenant's profile: what a person edits of it (the credentials aside).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
struct Profile {
    client_name: String,
    client_email: Option<String>,
    point_of_contact_name: Option<String>,
    point_of_contact_phone: Option<String>,
    whatsapp_phone_number_id: Option<String>,
    whatsapp_business_account_id: Option<String>,
    whatsapp_token_expires_at: Option<DateTime<Utc>>,
    ai_provider: Option<String>,
    ai_model: Option<String>,
    ai_base_url: Option<String>,
    webhook_url: Option<String>,
    metadata: serde_json::Value,
}

/// A change to a tenant: fields left out stay, `null` clears one that may
/// be empty. The credentials are write-only: set here, never shown.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    #[serde(default, deserialize_with = "present")]
    pub client_name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub client_email: Option<Option<Email>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub point_of_contact_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub point_of_contact_phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub whatsapp_phone_number_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub whatsapp_business_account_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>, nullable)]
    pub whatsapp_token_expires_at: Option<Option<DateTime<Utc>>>,
    /// `openai`, `openrouter`, `huggingface` or `openai_compatible`.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub ai_provider: Option<Option<AiProvider>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub ai_model: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub ai_base_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub webhook_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Write-only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, write_only)]
    pub whatsapp_access_token: Option<Secret>,
    /// Write-only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, write_only)]
    pub whatsapp_app_secret: Option<Secret>,
    /// Write-only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, write_only)]
    pub ai_api_key: Option<Secret>,
}

/// A credential's new value: never printed.
pub struct Secret(SecretString);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if v.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(Secret(SecretString::from(v.trim().to_owned())))
    }
}

/// Whether `url`'s host is this machine or a private network: an address
/// a tenant must not make the responder call (a platform admin may, for a
/// model served next to the platform).
fn private_host(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    }
    .to_ascii_lowercase();
    if host == "localhost"
        || host.ends_with(".localhost")
        || host.ends_with(".internal")
        || host.ends_with(".local")
    {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.octets()[0] == 100 && (64..128).contains(&a.octets()[1])
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::private_host;

    #[test]
    fn private_and_local_hosts_are_told_from_public_ones() {
        for u in [
            "http://localhost:11434/v1",
            "http://127.0.0.1/v1",
            "https://10.0.0.5/v1",
            "http://[::1]:8000",
            "http://192.168.1.10",
            "http://user@172.16.0.1/x",
            "http://169.254.169.254/latest",
            "http://llm.internal/v1",
            "http://[fd00::1]/v1",
            "http://100.64.0.1",
        ] {
            assert!(private_host(u), "{u}");
        }
        for u in [
            "https://api.openai.com/v1",
            "https://llm.example.com:8443/v1",
            "http://203.0.113.9/v1",
        ] {
            assert!(!private_host(u), "{u}");
        }
    }
}

/// `v` trimmed, `None` when empty.
fn text(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// An `http(s)://` address, or the problem naming `field`.
fn url(field: &str, v: Option<String>) -> Result<Option<String>, Problem> {
    match text(v) {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(Some(u)),
        Some(u) => Err(Problem::invalid(
            field,
            format!("{u:?} is not an http(s):// address"),
        )),
        None => Ok(None),
    }
}

impl TenantPatch {
    fn apply(&mut self, mut p: Profile, country_code: &str) -> Result<Profile, Problem> {
        if let Some(n) = self.client_name.take() {
            p.client_name = n.trim().to_owned();
            if p.client_name.is_empty() {
                return Err(Problem::invalid("client_name", "must not be empty"));
            }
        }
        if let Some(v) = self.client_email.take() {
            p.client_email = v.map(|e| e.0);
        }
        if let Some(v) = self.point_of_contact_name.take() {
            p.point_of_contact_name = text(v);
        }
        if let Some(v) = self.point_of_contact_phone.take() {
            p.point_of_contact_phone = match text(v) {
                Some(n) => Some(
                    phone::normalize(&n, country_code)
                        .map_err(|e| Problem::invalid("point_of_contact_phone", e.to_string()))?,
                ),
                None => None,
            };
        }
        if let Some(v) = self.whatsapp_phone_number_id.take() {
            p.whatsapp_phone_number_id = text(v);
            if let Some(id) = &p.whatsapp_phone_number_id {
                if !id.chars().all(|c| c.is_ascii_digit()) {
                    return Err(Problem::invalid(
                        "whatsapp_phone_number_id",
                        format!("{id:?} is not a phone number id (digits)"),
                    ));
                }
            }
        }
        if let Some(v) = self.whatsapp_business_account_id.take() {
            p.whatsapp_business_account_id = text(v);
        }
        if let Some(v) = self.whatsapp_token_expires_at.take() {
            p.whatsapp_token_expires_at = v;
        }
        if let Some(v) = self.ai_provider.take() {
            p.ai_provider = v.map(|a| a.as_str().to_owned());
        }
        if let Some(v) = self.ai_model.take() {
            p.ai_model = text(v);
        }
        if let Some(v) = self.ai_base_url.take() {
            p.ai_base_url = url("ai_base_url", v)?;
        }
        if let Some(v) = self.webhook_url.take() {
            p.webhook_url = url("webhook_url", v)?;
        }
        if let Some(v) = self.metadata.take() {
            p.metadata = serde_json::Value::Object(v);
        }
        Ok(p)
    }
}

/// Changes a tenant's profile or credentials (write-only); the running
/// services follow within a second.
#[utoipa::path(patch, path = "/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    request_body = TenantPatch,
    responses((status = 200, body = TenantView), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem), (status = 403, body = Problem)))]
pub async fn patch(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    let mut patch: TenantPatch = parse_json(&body)?;
    let before: Profile = edits::profile(&mut tx, tenant).await?;
    let platform = caller.principal.role == crate::people::Role::PlatformAdmin;
    if !platform {
        // The ids that route Meta's webhooks to a tenant are the
        // platform's to set: a tenant could otherwise claim another's.
        for (field, given) in [
            (
                "whatsapp_phone_number_id",
                patch.whatsapp_phone_number_id.is_some(),
            ),
            (
                "whatsapp_business_account_id",
                patch.whatsapp_business_account_id.is_some(),
            ),
        ] {
            if given {
                return Err(Problem {
                    field: Some(field.to_owned()),
                    ..Problem::forbidden(format!("only a platform admin sets {field}"))
                });
            }
        }
    }
    let after = patch.apply(before.clone(), &api.country_code)?;
    // Where the AI key is sent changes only with the key given again, so
    // nobody can send a stored key to an address of their choosing.
    let moved = after.ai_base_url != before.ai_base_url || after.ai_provider != before.ai_provider;
    if moved && patch.ai_api_key.is_none() {
        return Err(Problem::invalid(
            "ai_api_key",
            "give the AI key again when changing ai_base_url or ai_provider",
        ));
    }
    if !platform {
        if let Some(u) = after.ai_base_url.as_deref().filter(|u| private_host(u)) {
            return Err(Problem::invalid(
                "ai_base_url",
                format!("{u:?} is a private or local address; only a platform admin may set one"),
            ));
        }
    }
    edits::save_profile(
        &mut tx,
        tenant,
        &edits::ProfileWrite {
            client_name: &after.client_name,
            client_email: after.client_email.as_deref(),
            point_of_contact_name: after.point_of_contact_name.as_deref(),
            point_of_contact_phone: after.point_of_contact_phone.as_deref(),
            whatsapp_phone_number_id: after.whatsapp_phone_number_id.as_deref(),
            whatsapp_business_account_id: after.whatsapp_business_account_id.as_deref(),
            whatsapp_token_expires_at: after.whatsapp_token_expires_at,
            ai_provider: after.ai_provider.as_deref(),
            ai_model: after.ai_model.as_deref(),
            ai_base_url: after.ai_base_url.as_deref(),
            webhook_url: after.webhook_url.as_deref(),
            metadata: &after.metadata,
        },
    )
    .await
    .map_err(|e| {
        if is_constraint(&e, "bot_tenants_whatsapp_phone_number_id_key") {
            Problem::conflict(
                "whatsapp_phone_number_id",
                "is already used by another tenant",
            )
        } else {
            e.into()
        }
    })?;
    let mut set = Vec::new();
    for (column, value) in [
        (
            SecretColumn::WhatsappAccessToken,
            patch.whatsapp_access_token.take(),
        ),
        (
            SecretColumn::WhatsappAppSecret,
            patch.whatsapp_app_secret.take(),
        ),
        (SecretColumn::AiApiKey, patch.ai_api_key.take()),
    ] {
        let Some(Secret(value)) = value else { continue };
        let sealed = api.keyring.encrypt(tenant, column, value.expose_secret());
        edits::set_credential(&mut tx, tenant, column, &sealed).await?;
        alphadome_core::audit::record(
            &mut *tx,
            tenant,
            column,
            &caller.principal.actor,
            "API: credential set",
        )
        .await?;
        set.push(column.column());
    }
    let mut before_json = serde_json::to_value(&before).unwrap_or_default();
    let mut after_json = serde_json::to_value(&after).unwrap_or_default();
    for column in &set {
        before_json[*column] = serde_json::json!("********");
        after_json[*column] = serde_json::json!("******** (new)");
    }
    let changed = record_change(
        &mut tx,
        &caller,
        tenant,
        "tenant.update",
        &tenant.to_string(),
        Some(&before_json),
        Some(&after_json),
    )
    .await?;
    tx.commit().await?;
    if changed {
        api.announce(tenant).await;
    }
    let view = crate::tenants::show(&api.db, &tenant.to_string(), &api.country_code).await?;
    Ok(Json(view).into_response())
}

/// Whether a tenant is live.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Activation {
    pub id: uuid::Uuid,
    pub is_active: bool,
    /// Whether this request changed it.
    pub changed: bool,
}

/// Puts a tenant live: its customers are answered.
#[utoipa::path(post, path = "/tenants/{tenant}/activate", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = Activation), (status = 404, body = Problem), (status = 403, body = Problem)))]
pub async fn activate(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    set_active(&api, &caller, &tenant, true).await
}

/// Takes a tenant off the air: messages are logged, none answered.
#[utoipa::path(post, path = "/tenants/{tenant}/deactivate", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = Activation), (status = 404, body = Problem), (status = 403, body = Problem)))]
pub async fn deactivate(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    set_active(&api, &caller, &tenant, false).await
}

async fn set_active(
    api: &Api,
    caller: &Caller,
    tenant: &str,
    active: bool,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant: id } = api.scope(&caller.principal, tenant).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    let changed = tenant_store::set_active(&mut tx, id, active).await?;
    if changed {
        changes::record(
            &mut tx,
            &Change {
                actor: &caller.principal.actor,
                tenant: Some(id),
                action: if active {
                    "tenant.activate"
                } else {
                    "tenant.deactivate"
                },
                subject: &id.to_string(),
                before: Some(serde_json::json!({"is_active": !active})),
                after: Some(serde_json::json!({"is_active": active})),
            },
        )
        .await?;
    }
    tx.commit().await?;
    if changed {
        api.announce(id).await;
    }
    Ok(Json(Activation {
        id,
        is_active: active,
        changed,
    })
    .into_response())
}

/// A tenant's control settings: every column of `bot_control_settings`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Settings {
    pub is_bot_enabled: bool,
    /// Messages answered per hour across the tenant (none: no cap).
    pub max_messages_per_hour: Option<i32>,
    /// Messages answered per customer per day (none: no cap).
    pub max_messages_per_user_per_day: Option<i32>,
    pub enable_ai_responses: bool,
    pub enable_payment_flow: bool,
    pub enable_training_mode: bool,
    pub enable_auto_reply: bool,
    pub log_conversations: bool,
    pub log_errors: bool,
    pub escalation_phone: Option<String>,
    pub escalation_email: Option<String>,
    /// The reply when nothing matches and AI is off.
    pub fallback_reply: Option<String>,
    /// How long the bot stays quiet in a conversation handed to a person.
    pub handoff_pause_minutes: i32,
    /// Opening hours (`{"timezone", "weekly": {"mon": [["08:00", "18:00"]]},
    /// "closed_dates": []}`); none: always open.
    #[schema(value_type = Option<BusinessHours>)]
    pub business_hours: Option<serde_json::Value>,
    /// What the bot says out of hours (its default when none).
    pub out_of_hours_reply: Option<String>,
    /// Whether the bot still answers out of hours, with the note.
    pub answer_out_of_hours: bool,
    /// Sent before the first answer of a new conversation.
    pub greeting_message: Option<String>,
    /// Whether answered messages are marked read (with the typing
    /// indicator while the AI writes).
    pub send_read_receipts: bool,
    /// The tenant's own words for STOP and START beside the built-in ones.
    pub opt_out_keywords: Vec<String>,
    pub opt_in_keywords: Vec<String>,
    /// Messages of one customer within this many milliseconds of each
    /// other are answered once, as one question (0: each on its own).
    pub debounce_ms: i32,
    pub metadata: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

/// A change to the settings: fields left out stay as they are; `null`
/// clears one that may be empty.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, deserialize_with = "present")]
    pub is_bot_enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, nullable)]
    pub max_messages_per_hour: Option<Option<Limit>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, nullable)]
    pub max_messages_per_user_per_day: Option<Option<Limit>>,
    #[serde(default, deserialize_with = "present")]
    pub enable_ai_responses: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub enable_payment_flow: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub enable_training_mode: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub enable_auto_reply: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub log_conversations: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub log_errors: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub escalation_phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub escalation_email: Option<Option<Email>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub fallback_reply: Option<Option<String>>,
    #[schema(value_type = Option<i32>)]
    #[serde(default, deserialize_with = "present")]
    pub handoff_pause_minutes: Option<Limit>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<BusinessHours>, nullable)]
    pub business_hours: Option<Option<BusinessHours>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub out_of_hours_reply: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub answer_out_of_hours: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub greeting_message: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub send_read_receipts: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub opt_out_keywords: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub opt_in_keywords: Option<Vec<String>>,
    #[schema(value_type = Option<i32>)]
    #[serde(default, deserialize_with = "present")]
    pub debounce_ms: Option<Limit>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl SettingsPatch {
    /// `current` with this patch applied; phone numbers normalised with
    /// `country_code`.
    fn apply(self, mut s: Settings, country_code: &str) -> Result<Settings, Problem> {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { s.$f = v; })* };
        }
        set!(
            is_bot_enabled,
            enable_ai_responses,
            enable_payment_flow,
            enable_training_mode,
            enable_auto_reply,
            log_conversations,
            log_errors,
            answer_out_of_hours,
            send_read_receipts
        );
        for (field, words, into) in [
            (
                "opt_out_keywords",
                self.opt_out_keywords,
                &mut s.opt_out_keywords,
            ),
            (
                "opt_in_keywords",
                self.opt_in_keywords,
                &mut s.opt_in_keywords,
            ),
        ] {
            if let Some(words) = words {
                *into = keywords(field, words)?;
            }
        }
        if let Some(v) = self.business_hours {
            if let Some((field, why)) = v.as_ref().and_then(BusinessHours::problem) {
                return Err(Problem::invalid(format!("business_hours.{field}"), why));
            }
            s.business_hours = v
                .map(|h| serde_json::to_value(h).unwrap_or_default())
                .filter(|h| !h.is_null());
        }
        if let Some(v) = self.out_of_hours_reply {
            s.out_of_hours_reply = v.filter(|t| !t.trim().is_empty());
        }
        if let Some(v) = self.greeting_message {
            s.greeting_message = v.filter(|t| !t.trim().is_empty());
        }
        if let Some(v) = self.debounce_ms {
            if v.0 > MAX_DEBOUNCE_MS {
                return Err(Problem::invalid(
                    "debounce_ms",
                    format!("must be at most {MAX_DEBOUNCE_MS} (ten seconds)"),
                ));
            }
            s.debounce_ms = v.0;
        }
        if let Some(v) = self.max_messages_per_hour {
            s.max_messages_per_hour = v.map(|l| l.0);
        }
        if let Some(v) = self.max_messages_per_user_per_day {
            s.max_messages_per_user_per_day = v.map(|l| l.0);
        }
        if let Some(v) = self.escalation_phone {
            s.escalation_phone = match v.filter(|p| !p.trim().is_empty()) {
                Some(p) => Some(
                    phone::normalize(&p, country_code)
                        .map_err(|e| Problem::invalid("escalation_phone", e.to_string()))?,
                ),
                None => None,
            };
        }
        if let Some(v) = self.escalation_email {
            s.escalation_email = v.map(|e| e.0);
        }
        if let Some(v) = self.fallback_reply {
            s.fallback_reply = v.filter(|t| !t.trim().is_empty());
        }
        if let Some(v) = self.handoff_pause_minutes {
            s.handoff_pause_minutes = v.0;
        }
        if let Some(v) = self.metadata {
            s.metadata = serde_json::Value::Object(v);
        }
        Ok(s)
    }
}

/// A list of opt-out or opt-in words, trimmed, each a short word or two.
fn keywords(field: &str, words: Vec<String>) -> Result<Vec<String>, Problem> {
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.into_iter().enumerate() {
        let w = w.trim().to_lowercase();
        if w.is_empty() || w.chars().count() > 40 {
            return Err(Problem::invalid(
                format!("{field}[{i}]"),
                "must be a word or two (1 to 40 characters)",
            ));
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.len() > 20 {
        return Err(Problem::invalid(field, "may hold at most 20 words"));
    }
    Ok(out)
}

/// A tenant's control settings.
#[utoipa::path(get, path = "/tenants/{tenant}/settings", tag = "settings",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = Settings), (status = 404, body = Problem)))]
pub async fn settings(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_settings(&api, &caller.principal, &tenant).await?).into_response())
}

/// A tenant's control settings, as `who` may see them.
pub async fn load_settings(api: &Api, who: &Principal, tenant: &str) -> Result<Settings, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let s: Settings = edits::settings(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(s)
}

/// Changes some of a tenant's control settings; the running services
/// follow within a second.
#[utoipa::path(patch, path = "/tenants/{tenant}/settings", tag = "settings",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    request_body = SettingsPatch,
    responses((status = 200, body = Settings), (status = 404, body = Problem),
              (status = 422, body = Problem), (status = 403, body = Problem)))]
pub async fn patch_settings(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    let patch: SettingsPatch = parse_json(&body)?;
    let before: Settings = edits::settings_for_update(&mut tx, tenant).await?;
    let s = patch.apply(before.clone(), &api.country_code)?;
    tenant_store::upsert_settings(
        &mut tx,
        tenant,
        &SettingsWrite {
            is_bot_enabled: s.is_bot_enabled,
            max_messages_per_hour: s.max_messages_per_hour,
            max_messages_per_user_per_day: s.max_messages_per_user_per_day,
            enable_ai_responses: s.enable_ai_responses,
            enable_payment_flow: s.enable_payment_flow,
            enable_training_mode: s.enable_training_mode,
            enable_auto_reply: s.enable_auto_reply,
            log_conversations: s.log_conversations,
            log_errors: s.log_errors,
            escalation_phone: s.escalation_phone.as_deref(),
            escalation_email: s.escalation_email.as_deref(),
            fallback_reply: s.fallback_reply.as_deref(),
            metadata: &s.metadata,
            handoff_pause_minutes: s.handoff_pause_minutes,
            business_hours: s.business_hours.as_ref(),
            out_of_hours_reply: s.out_of_hours_reply.as_deref(),
            answer_out_of_hours: s.answer_out_of_hours,
            greeting_message: s.greeting_message.as_deref(),
            send_read_receipts: s.send_read_receipts,
            opt_out_keywords: &s.opt_out_keywords,
            opt_in_keywords: &s.opt_in_keywords,
            debounce_ms: s.debounce_ms,
        },
    )
    .await?;
    let after: Settings = edits::settings(&mut tx, tenant).await?;
    let changed = record_change(
        &mut tx,
        &caller,
        tenant,
        "settings.update",
        &tenant.to_string(),
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    if changed {
        api.announce(tenant).await;
    }
    Ok(Json(after).into_response())
}

/// Records a change of one row (`None`: created or removed) in the
/// caller's transaction, unless nothing changed; whether it did.
pub async fn record_change<T: Serialize>(
    conn: &mut sqlx::PgConnection,
    caller: &Caller,
    tenant: uuid::Uuid,
    action: &str,
    subject: &str,
    before: Option<&T>,
    after: Option<&T>,
) -> Result<bool, Problem> {
    let json = |v: Option<&T>| {
        v.map(|v| {
            let mut j = serde_json::to_value(v).unwrap_or_default();
            if let Some(o) = j.as_object_mut() {
                o.remove("updated_at");
            }
            j
        })
    };
    let (before, after) = (json(before), json(after));
    if before == after {
        return Ok(false);
    }
    changes::record(
        conn,
        &Change {
            actor: &caller.principal.actor,
            tenant: Some(tenant),
            action,
            subject,
            before,
            after,
        },
    )
    .await?;
    Ok(true)
}
