//! A tenant's templates (the AI's prompt and tone) and training data (FAQ
//! entries, canned replies, examples), one row at a time.

use std::sync::Arc;

use alphadome_core::db::is_constraint;
use alphadome_core::tenant::store::{edits, TemplateWrite, TrainingWrite};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::problem::{nullable, parse_json, present};
use super::tenants::record_change;
use super::{require, Access, Api, Caller, Problem, Scope};
use crate::manifest::{Confidence, DataType, ResponseLength, Tone};
use crate::people::Principal;

/// A template.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Template {
    pub id: Uuid,
    pub template_name: String,
    pub description: Option<String>,
    pub system_prompt: Option<String>,
    pub conversation_context: serde_json::Value,
    /// `professional` or `friendly`.
    pub tone: String,
    pub max_response_length: Option<i32>,
    pub is_active: bool,
    /// The template the AI uses (one per tenant).
    pub is_default: bool,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new template, or (every field optional) a change to one: fields left
/// out stay as they are, `null` clears one that may be empty.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    #[serde(default, deserialize_with = "present")]
    pub template_name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub system_prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub conversation_context: Option<serde_json::Map<String, serde_json::Value>>,
    #[schema(value_type = Option<String>)]
    #[serde(default, deserialize_with = "present")]
    pub tone: Option<Tone>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, nullable)]
    pub max_response_length: Option<Option<ResponseLength>>,
    #[serde(default, deserialize_with = "present")]
    pub is_active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub is_default: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl TemplateInput {
    /// The template `current` becomes (a new one when `None`).
    fn over(self, current: Option<Template>) -> Result<Template, Problem> {
        let now = Utc::now();
        let mut t = current.unwrap_or_else(|| Template {
            id: Uuid::nil(),
            template_name: String::new(),
            description: None,
            system_prompt: None,
            conversation_context: serde_json::json!({}),
            tone: Tone::Friendly.as_str().to_owned(),
            max_response_length: None,
            is_active: true,
            is_default: false,
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
        });
        if let Some(n) = self.template_name {
            t.template_name = n.trim().to_owned();
        }
        if t.template_name.is_empty() {
            return Err(Problem::invalid("template_name", "must not be empty"));
        }
        if let Some(v) = self.description {
            t.description = v;
        }
        if let Some(v) = self.system_prompt {
            t.system_prompt = v;
        }
        if let Some(v) = self.conversation_context {
            t.conversation_context = serde_json::Value::Object(v);
        }
        if let Some(v) = self.tone {
            t.tone = v.as_str().to_owned();
        }
        if let Some(v) = self.max_response_length {
            t.max_response_length = v.map(|l| l.0);
        }
        if let Some(v) = self.is_active {
            t.is_active = v;
        }
        if let Some(v) = self.is_default {
            t.is_default = v;
        }
        if let Some(v) = self.metadata {
            t.metadata = serde_json::Value::Object(v);
        }
        Ok(t)
    }
}

fn template_write(t: &Template) -> TemplateWrite<'_> {
    TemplateWrite {
        template_name: &t.template_name,
        description: t.description.as_deref(),
        system_prompt: t.system_prompt.as_deref(),
        conversation_context: &t.conversation_context,
        tone: &t.tone,
        max_response_length: t.max_response_length,
        is_active: t.is_active,
        is_default: t.is_default,
        metadata: &t.metadata,
    }
}

/// A template name already taken, as a problem naming the field.
fn taken(e: sqlx::Error, constraint: &str, field: &str, what: &str) -> Problem {
    if is_constraint(&e, constraint) {
        Problem::conflict(field, format!("{what} already exists for this tenant"))
    } else {
        e.into()
    }
}

/// A tenant's templates, the default first.
#[utoipa::path(get, path = "/tenants/{tenant}/templates", tag = "templates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = [Template]), (status = 404, body = Problem)))]
pub async fn templates(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_templates(&api, &caller.principal, &tenant).await?).into_response())
}

/// A tenant's templates, as `who` may see them.
pub async fn load_templates(
    api: &Api,
    who: &Principal,
    tenant: &str,
) -> Result<Vec<Template>, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let rows: Vec<Template> = edits::templates(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Adds a template.
#[utoipa::path(post, path = "/tenants/{tenant}/templates", tag = "templates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    request_body = TemplateInput,
    responses((status = 201, body = Template), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_template(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    save_template(&api, &caller, &tenant, None, &body).await
}

/// Changes a template.
#[utoipa::path(patch, path = "/tenants/{tenant}/templates/{id}", tag = "templates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("id" = Uuid, Path, description = "The template's id")),
    request_body = TemplateInput,
    responses((status = 200, body = Template), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn patch_template(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    save_template(&api, &caller, &tenant, Some(&id), &body).await
}

/// The row id in a path, or 404 (a malformed id names no row).
fn row_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| Problem::not_found(format!("no row {id:?}")))
}

async fn save_template(
    api: &Api,
    caller: &Caller,
    tenant: &str,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, tenant).await?;
    let (id, before) = match id {
        Some(id) => {
            let id = row_id(id)?;
            let row: Option<Template> = edits::template(&mut tx, tenant, id).await?;
            let row = row.ok_or_else(|| Problem::not_found(format!("no template {id}")))?;
            (Some(id), Some(row))
        }
        None => (None, None),
    };
    require(&caller.principal, Access::TenantAdmin)?;
    let input: TemplateInput = parse_json(body)?;
    if id.is_none() && input.template_name.is_none() {
        return Err(Problem::invalid("template_name", "is required"));
    }
    let t = input.over(before.clone())?;
    let saved: Template = edits::save_template(&mut tx, tenant, id, &template_write(&t))
        .await
        .map_err(|e| {
            taken(
                e,
                "bot_templates_tenant_name_key",
                "template_name",
                "a template with this name",
            )
        })?;
    let action = if id.is_some() {
        "template.update"
    } else {
        "template.create"
    };
    let changed = record_change(
        &mut tx,
        caller,
        tenant,
        action,
        &saved.template_name,
        before.as_ref(),
        Some(&saved),
    )
    .await?;
    tx.commit().await?;
    if changed {
        api.announce(tenant).await;
    }
    let status = if id.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(saved)).into_response())
}

/// Removes a template.
#[utoipa::path(delete, path = "/tenants/{tenant}/templates/{id}", tag = "templates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("id" = Uuid, Path, description = "The template's id")),
    responses((status = 204), (status = 404, body = Problem), (status = 403, body = Problem)))]
pub async fn delete_template(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let id = row_id(&id)?;
    let row: Option<Template> = edits::template(&mut tx, tenant, id).await?;
    let row = row.ok_or_else(|| Problem::not_found(format!("no template {id}")))?;
    require(&caller.principal, Access::TenantAdmin)?;
    edits::delete_template(&mut tx, tenant, id).await?;
    record_change(
        &mut tx,
        &caller,
        tenant,
        "template.delete",
        &row.template_name,
        Some(&row),
        None,
    )
    .await?;
    tx.commit().await?;
    api.announce(tenant).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A training row: an FAQ entry, a canned reply or an example.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Training {
    pub id: Uuid,
    /// `faq`, `canned_reply` or `example`.
    pub data_type: String,
    pub question: Option<String>,
    pub answer: Option<String>,
    pub category: Option<String>,
    pub priority: i32,
    pub confidence_score: f64,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new training row, or (every field optional) a change to one.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingInput {
    #[schema(value_type = Option<String>)]
    #[serde(default, deserialize_with = "present")]
    pub data_type: Option<DataType>,
    #[serde(default, deserialize_with = "present")]
    pub question: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub answer: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub category: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub priority: Option<i32>,
    #[schema(value_type = Option<f64>)]
    #[serde(default, deserialize_with = "present")]
    pub confidence_score: Option<Confidence>,
    #[serde(default, deserialize_with = "present")]
    pub is_active: Option<bool>,
}

impl TrainingInput {
    /// The row `current` becomes (a new one when `None`), or the first bad
    /// field.
    pub fn over(self, current: Option<Training>) -> Result<Training, Problem> {
        let now = Utc::now();
        let mut r = current.unwrap_or_else(|| Training {
            id: Uuid::nil(),
            data_type: DataType::Faq.as_str().to_owned(),
            question: None,
            answer: None,
            category: None,
            priority: 0,
            confidence_score: 1.0,
            is_active: true,
            created_at: now,
            updated_at: now,
        });
        if let Some(v) = self.data_type {
            r.data_type = v.as_str().to_owned();
        }
        if let Some(v) = self.question {
            r.question = Some(v.trim().to_owned());
        }
        if let Some(v) = self.answer {
            r.answer = Some(v.trim().to_owned());
        }
        if let Some(v) = self.category {
            r.category = v.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
        }
        if let Some(v) = self.priority {
            r.priority = v;
        }
        if let Some(v) = self.confidence_score {
            r.confidence_score = v.0;
        }
        if let Some(v) = self.is_active {
            r.is_active = v;
        }
        for (field, v) in [("question", &r.question), ("answer", &r.answer)] {
            if v.as_deref().unwrap_or_default().is_empty() {
                return Err(Problem::invalid(field, "must not be empty"));
            }
        }
        Ok(r)
    }
}

fn training_write(r: &Training) -> TrainingWrite<'_> {
    TrainingWrite {
        data_type: &r.data_type,
        question: r.question.as_deref().unwrap_or_default(),
        answer: r.answer.as_deref().unwrap_or_default(),
        category: r.category.as_deref(),
        priority: r.priority,
        confidence_score: r.confidence_score,
        is_active: r.is_active,
    }
}

/// A tenant's training data by type and priority.
#[utoipa::path(get, path = "/tenants/{tenant}/training-data", tag = "training-data",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = [Training]), (status = 404, body = Problem)))]
pub async fn training(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_training(&api, &caller.principal, &tenant).await?).into_response())
}

/// A tenant's training data, as `who` may see it.
pub async fn load_training(
    api: &Api,
    who: &Principal,
    tenant: &str,
) -> Result<Vec<Training>, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let rows: Vec<Training> = edits::training(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Adds a training row.
#[utoipa::path(post, path = "/tenants/{tenant}/training-data", tag = "training-data",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    request_body = TrainingInput,
    responses((status = 201, body = Training), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_training(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    save_training(&api, &caller, &tenant, None, &body).await
}

/// Changes a training row.
#[utoipa::path(patch, path = "/tenants/{tenant}/training-data/{id}", tag = "training-data",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("id" = Uuid, Path, description = "The row's id")),
    request_body = TrainingInput,
    responses((status = 200, body = Training), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn patch_training(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    save_training(&api, &caller, &tenant, Some(&id), &body).await
}

async fn save_training(
    api: &Api,
    caller: &Caller,
    tenant: &str,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, tenant).await?;
    let (id, before) = match id {
        Some(id) => {
            let id = row_id(id)?;
            let row: Option<Training> = edits::training_row(&mut tx, tenant, id).await?;
            let row = row.ok_or_else(|| Problem::not_found(format!("no training row {id}")))?;
            (Some(id), Some(row))
        }
        None => (None, None),
    };
    require(&caller.principal, Access::TenantAdmin)?;
    let input: TrainingInput = parse_json(body)?;
    let r = input.over(before.clone())?;
    let saved: Training = edits::save_training(&mut tx, tenant, id, &training_write(&r))
        .await
        .map_err(|e| {
            taken(
                e,
                "bot_training_data_tenant_type_question_key",
                "question",
                "an entry of this type with this question",
            )
        })?;
    let action = if id.is_some() {
        "training.update"
    } else {
        "training.create"
    };
    let changed = record_change(
        &mut tx,
        caller,
        tenant,
        action,
        &saved.id.to_string(),
        before.as_ref(),
        Some(&saved),
    )
    .await?;
    tx.commit().await?;
    if changed {
        api.announce(tenant).await;
    }
    let status = if id.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(saved)).into_response())
}

/// Removes a training row (log rows that cite it keep their text).
#[utoipa::path(delete, path = "/tenants/{tenant}/training-data/{id}", tag = "training-data",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("id" = Uuid, Path, description = "The row's id")),
    responses((status = 204), (status = 404, body = Problem), (status = 403, body = Problem)))]
pub async fn delete_training(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let id = row_id(&id)?;
    let row: Option<Training> = edits::training_row(&mut tx, tenant, id).await?;
    let row = row.ok_or_else(|| Problem::not_found(format!("no training row {id}")))?;
    require(&caller.principal, Access::TenantAdmin)?;
    edits::delete_training(&mut tx, tenant, id).await?;
    record_change(
        &mut tx,
        &caller,
        tenant,
        "training.delete",
        &id.to_string(),
        Some(&row),
        None,
    )
    .await?;
    tx.commit().await?;
    api.announce(tenant).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
