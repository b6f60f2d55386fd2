//! The logger's two write paths, for one batch of messages each: log rows
//! (customers resolved, one statement for the rows of any tenants) and
//! delivery statuses (one call). A batch the database refuses is retried
//! item by item, so only the item it refuses is dead-lettered; a batch
//! the database cannot take (an outage) is retried whole, later.

use std::collections::HashMap;

use alphadome_core::bus::Outcome;
use alphadome_core::events::v1::{AccountEvent, LogEvent, StatusUpdate};
use alphadome_core::events::Message as _;
use alphadome_core::Report;
use async_nats::jetstream;
use sqlx::PgPool;
use uuid::Uuid;

use crate::rows::{self, backoff, classify, BatchError, Row, StatusRow};
use crate::store;

fn delivered(msg: &jetstream::Message) -> i64 {
    msg.info().map(|i| i.delivered).unwrap_or(1)
}

/// Writes a batch of log events; one outcome per message, in order.
pub async fn write_logs(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut index = Vec::new();
    for (i, msg) in batch.iter().enumerate() {
        match LogEvent::decode(msg.payload.clone()) {
            Ok(event) => match Row::of(event) {
                Ok(row) => {
                    rows.push(row);
                    index.push(i);
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(Outcome::Poison { reason })),
            },
            Err(e) => outcomes.push(Some(Outcome::Poison {
                reason: format!("undecodable LogEvent: {}", Report(&e)),
            })),
        }
    }
    match insert_rows(db, &rows).await {
        Ok(()) => {
            for i in index {
                outcomes[i] = Some(Outcome::Ack);
            }
        }
        Err(BatchError::Unavailable(e)) => {
            tracing::warn!(error = %Report(&e), rows = rows.len(), "database unavailable; log batch will be retried");
            for i in index {
                outcomes[i] = Some(Outcome::Retry {
                    delay: backoff(delivered(&batch[i])),
                    reason: format!("database unavailable: {}", Report(&e)),
                });
            }
        }
        Err(BatchError::Refused(e)) if rows.len() == 1 => {
            if let Some(&i) = index.first() {
                outcomes[i] = Some(Outcome::Poison {
                    reason: format!("database refused the log row: {}", Report(&e)),
                });
            }
        }
        Err(BatchError::Refused(e)) => {
            tracing::warn!(error = %Report(&e), "database refused a log batch; writing its rows one by one");
            for (row, i) in rows.into_iter().zip(index) {
                outcomes[i] = Some(match insert_rows(db, std::slice::from_ref(&row)).await {
                    Ok(()) => Outcome::Ack,
                    Err(BatchError::Unavailable(e)) => Outcome::Retry {
                        delay: backoff(delivered(&batch[i])),
                        reason: Report(&e).to_string(),
                    },
                    Err(BatchError::Refused(e)) => Outcome::Poison {
                        reason: format!("database refused the log row: {}", Report(&e)),
                    },
                });
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Ack))
        .collect()
}

/// Resolves (or registers) the rows' customers in `public.users`, as the
/// existing system does, and writes the rows. Phones seen before are looked
/// up in `alphadome.customer_users` (an index probe each): `public.users`
/// has no index on phone, and scanning it for every batch would cost the
/// database O(users × batch).
async fn insert_rows(db: &PgPool, rows: &[Row]) -> Result<(), BatchError> {
    if rows.is_empty() {
        return Ok(());
    }
    let phones = rows::phones(rows);
    let mut users: HashMap<String, Uuid> = HashMap::new();
    if !phones.is_empty() {
        let mut conn = db.acquire().await.map_err(classify)?;
        users.extend(
            store::mapped_users(&mut conn, &phones)
                .await
                .map_err(classify)?,
        );
    }
    let missing = store::unknown(&phones, &users);
    if !missing.is_empty() {
        users.extend(
            store::register_users(db, &missing)
                .await
                .map_err(classify)?,
        );
    }
    store::write_message_logs(db, &rows::log_columns(rows, &users))
        .await
        .map_err(classify)
}

/// Writes `events` exactly as the logger writes a batch (customers
/// resolved, one statement for the rows of any tenants, new rows mirrored
/// to public.conversations), outside any consumer: alphadome-bench
/// measures the database's ceiling through it.
pub async fn write_events(db: &PgPool, events: Vec<LogEvent>) -> Result<(), WriteError> {
    let rows = events
        .into_iter()
        .map(Row::of)
        .collect::<Result<Vec<_>, String>>()
        .map_err(WriteError::BadEvent)?;
    insert_rows(db, &rows).await.map_err(|e| match e {
        BatchError::Unavailable(e) | BatchError::Refused(e) => WriteError::Database(e),
    })
}

/// Why [`write_events`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    BadEvent(String),
    #[error("writing the log rows")]
    Database(#[source] sqlx::Error),
}

/// Keeps a batch of account events in one call; when the database refuses
/// the batch, each event alone, so only the bad one is dead-lettered. One
/// outcome per message, in order.
pub async fn write_account_events(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let mut index = Vec::new();
    for (i, msg) in batch.iter().enumerate() {
        match AccountEvent::decode(msg.payload.clone()) {
            Ok(e) if rows::account_columns(std::slice::from_ref(&e)).is_ok() => {
                events.push(e);
                index.push(i);
                outcomes.push(None);
            }
            Ok(e) => outcomes.push(Some(Outcome::Poison {
                reason: format!("tenant id {:?} is not a uuid", e.tenant_id),
            })),
            Err(e) => outcomes.push(Some(Outcome::Poison {
                reason: format!("undecodable AccountEvent: {}", Report(&e)),
            })),
        }
    }
    let write = |events: &[AccountEvent]| {
        let cols = rows::account_columns(events);
        async move {
            match cols {
                Ok(c) if !c.tenant.is_empty() => store::write_account_events(db, &c)
                    .await
                    .map(|_| ())
                    .map_err(classify),
                _ => Ok(()),
            }
        }
    };
    let retry = |i: usize, e: &sqlx::Error| Outcome::Retry {
        delay: backoff(delivered(&batch[i])),
        reason: format!("database unavailable: {}", Report(e)),
    };
    match write(&events).await {
        Ok(()) => index.iter().for_each(|&i| outcomes[i] = Some(Outcome::Ack)),
        Err(BatchError::Unavailable(e)) => {
            tracing::warn!(error = %Report(&e), events = events.len(), "database unavailable; account events will be retried");
            index.iter().for_each(|&i| outcomes[i] = Some(retry(i, &e)));
        }
        Err(BatchError::Refused(e)) => {
            tracing::warn!(error = %Report(&e), "database refused a batch of account events; writing them one by one");
            for (ev, &i) in events.iter().zip(&index) {
                outcomes[i] = Some(match write(std::slice::from_ref(ev)).await {
                    Ok(()) => Outcome::Ack,
                    Err(BatchError::Unavailable(e)) => retry(i, &e),
                    Err(BatchError::Refused(e)) => Outcome::Poison {
                        reason: format!("database refused the account event: {}", Report(&e)),
                    },
                });
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Ack))
        .collect()
}

/// Applies a batch of statuses in one call; when the database refuses the
/// batch, each status alone, so only the bad one is dead-lettered. One
/// outcome per message, in order.
pub async fn apply_statuses(db: &PgPool, batch: &[jetstream::Message]) -> Vec<Outcome> {
    let mut found: Vec<Option<Result<bool, sqlx::Error>>> = Vec::with_capacity(batch.len());
    let mut rows: Vec<(usize, StatusRow)> = Vec::new();
    let mut out: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    for (i, msg) in batch.iter().enumerate() {
        found.push(None);
        match StatusUpdate::decode(msg.payload.clone()) {
            Err(e) => out.push(Some(Outcome::Poison {
                reason: format!("undecodable StatusUpdate: {}", Report(&e)),
            })),
            Ok(st) => {
                out.push(None);
                match StatusRow::of(&st) {
                    Some(row) => rows.push((i, row)),
                    None => found[i] = Some(Ok(true)),
                }
            }
        }
    }
    if !rows.is_empty() {
        let all: Vec<&StatusRow> = rows.iter().map(|(_, r)| r).collect();
        match apply(db, &all).await {
            Ok(flags) => {
                for ((i, _), f) in rows.iter().zip(flags) {
                    found[*i] = Some(Ok(f));
                }
            }
            Err(e) => match classify(e) {
                BatchError::Unavailable(e) => {
                    tracing::warn!(error = %Report(&e), statuses = rows.len(), "database unavailable; statuses will be retried");
                    for (i, _) in &rows {
                        out[*i] = Some(Outcome::Retry {
                            delay: backoff(delivered(&batch[*i])),
                            reason: format!("database unavailable: {}", Report(&e)),
                        });
                    }
                }
                BatchError::Refused(e) => {
                    tracing::warn!(error = %Report(&e), "database refused a status batch; applying them one by one");
                    for (i, row) in &rows {
                        found[*i] = Some(
                            apply(db, &[row])
                                .await
                                .map(|f| f.first().copied().unwrap_or(false)),
                        );
                    }
                }
            },
        }
    }
    out.into_iter()
        .zip(found)
        .zip(batch)
        .map(|((o, f), msg)| match (o, f) {
            (Some(o), _) => o,
            (None, Some(f)) => rows::status_outcome(delivered(msg), f),
            (None, None) => Outcome::Retry {
                delay: backoff(delivered(msg)),
                reason: "status not applied".into(),
            },
        })
        .collect()
}

/// Whether each status's outgoing row exists, in order.
async fn apply(db: &PgPool, rows: &[&StatusRow]) -> Result<Vec<bool>, sqlx::Error> {
    let found = store::apply_status_batch(db, &rows::status_columns(rows)).await?;
    Ok(alphadome_core::batch::by_index(rows.len(), found)
        .into_iter()
        .map(|f| f.unwrap_or(false))
        .collect())
}
