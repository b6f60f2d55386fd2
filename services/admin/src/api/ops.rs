//! Usage, the change audit and dead letters.

use std::sync::Arc;

use alphadome_logger::store::{self as log_store, UsageDay};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{require, Access, Api, Caller, Problem, Scope};
use crate::changes::{self, ChangeRecord};
use crate::dlq::{self, Letter};

/// From when.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The first day (YYYY-MM-DD, UTC); default 30 days ago.
    pub since: Option<String>,
}

fn parse_day(field: &str, v: &str) -> Result<NaiveDate, Problem> {
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map_err(|_| Problem::invalid(field, format!("{v:?} is not a day (YYYY-MM-DD)")))
}

/// A tenant's messages, AI replies and tokens per day.
#[utoipa::path(get, path = "/tenants/{tenant}/usage", tag = "operations",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"), UsageQuery),
    responses((status = 200, body = [UsageDay]), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn usage(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Response, Problem> {
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_day("since", s)?,
        None => (Utc::now() - chrono::Duration::days(30)).date_naive(),
    };
    Ok(Json(load_usage(&api, &caller.principal, &tenant, since).await?).into_response())
}

/// A tenant's usage per day since `since`, as `who` may see it.
pub async fn load_usage(
    api: &Api,
    who: &crate::people::Principal,
    tenant: &str,
    since: NaiveDate,
) -> Result<Vec<UsageDay>, Problem> {
    let Scope { mut tx, tenant } = api.scope(who, tenant).await?;
    let days = log_store::usage_in(&mut tx, tenant, since).await?;
    tx.commit().await?;
    Ok(days)
}

/// Which changes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this tenant's (id or client phone). A tenant-bound caller sees
    /// only their own tenant's whatever this says.
    pub tenant: Option<String>,
    /// From this day (YYYY-MM-DD, UTC).
    pub since: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    pub limit: Option<String>,
}

/// Every recorded change, newest first: who, when, what, before and after
/// (secrets masked).
#[utoipa::path(get, path = "/audit", tag = "operations", params(AuditQuery),
    responses((status = 200, body = [ChangeRecord]), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn audit(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Problem> {
    let since = q
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_day("since", s))
        .transpose()?
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| Problem::invalid("limit", format!("{l:?} is not 1 to 1000")))?,
    };
    let named = q.tenant.as_deref().filter(|t| !t.is_empty());
    let records = load_audit(&api, &caller.principal, named, since, limit).await?;
    Ok(Json(records).into_response())
}

/// The change records `who` may see, newest first: of the tenant `named`
/// (a tenant-bound caller's own whatever it says), or all.
pub async fn load_audit(
    api: &Api,
    who: &crate::people::Principal,
    named: Option<&str>,
    since: Option<chrono::DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<ChangeRecord>, Problem> {
    Ok(match (who.tenant, named) {
        // A platform admin reads every tenant's, and the platform's own.
        (None, None) => changes::list(&api.db, None, since, limit).await?,
        // Otherwise in a transaction acting for the tenant: row-level
        // security shows its records only.
        (own, named) => {
            let named = named.map(str::to_owned).or(own.map(|t| t.to_string()));
            let named = named.unwrap_or_default();
            let Scope { mut tx, tenant } = api.scope(who, &named).await?;
            let r = changes::list_in(&mut tx, Some(tenant), since, limit).await?;
            tx.commit().await?;
            r
        }
    })
}

/// Messages that failed every delivery attempt, oldest first (platform
/// admins).
#[utoipa::path(get, path = "/dead-letters", tag = "operations",
    responses((status = 200, body = [Letter]), (status = 403, body = Problem)))]
pub async fn dead_letters(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Response, Problem> {
    require(&caller.principal, Access::Platform)?;
    let letters = dlq::list(&api.bus)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(letters).into_response())
}

/// What a replay did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

/// Sends a dead letter back to where it failed (platform admins).
#[utoipa::path(post, path = "/dead-letters/{seq}/replay", tag = "operations",
    params(("seq" = u64, Path, description = "The dead letter's sequence number")),
    responses((status = 200, body = Replayed), (status = 404, body = Problem), (status = 403, body = Problem)))]
pub async fn replay(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(seq): Path<String>,
) -> Result<Response, Problem> {
    require(&caller.principal, Access::Platform)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| Problem::not_found(format!("no dead letter {seq:?}")))?;
    let n = dlq::replay(&api.bus, Some(&[seq]))
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if n == 0 {
        return Err(Problem::not_found(format!("no dead letter {seq}")));
    }
    if let Ok(mut conn) = api.db.acquire().await {
        let subject = seq.to_string();
        let record = changes::record(
            &mut conn,
            &changes::Change {
                actor: &caller.principal.actor,
                tenant: None,
                action: "dead_letter.replay",
                subject: &subject,
                before: None,
                after: None,
            },
        )
        .await;
        if let Err(e) = record {
            tracing::warn!(error = %alphadome_core::Report(&e), "recording a replay in the change audit failed");
        }
    }
    Ok(Json(Replayed { replayed: n }).into_response())
}
