//! The logger's decisions as plain functions (no database, no broker):
//! events decoded into rows, rows into the columns of one statement, a
//! database error classed as an outage or a refusal, and what each outcome
//! means for the message.

use std::collections::HashMap;
use std::time::Duration;

use alphadome_core::bus::Outcome;
use alphadome_core::events::v1::{AccountEvent, Direction, LogEvent, StatusUpdate};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{AccountColumns, LogColumns, StatusColumns};

/// Why a batch failed.
#[derive(Debug)]
pub enum BatchError {
    /// The database is unreachable or overloaded: retry everything later.
    Unavailable(sqlx::Error),
    /// The database refused the data: isolate the bad message.
    Refused(sqlx::Error),
}

/// Classes a database error: connection (08), operator intervention (57)
/// and resource (53) errors, and every non-database error, are outages;
/// the rest refuse the data.
pub fn classify(e: sqlx::Error) -> BatchError {
    match e {
        sqlx::Error::Database(ref d) if !matches!(d.code().as_deref(), Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53")) => {
            BatchError::Refused(e)
        }
        other => BatchError::Unavailable(other),
    }
}

/// Postgres text can't hold NUL.
pub fn clean(s: &str) -> String {
    s.replace('\0', "")
}

/// JSON for a jsonb column: NUL escapes removed; `None` when empty or not
/// JSON.
pub fn json(s: &str) -> Option<serde_json::Value> {
    if s.trim().is_empty() {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&s.replace("\\u0000", "")).ok()
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| clean(s))
}

/// One decoded log row.
#[derive(Debug)]
pub struct Row {
    pub tenant: Uuid,
    pub event: LogEvent,
}

impl Row {
    /// The event with its tenant id parsed; why not, when it is no uuid.
    pub fn of(event: LogEvent) -> Result<Self, String> {
        match Uuid::parse_str(&event.tenant_id) {
            Ok(tenant) => Ok(Self { tenant, event }),
            Err(_) => Err(format!("tenant id {:?} is not a uuid", event.tenant_id)),
        }
    }
}

/// The customers' phones of `rows`, sorted, each once.
pub fn phones(rows: &[Row]) -> Vec<String> {
    let mut phones: Vec<String> = rows
        .iter()
        .map(|r| clean(&r.event.user_phone))
        .filter(|p| !p.is_empty())
        .collect();
    phones.sort();
    phones.dedup();
    phones
}

/// The rows as the columns of `alphadome.write_message_logs`, each linked
/// to its customer's user where known.
pub fn log_columns(rows: &[Row], users: &HashMap<String, Uuid>) -> LogColumns {
    let mut c = LogColumns::default();
    for r in rows {
        let e = &r.event;
        c.tenant.push(r.tenant);
        let p = clean(&e.user_phone);
        c.user.push(users.get(&p).copied());
        c.phone.push((!p.is_empty()).then_some(p));
        c.direction
            .push(if e.direction == Direction::Outgoing as i32 {
                "outgoing"
            } else {
                "incoming"
            });
        c.text.push(opt(&e.message_text));
        c.wamid.push(opt(&e.wamid));
        c.ai.push(e.ai_processed);
        c.ai_response.push(opt(&e.ai_response));
        c.error.push(opt(&e.error_message));
        c.template.push(opt(&e.template_used));
        c.training.push(Uuid::parse_str(&e.training_data_id).ok());
        c.metadata.push(
            json(&e.metadata_json)
                .filter(|v| v.is_object())
                .unwrap_or_else(|| serde_json::json!({})),
        );
        c.at.push(
            DateTime::<Utc>::from_timestamp_millis(e.occurred_at_ms)
                .filter(|_| e.occurred_at_ms > 0)
                .unwrap_or_else(Utc::now),
        );
        c.key.push(clean(&e.dedup_key));
        c.raw.push(json(&e.raw_json));
    }
    c
}

/// What a status update writes.
#[derive(Debug)]
pub struct StatusRow {
    pub tenant: Uuid,
    pub wamid: String,
    pub status: String,
    pub at: DateTime<Utc>,
    pub error: Option<String>,
    pub callback: String,
}

impl StatusRow {
    /// `None` when the status names no valid tenant (nothing to write).
    pub fn of(st: &StatusUpdate) -> Option<Self> {
        let tenant = Uuid::parse_str(&st.tenant_id).ok()?;
        Some(Self {
            tenant,
            wamid: clean(&st.wamid),
            status: clean(&st.status),
            at: DateTime::<Utc>::from_timestamp(st.timestamp, 0)
                .filter(|_| st.timestamp > 0)
                .unwrap_or_else(Utc::now),
            error: (st.error_code != 0).then(|| {
                clean(format!("{}: {} {}", st.error_code, st.error_title, st.error_details).trim())
            }),
            callback: clean(&st.callback_data),
        })
    }
}

/// The statuses as the columns of `alphadome.apply_status_batch`.
pub fn status_columns<'a>(rows: &[&'a StatusRow]) -> StatusColumns<'a> {
    let mut c = StatusColumns::default();
    for r in rows {
        c.tenant.push(r.tenant);
        c.wamid.push(r.wamid.as_str());
        c.status.push(r.status.as_str());
        c.at.push(r.at);
        c.error.push(r.error.as_deref());
        c.callback.push(r.callback.as_str());
    }
    c
}

/// The account events as the columns of `alphadome.write_account_events`;
/// why not, for an event that names no valid tenant.
pub fn account_columns(events: &[AccountEvent]) -> Result<AccountColumns, String> {
    let mut c = AccountColumns::default();
    for e in events {
        let tenant = Uuid::parse_str(&e.tenant_id)
            .map_err(|_| format!("tenant id {:?} is not a uuid", e.tenant_id))?;
        c.tenant.push(tenant);
        c.account.push(clean(&e.business_account_id));
        c.field.push(clean(&e.field));
        c.event.push(opt(&e.event));
        c.value
            .push(json(&e.value_json).unwrap_or(serde_json::Value::Null));
        c.key.push(clean(&e.dedup_key));
        c.at.push(
            DateTime::<Utc>::from_timestamp_millis(e.received_at_ms)
                .filter(|_| e.received_at_ms > 0)
                .unwrap_or_else(Utc::now),
        );
    }
    Ok(c)
}

/// Deliveries after which a status for a message the platform never logged
/// (sent from elsewhere, or its log row was not written) is dropped.
pub const UNKNOWN_STATUS_DELIVERIES: i64 = 8;

/// How long a batch waits before its next try: 1, 2, 4 ... 30 s.
pub fn backoff(delivered: i64) -> Duration {
    let n = delivered.clamp(1, 6) as u32;
    Duration::from_secs(1u64 << (n - 1)).min(Duration::from_secs(30))
}

/// What applying a status came to: applied (or its row already has a
/// later status), its row not written yet (retried a few times, then
/// dropped), or an error.
pub fn status_outcome(delivered: i64, applied: Result<bool, sqlx::Error>) -> Outcome {
    match applied {
        Ok(true) => Outcome::Ack,
        Ok(false) if delivered >= UNKNOWN_STATUS_DELIVERIES => {
            tracing::warn!("status for a message with no outgoing log row; dropped");
            Outcome::Ack
        }
        Ok(false) => Outcome::Retry {
            delay: Duration::from_secs(2),
            reason: "outgoing log row not written yet".into(),
        },
        Err(e) => match classify(e) {
            BatchError::Unavailable(e) => Outcome::Retry {
                delay: backoff(delivered),
                reason: alphadome_core::Report(&e).to_string(),
            },
            BatchError::Refused(e) => Outcome::Poison {
                reason: format!(
                    "database refused the status: {}",
                    alphadome_core::Report(&e)
                ),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, phone: &str, direction: Direction) -> LogEvent {
        LogEvent {
            tenant_id: tenant.into(),
            direction: direction as i32,
            dedup_key: "in:w\0x".into(),
            user_phone: phone.into(),
            message_text: "hi\0".into(),
            metadata_json: "[1]".into(),
            raw_json: r#"{"a":"\u0000b"}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_become_clean_columns() {
        let t = Uuid::new_v4();
        assert!(Row::of(event("nope", "1", Direction::Incoming)).is_err());
        let rows = vec![
            Row::of(event(&t.to_string(), "2547", Direction::Incoming)).unwrap(),
            Row::of(event(&t.to_string(), "2547", Direction::Outgoing)).unwrap(),
            Row::of(event(&t.to_string(), "", Direction::Incoming)).unwrap(),
        ];
        assert_eq!(phones(&rows), vec!["2547".to_owned()]);
        let user = Uuid::new_v4();
        let c = log_columns(&rows, &HashMap::from([("2547".to_owned(), user)]));
        assert_eq!(c.direction, vec!["incoming", "outgoing", "incoming"]);
        assert_eq!(c.user, vec![Some(user), Some(user), None]);
        assert_eq!(c.phone[2], None);
        assert_eq!(c.key[0], "in:wx");
        assert_eq!(c.text[0].as_deref(), Some("hi"));
        assert_eq!(
            c.metadata[0],
            serde_json::json!({}),
            "a non-object becomes {{}}"
        );
        assert_eq!(c.raw[0], Some(serde_json::json!({"a": "b"})));
    }

    #[test]
    fn account_events_become_columns() {
        let e = AccountEvent {
            tenant_id: Uuid::new_v4().to_string(),
            business_account_id: "102290129340398".into(),
            field: "message_template_status_update".into(),
            event: "APPROVED".into(),
            value_json: r#"{"event":"APPROVED","message_template_name":"order\u0000"}"#.into(),
            dedup_key: "k".into(),
            received_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let c = account_columns(std::slice::from_ref(&e)).unwrap();
        assert_eq!(c.event, vec![Some("APPROVED".to_owned())]);
        assert_eq!(c.value[0]["message_template_name"], "order");
        assert_eq!(c.at[0].timestamp(), 1_700_000_000);
        let none = AccountEvent {
            event: String::new(),
            ..e.clone()
        };
        assert_eq!(account_columns(&[none]).unwrap().event, vec![None]);
        let bad = AccountEvent {
            tenant_id: "x".into(),
            ..e
        };
        assert!(account_columns(&[bad]).is_err());
    }

    #[test]
    fn statuses_and_their_outcomes() {
        let st = StatusUpdate {
            tenant_id: Uuid::new_v4().to_string(),
            wamid: "wamid.1".into(),
            status: "failed".into(),
            timestamp: 1_700_000_000,
            error_code: 131049,
            error_title: "t".into(),
            error_details: "d".into(),
            ..Default::default()
        };
        let row = StatusRow::of(&st).unwrap();
        assert_eq!(row.error.as_deref(), Some("131049: t d"));
        assert_eq!(row.at.timestamp(), 1_700_000_000);
        assert!(StatusRow::of(&StatusUpdate::default()).is_none());
        assert!(matches!(status_outcome(1, Ok(true)), Outcome::Ack));
        assert!(matches!(
            status_outcome(1, Ok(false)),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            status_outcome(UNKNOWN_STATUS_DELIVERIES, Ok(false)),
            Outcome::Ack
        ));
        assert!(matches!(
            status_outcome(3, Err(sqlx::Error::PoolTimedOut)),
            Outcome::Retry { delay, .. } if delay == Duration::from_secs(4)
        ));
        assert_eq!(backoff(100), Duration::from_secs(30));
    }
}
