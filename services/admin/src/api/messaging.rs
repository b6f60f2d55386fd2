//! A tenant's approved WhatsApp message templates (what goes out when a
//! customer's 24-hour window is closed) and its customers' opt-outs.

use std::sync::Arc;

use alphadome_core::conversation;
use alphadome_core::tenant::messaging::{check_templates, templates_of, WhatsAppTemplate};
use alphadome_core::tenant::store::{self as tenant_store, edits};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::problem::parse_json;
use super::tenants::record_change;
use super::{require, Access, Api, Caller, Problem, Scope};
use crate::people::Principal;

/// The tenant's approved WhatsApp message templates.
#[utoipa::path(get, path = "/tenants/{tenant}/whatsapp-templates", tag = "settings",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = [WhatsAppTemplate]), (status = 404, body = Problem)))]
pub async fn whatsapp_templates(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(load_templates(&api, &caller.principal, &tenant).await?).into_response())
}

/// The tenant's approved WhatsApp templates, as `who` may see them.
pub async fn load_templates(
    api: &Api,
    who: &Principal,
    tenant: &str,
) -> Result<Vec<WhatsAppTemplate>, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let stored = edits::whatsapp_templates(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(templates_of(&stored))
}

/// Replaces the tenant's approved WhatsApp message templates (each as Meta
/// approved it: name, language, what fills its parameters, and which
/// proactive messages use it outside the window).
#[utoipa::path(put, path = "/tenants/{tenant}/whatsapp-templates", tag = "settings",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    request_body = [WhatsAppTemplate],
    responses((status = 200, body = [WhatsAppTemplate]), (status = 404, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_whatsapp_templates(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    let list: Vec<WhatsAppTemplate> = parse_json(&body)?;
    check_templates(&list).map_err(|(field, why)| Problem::invalid(field, why))?;
    let before = templates_of(&edits::whatsapp_templates(&mut tx, tenant).await?);
    let stored = serde_json::to_value(&list).unwrap_or_else(|_| serde_json::json!([]));
    tenant_store::set_whatsapp_templates(&mut tx, tenant, &stored).await?;
    let changed = record_change(
        &mut tx,
        &caller,
        tenant,
        "whatsapp_templates.update",
        &tenant.to_string(),
        Some(&serde_json::json!({ "whatsapp_templates": before })),
        Some(&serde_json::json!({ "whatsapp_templates": list })),
    )
    .await?;
    tx.commit().await?;
    if changed {
        api.announce(tenant).await;
    }
    Ok(Json(list).into_response())
}

/// A customer who wrote STOP.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OptOut {
    /// Their phone (or business-scoped user id).
    pub customer: String,
    pub opted_out_at: DateTime<Utc>,
}

/// The tenant's customers who opted out of proactive messages (STOP, or
/// the tenant's own words), newest first (at most 500); START takes them
/// off.
#[utoipa::path(get, path = "/tenants/{tenant}/opt-outs", tag = "conversations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone")),
    responses((status = 200, body = [OptOut]), (status = 404, body = Problem)))]
pub async fn opt_outs(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let rows = conversation::opted_out_in(&mut tx, tenant, 500).await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter()
            .map(|(customer, opted_out_at)| OptOut {
                customer,
                opted_out_at,
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}
