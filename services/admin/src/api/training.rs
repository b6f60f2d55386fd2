//! Training mode's candidates: questions the bot could not answer with
//! confidence, grouped by meaning by the responder
//! ([`alphadome_core::training`]), listed here and taught an answer (which
//! becomes an active FAQ entry) or dismissed.

use std::sync::Arc;

use alphadome_core::training::{self, Candidate, TeachError};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::problem::parse_json;
use super::tenants::record_change;
use super::{require, Access, Api, Caller, Problem, Scope};

/// Which candidates to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CandidateQuery {
    /// `open` (the default), `taught`, `dismissed` or `all`.
    pub status: Option<String>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<i64>,
}

/// A page of candidates, most asked first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Candidates {
    pub candidates: Vec<Candidate>,
}

/// Candidate `id` of the tenant, or 404.
async fn found(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<Candidate, Problem> {
    training::candidate(conn, tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no training candidate {id}")))
}

fn candidate_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id.trim())
        .map_err(|_| Problem::not_found(format!("no training candidate {id:?}")))
}

/// The tenant's training candidates.
#[utoipa::path(get, path = "/tenants/{tenant}/training-candidates", tag = "training-candidates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"), CandidateQuery),
    responses((status = 200, body = Candidates), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn candidates(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<CandidateQuery>,
) -> Result<Json<Candidates>, Problem> {
    let status = match q.status.as_deref().unwrap_or("open") {
        "all" => None,
        s @ ("open" | "taught" | "dismissed") => Some(s),
        other => {
            return Err(Problem::invalid(
                "status",
                format!("{other:?} is not open, taught, dismissed or all"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid("limit", "must be between 1 and 500"));
    }
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let candidates = training::candidates(&mut tx, tenant, status, limit).await?;
    tx.commit().await?;
    Ok(Json(Candidates { candidates }))
}

/// The tenant's open candidates, most asked first (for the dashboard).
pub async fn load_candidates(
    api: &Api,
    who: &crate::people::Principal,
    tenant: &str,
) -> Result<Vec<Candidate>, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let rows = training::candidates(&mut tx, tenant, Some("open"), 100).await?;
    tx.commit().await?;
    Ok(rows)
}

/// The answer taught.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Teach {
    /// The answer customers asking this will get (1 to 4096 characters).
    pub answer: String,
}

/// What teaching made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Taught {
    pub candidate: Candidate,
    /// The active FAQ entry the answer became.
    pub training_data_id: Uuid,
}

/// Teaches a candidate its answer: its question becomes an active FAQ
/// entry with that answer, which the responder uses within a second.
#[utoipa::path(post, path = "/tenants/{tenant}/training-candidates/{id}/teach", tag = "training-candidates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("id" = Uuid, Path, description = "The candidate's id")),
    request_body = Teach,
    responses((status = 200, body = Taught), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem), (status = 403, body = Problem)))]
pub async fn teach(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let id = candidate_id(&id)?;
    let before = found(&mut tx, tenant, id).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    let body: Teach = parse_json(&body)?;
    let entry = match training::teach(&mut tx, tenant, id, &body.answer, &caller.principal.actor)
        .await
    {
        Ok(e) => e,
        Err(TeachError::Db(e)) => return Err(e.into()),
        Err(TeachError::NotFound) => {
            return Err(Problem::not_found(format!("no training candidate {id}")))
        }
        Err(e @ TeachError::NotOpen(_)) => return Err(Problem::conflict("status", e.to_string())),
        Err(e) => return Err(Problem::invalid("answer", e.to_string())),
    };
    let after = found(&mut tx, tenant, id).await?;
    record_change(
        &mut tx,
        &caller,
        tenant,
        "training_candidate.teach",
        &id.to_string(),
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    api.announce(tenant).await;
    Ok(Json(Taught {
        candidate: after,
        training_data_id: entry,
    })
    .into_response())
}

/// Dismisses a candidate: nothing to teach.
#[utoipa::path(post, path = "/tenants/{tenant}/training-candidates/{id}/dismiss", tag = "training-candidates",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"),
           ("id" = Uuid, Path, description = "The candidate's id")),
    responses((status = 200, body = Candidate), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 403, body = Problem)))]
pub async fn dismiss(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let id = candidate_id(&id)?;
    let before = found(&mut tx, tenant, id).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    if !training::dismiss(&mut tx, tenant, id).await? {
        return Err(Problem::conflict(
            "status",
            format!("the candidate was already {}", before.status),
        ));
    }
    let after = found(&mut tx, tenant, id).await?;
    record_change(
        &mut tx,
        &caller,
        tenant,
        "training_candidate.dismiss",
        &id.to_string(),
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after).into_response())
}
