//! The sender's SQL. It owns `outbound_messages`: one row per reply the
//! platform intends to send, keyed by the id derived from the inbound
//! wamid, claimed before the Graph API is called and recorded after, so a
//! reply already sent is never sent again. Claims and records are one call
//! of a SQL function each, coalesced with the calls made at the same moment
//! into one batch call ([`claim_batcher`], [`record_batcher`]).

use std::time::Duration;

use alphadome_core::batch::{by_index, unzip5, Coalescer};
use alphadome_core::db::{scoped, Sticky};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One claim: tenant, outbound id, in reply to.
pub type ClaimRequest = (Uuid, String, String);
/// The claim function's answer: claimed, state, parts sent, first wamid.
pub type ClaimRow = (bool, String, i32, Option<String>);
/// One record: tenant, outbound id, parts sent, first wamid, parts in all.
pub type RecordRequest = (Uuid, String, i32, Option<String>, i32);

/// Most items in one batch call.
const MAX_BATCH: usize = 256;
/// Batch calls of one kind in flight at once.
const BATCHES_IN_FLIGHT: usize = 2;

/// Claims made at the same moment, as one `alphadome.claim_outbound_batch`
/// call on a kept connection.
pub fn claim_batcher(db: PgPool, lease: Duration) -> Coalescer<ClaimRequest, ClaimRow> {
    let sticky = Sticky::new(db, BATCHES_IN_FLIGHT);
    Coalescer::new(
        "claim",
        MAX_BATCH,
        BATCHES_IN_FLIGHT,
        move |reqs: Vec<ClaimRequest>| {
            let sticky = sticky.clone();
            async move {
                let mut conn = sticky.get().await?;
                let n = reqs.len();
                let rows = claim_batch(&mut conn, reqs, lease).await?;
                conn.keep();
                Ok::<_, sqlx::Error>(by_index(n, rows))
            }
        },
    )
}

/// Records made at the same moment, as one
/// `alphadome.record_outbound_progress_batch` call on a kept connection.
pub fn record_batcher(db: PgPool) -> Coalescer<RecordRequest, ()> {
    let sticky = Sticky::new(db, BATCHES_IN_FLIGHT);
    Coalescer::new(
        "record",
        MAX_BATCH,
        BATCHES_IN_FLIGHT,
        move |reqs: Vec<RecordRequest>| {
            let sticky = sticky.clone();
            async move {
                let mut conn = sticky.get().await?;
                let n = reqs.len();
                record_batch(&mut conn, reqs).await?;
                conn.keep();
                Ok::<_, sqlx::Error>(vec![Some(()); n])
            }
        },
    )
}

/// Claims a batch of replies in one call (`alphadome.claim_outbound_batch`,
/// in outbound id order): rows numbered from 1 by their position in
/// `reqs`; a reply whose row is not visible under its tenant gets none.
pub async fn claim_batch(
    conn: &mut PgConnection,
    reqs: Vec<ClaimRequest>,
    lease: Duration,
) -> Result<Vec<(i32, ClaimRow)>, sqlx::Error> {
    let (tenants, (ids, replies)): (Vec<Uuid>, (Vec<String>, Vec<String>)) = reqs
        .into_iter()
        .map(|(t, id, reply)| (t, (id, reply)))
        .unzip();
    let rows: Vec<(i32, bool, String, i32, Option<String>)> =
        sqlx::query_as("SELECT * FROM alphadome.claim_outbound_batch($1, $2, $3, $4)")
            .bind(&tenants)
            .bind(&ids)
            .bind(&replies)
            .bind(lease.as_secs_f64())
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(i, claimed, state, parts, wamid)| (i, (claimed, state, parts, wamid)))
        .collect())
}

/// Records a batch of replies' progress in one call
/// (`alphadome.record_outbound_progress_batch`).
pub async fn record_batch(
    conn: &mut PgConnection,
    reqs: Vec<RecordRequest>,
) -> Result<(), sqlx::Error> {
    let cols = unzip5(reqs);
    sqlx::query("SELECT alphadome.record_outbound_progress_batch($1, $2, $3, $4, $5)")
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Claims one reply alone (`alphadome.claim_outbound`); `None` when its
/// row is not visible under the tenant.
pub async fn claim(
    db: &PgPool,
    req: &ClaimRequest,
    lease: Duration,
) -> Result<Option<ClaimRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM alphadome.claim_outbound($1, $2, $3, $4)")
        .bind(req.0)
        .bind(&req.1)
        .bind(&req.2)
        .bind(lease.as_secs_f64())
        .fetch_optional(db)
        .await
}

/// Records one reply's progress alone (`alphadome.record_outbound_progress`).
pub async fn record(db: &PgPool, req: &RecordRequest) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT alphadome.record_outbound_progress($1, $2, $3, $4, $5)")
        .bind(req.0)
        .bind(&req.1)
        .bind(req.2)
        .bind(&req.3)
        .bind(req.4)
        .execute(db)
        .await
        .map(|_| ())
}

/// Releases a claim after a failure (the next delivery may claim it at
/// once), keeping the reason.
pub async fn release(
    db: &PgPool,
    tenant: Uuid,
    outbound_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    execute_for(
        db,
        tenant,
        sqlx::query(
            "UPDATE alphadome.outbound_messages SET claimed_until = NULL, last_error = $2, updated_at = now() \
             WHERE outbound_id = $1 AND state = 'sending'",
        )
        .bind(outbound_id)
        .bind(reason),
    )
    .await
    .map(|_| ())
}

/// Marks a reply as failed for good (Meta refused it permanently).
pub async fn fail(
    db: &PgPool,
    tenant: Uuid,
    outbound_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    execute_for(
        db,
        tenant,
        sqlx::query(
            "UPDATE alphadome.outbound_messages SET state = 'failed', claimed_until = NULL, last_error = $2, \
             updated_at = now() WHERE outbound_id = $1",
        )
        .bind(outbound_id)
        .bind(reason),
    )
    .await
    .map(|_| ())
}

/// Opens a permanently failed reply for one more attempt (a dead letter
/// replayed once its cause is fixed). A reply that was sent stays sent.
/// Returns whether it was failed.
pub async fn reopen_failed(
    db: &PgPool,
    tenant: Uuid,
    outbound_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(execute_for(
        db,
        tenant,
        sqlx::query(
            "UPDATE alphadome.outbound_messages SET state = 'sending', claimed_until = NULL, updated_at = now() \
             WHERE outbound_id = $1 AND bot_tenant_id = $2 AND state = 'failed'",
        )
        .bind(outbound_id)
        .bind(tenant),
    )
    .await?
        > 0)
}

/// Runs one statement as `tenant` (row-level security scope); returns the
/// rows it affected.
async fn execute_for(
    db: &PgPool,
    tenant: Uuid,
    q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64, sqlx::Error> {
    let mut tx = scoped(db, tenant).await?;
    let n = q.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(n)
}
