//! Dead letters: listing what could not be processed, with the reason, and
//! re-driving it once the cause is fixed. A replayed message goes back to
//! the subject it came from, marked as replayed
//! ([`alphadome_core::bus::REPLAY_HEADER`]); its consumer keeps every
//! guarantee: a reply already sent is never sent again, and a reply that
//! failed for good gets one more attempt (the sender's decision, on its
//! own table).

use alphadome_core::bus::{Bus, BusError, StreamKind};
use alphadome_core::events::v1::DeadLetter;
use alphadome_core::events::Message as _;
use alphadome_core::Report;
use serde::Serialize;

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("reading the dead-letter stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: Cause,
    },
    #[error("removing dead letter {seq} after its replay")]
    Delete {
        seq: u64,
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

async fn letters(bus: &Bus) -> Result<Vec<(u64, DeadLetter)>, DlqError> {
    let name = bus.stream_name(StreamKind::DeadLetter);
    let stream_error = |e: Cause| DlqError::Stream {
        stream: name.clone(),
        source: e,
    };
    let mut stream = bus
        .js
        .get_stream(&name)
        .await
        .map_err(|e| stream_error(e.into()))?;
    let info = stream.info().await.map_err(|e| stream_error(e.into()))?;
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
            Err(e) => tracing::warn!(seq, error = %Report(&e), "undecodable dead letter skipped"),
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
pub async fn replay(bus: &Bus, only: Option<&[u64]>) -> Result<u64, DlqError> {
    let name = bus.stream_name(StreamKind::DeadLetter);
    let stream = bus
        .js
        .get_stream(&name)
        .await
        .map_err(|e| DlqError::Stream {
            stream: name.clone(),
            source: e.into(),
        })?;
    let mut n = 0;
    for (seq, letter) in letters(bus).await? {
        if only.is_some_and(|s| !s.contains(&seq)) {
            continue;
        }
        let id = format!("replay:{seq}:{}", letter.wamid);
        bus.replay(
            letter.source_subject.clone(),
            &id,
            letter.payload.clone().into(),
            seq,
        )
        .await?;
        stream
            .delete_message(seq)
            .await
            .map_err(|e| DlqError::Delete {
                seq,
                source: e.into(),
            })?;
        tracing::info!(seq, subject = %letter.source_subject, "dead letter replayed");
        n += 1;
    }
    Ok(n)
}
