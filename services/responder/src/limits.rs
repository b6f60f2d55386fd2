//! `max_messages_per_hour` (per tenant) and `max_messages_per_user_per_day`
//! enforced exactly across any number of responder instances: the counters
//! live in Postgres and each increment is one atomic upsert, so every
//! message sees a distinct count. A message is counted once however often it
//! is redelivered (its decision is stored with it). Past a limit the
//! customer gets at most one notice per window, then silence.

use alphadome_core::batch::Coalescer;
use alphadome_core::tenant::ControlSettings;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{self, AdmitRequest, AdmitRow};

/// What a limit check allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    /// Under the limits: answer.
    Allow,
    /// Just over a limit: send the one notice of this window.
    Notice,
    /// Over a limit, notice already sent: stay silent.
    Silent,
}

impl LimitDecision {
    /// The decision the SQL functions return (`allow`, `notice`, `silent`).
    pub fn parse(s: &str) -> Self {
        match s {
            "notice" => LimitDecision::Notice,
            "silent" => LimitDecision::Silent,
            _ => LimitDecision::Allow,
        }
    }
}

/// The notice a customer gets when a limit is reached.
pub fn notice_text(contact: Option<&str>) -> String {
    match contact {
        Some(c) => format!(
            "Thanks for your messages! We've reached our limit for automatic replies for now. Please try again later, or call us on +{c}."
        ),
        None => "Thanks for your messages! We've reached our limit for automatic replies for now. Please try again a little later.".to_owned(),
    }
}

/// What admitting a message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The wamid that started the customer's active handoff, if any.
    pub handoff: Option<String>,
    /// The limit decision; `None` when a handoff started by another
    /// message silences this one (it is not counted).
    pub limit: Option<LimitDecision>,
}

impl Admitted {
    fn of(row: AdmitRow) -> Self {
        Self {
            handoff: row.0,
            limit: row.1.as_deref().map(LimitDecision::parse),
        }
    }
}

/// Admits messages: the handoff check and the limit count in one call
/// (`alphadome.admit_message_batch`), shared by the messages admitted at
/// the same moment: one round trip and one commit for all. One batch at a
/// time, so two batches of this process never lock counters in opposite
/// orders; a batch that fails (a deadlock with another instance, say) is
/// retried message by message.
pub struct Admission {
    db: PgPool,
    batch: Coalescer<AdmitRequest, AdmitRow>,
}

impl Admission {
    pub fn new(db: PgPool) -> Self {
        let sticky = alphadome_core::db::Sticky::new(db.clone(), 1);
        let batch = Coalescer::new("admit_message", 256, 1, move |reqs: Vec<AdmitRequest>| {
            let sticky = sticky.clone();
            async move {
                let mut conn = sticky.get().await?;
                let n = reqs.len();
                let rows = store::admit_batch(&mut conn, reqs).await?;
                conn.keep();
                Ok::<_, sqlx::Error>(alphadome_core::batch::by_index(n, rows))
            }
        });
        Self { db, batch }
    }

    /// Admits the message `wamid` from `user`: its customer's handoff, and
    /// (unless that handoff silences it) its count against the limits.
    pub async fn admit(
        &self,
        tenant: Uuid,
        settings: &ControlSettings,
        user: &str,
        wamid: &str,
    ) -> Result<Admitted, sqlx::Error> {
        let (per_hour, per_day) = (
            settings.max_messages_per_hour,
            settings.max_messages_per_user_per_day,
        );
        let req = (tenant, user.to_owned(), wamid.to_owned(), per_hour, per_day);
        if let Some(row) = self.batch.call(req).await {
            return Ok(Admitted::of(row));
        }
        // Alone: the same two steps, one round trip each.
        let handoff = store::active_handoff(&self.db, tenant, user).await?;
        if handoff.as_deref().is_some_and(|t| t != wamid) {
            return Ok(Admitted {
                handoff,
                limit: None,
            });
        }
        let limit = if per_hour.is_none() && per_day.is_none() {
            LimitDecision::Allow
        } else {
            LimitDecision::parse(
                &store::count_message(&self.db, tenant, user, wamid, per_hour, per_day).await?,
            )
        };
        Ok(Admitted {
            handoff,
            limit: Some(limit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_and_notices() {
        assert_eq!(LimitDecision::parse("notice"), LimitDecision::Notice);
        assert_eq!(LimitDecision::parse("silent"), LimitDecision::Silent);
        assert_eq!(LimitDecision::parse("allow"), LimitDecision::Allow);
        assert!(notice_text(Some("254700000001")).contains("+254700000001"));
        assert!(!notice_text(None).contains('+'));
        let a = Admitted::of((Some("wamid.x".into()), None));
        assert_eq!(a.limit, None);
        assert_eq!(a.handoff.as_deref(), Some("wamid.x"));
    }
}
