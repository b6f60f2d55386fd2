//! Dead letters: listing what could not be processed, with the reason, and
//! re-driving it once the cause is fixed. Replays keep every guarantee: a
//! reply already sent is never sent again (the sender's claim row decides),
//! and a reply that failed permanently is released for one more attempt.

use alphadome_core::bus::{Bus, BusError, StreamKind};
use alphadome_core::events::v1::{DeadLetter, OutboundMessage};
use alphadome_core::events::Message as _;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub seq: u64,
    pub tenant_id: String,
    pub id: String,
    pub source_stream: String,
    pub source_subject: String,
    pub reason: String,
    pub deliveries: u64,
    pub failed_at_ms: i64,
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead-letter stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

async fn letters(bus: &Bus) -> Result<Vec<(u64, DeadLetter)>, DlqError> {
    let name = bus.stream_name(StreamKind::DeadLetter);
    let mut stream = bus
        .js
        .get_stream(&name)
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for seq in first..=last {
        // Deleted sequences (already replayed) are simply absent.
        let Ok(raw) = stream.get_raw_message(seq).await else {
            continue;
        };
        match DeadLetter::decode(raw.payload.clone()) {
            Ok(l) => out.push((seq, l)),
            Err(e) => tracing::warn!(seq, error = %e, "undecodable dead letter skipped"),
        }
    }
    Ok(out)
}

/// Every dead letter still held, oldest first.
pub async fn list(bus: &Bus) -> Result<Vec<Letter>, DlqError> {
    Ok(letters(bus)
        .await?
        .into_iter()
        .map(|(seq, l)| Letter {
            seq,
            tenant_id: l.tenant_id,
            id: l.wamid,
            source_stream: l.source_stream,
            source_subject: l.source_subject,
            reason: l.reason,
            deliveries: l.deliveries,
            failed_at_ms: l.failed_at_ms,
        })
        .collect())
}

/// Re-drives the dead letters with the given sequences (all when `None`):
/// each goes back to the subject it came from and leaves the dead-letter
/// stream. Returns how many were replayed.
pub async fn replay(bus: &Bus, db: &PgPool, only: Option<&[u64]>) -> Result<u64, DlqError> {
    let name = bus.stream_name(StreamKind::DeadLetter);
    let stream = bus
        .js
        .get_stream(&name)
        .await
        .map_err(|e| DlqError::Stream(e.to_string()))?;
    let outbound_stream = bus.stream_name(StreamKind::Outbound);
    let mut n = 0;
    for (seq, letter) in letters(bus).await? {
        if only.is_some_and(|s| !s.contains(&seq)) {
            continue;
        }
        if letter.source_stream == outbound_stream {
            // A reply that failed permanently gets one more attempt; one
            // that was sent stays sent (the sender will skip it).
            if let Ok(out) = OutboundMessage::decode(letter.payload.as_slice()) {
                if let Ok(tenant) = Uuid::parse_str(&out.tenant_id) {
                    sqlx::query(
                        "UPDATE alphadome.outbound_messages SET state = 'sending', claimed_until = NULL, updated_at = now() \
                         WHERE outbound_id = $1 AND bot_tenant_id = $2 AND state = 'failed'",
                    )
                    .bind(&out.outbound_id)
                    .bind(tenant)
                    .execute(db)
                    .await?;
                }
            }
        }
        let id = format!("replay:{seq}:{}", letter.wamid);
        bus.publish(
            letter.source_subject.clone(),
            &id,
            letter.payload.clone().into(),
        )
        .await?;
        stream
            .delete_message(seq)
            .await
            .map_err(|e| DlqError::Stream(e.to_string()))?;
        tracing::info!(seq, subject = %letter.source_subject, "dead letter replayed");
        n += 1;
    }
    Ok(n)
}
