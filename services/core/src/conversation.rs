//! Conversations (`alphadome.conversation_sessions`): one session per
//! (tenant, customer) with its state, the customer's last message, which
//! opens Meta's 24-hour customer service window (protocols.md 2.8), and
//! their opt-out of proactive messages. The responder records every
//! message ([`Sessions::touch`]) and the opt-outs and flow states; the
//! sender reads the window and the opt-out before a proactive send
//! ([`window`]); the dashboard shows them. Shared here so none of them
//! depends on another.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::batch::Coalescer;
use crate::db::scoped;

/// Meta's customer service window: free-form messages may go to a
/// customer until this long after their last message; after it, only
/// approved templates.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A conversation whose customer was silent this long starts anew (the
/// greeting goes out again).
pub const NEW_CONVERSATION_AFTER: Duration = WINDOW;

/// The state of a session with no flow running.
pub const IDLE: &str = "idle";

/// What a conversation was when a message arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The customer's message before this one (`None`: their first).
    pub previous_inbound_at: Option<DateTime<Utc>>,
    /// The flow step the conversation is in ([`IDLE`] when none, or when
    /// the step lapsed).
    pub state: String,
    /// The flow's small context.
    pub context: serde_json::Value,
    /// Whether the customer wrote STOP (and not START since).
    pub opted_out: bool,
}

impl Session {
    /// The session of a customer never seen before.
    pub fn first() -> Self {
        Self {
            previous_inbound_at: None,
            state: IDLE.to_owned(),
            context: serde_json::json!({}),
            opted_out: false,
        }
    }

    /// Whether the message at `at` starts a new conversation: the
    /// customer's first, or their first after [`NEW_CONVERSATION_AFTER`].
    pub fn is_new_conversation(&self, at: DateTime<Utc>) -> bool {
        match self.previous_inbound_at {
            None => true,
            Some(p) => (at - p).to_std().unwrap_or_default() >= NEW_CONVERSATION_AFTER,
        }
    }
}

/// One message to record: tenant, customer, wamid, when it was written,
/// its text and the tenant's debounce time (ms).
pub type TouchRequest = (Uuid, String, String, DateTime<Utc>, String, i32);
type TouchRow = (i32, Option<DateTime<Utc>>, String, serde_json::Value, bool);

/// Records customer messages in their sessions, the messages recorded at
/// the same moment in one call (`alphadome.touch_sessions`): one round
/// trip and one commit for all.
pub struct Sessions {
    db: PgPool,
    batch: Coalescer<TouchRequest, Session>,
}

impl Sessions {
    pub fn new(db: PgPool) -> Self {
        let sticky = crate::db::Sticky::new(db.clone(), 1);
        let batch = Coalescer::new("touch_sessions", 256, 1, move |reqs: Vec<TouchRequest>| {
            let sticky = sticky.clone();
            async move {
                let mut conn = sticky.get().await?;
                let n = reqs.len();
                let rows = touch_batch(&mut conn, reqs).await?;
                conn.keep();
                Ok::<_, sqlx::Error>(crate::batch::by_index(n, rows))
            }
        });
        Self { db, batch }
    }

    /// Records message `wamid` of `customer`, written at `at` (with its
    /// `text`, kept in the customer's burst when it follows their last
    /// message within `debounce_ms`), and answers what the conversation
    /// was before it. A redelivered message gets the same answer as the
    /// first time.
    pub async fn touch(
        &self,
        tenant: Uuid,
        customer: &str,
        wamid: &str,
        at: DateTime<Utc>,
        text: &str,
        debounce_ms: i32,
    ) -> Result<Session, sqlx::Error> {
        // (PostgreSQL's text holds no NUL; a customer's message may.)
        let req = (
            tenant,
            without_nul(customer),
            without_nul(wamid),
            at,
            without_nul(text),
            debounce_ms,
        );
        if let Some(s) = self.batch.call(req.clone()).await {
            return Ok(s);
        }
        let mut conn = self.db.acquire().await?;
        let rows = touch_batch(&mut conn, vec![req]).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(_, s)| s)
            .unwrap_or_else(Session::first))
    }
}

/// Records a batch of messages in one call (`alphadome.touch_sessions`):
/// rows numbered from 1 by their position in `reqs`.
pub async fn touch_batch(
    conn: &mut PgConnection,
    reqs: Vec<TouchRequest>,
) -> Result<Vec<(i32, Session)>, sqlx::Error> {
    let n = reqs.len();
    let (mut t, mut c, mut w, mut a, mut x, mut d) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (tenant, customer, wamid, at, text, debounce) in reqs {
        t.push(tenant);
        c.push(customer);
        w.push(wamid);
        a.push(at);
        x.push(text);
        d.push(debounce);
    }
    let rows: Vec<TouchRow> =
        sqlx::query_as("SELECT * FROM alphadome.touch_sessions($1, $2, $3, $4, $5, $6)")
            .bind(&t)
            .bind(&c)
            .bind(&w)
            .bind(&a)
            .bind(&x)
            .bind(&d)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(i, previous_inbound_at, state, context, opted_out)| {
            (
                i,
                Session {
                    previous_inbound_at,
                    state,
                    context,
                    opted_out,
                },
            )
        })
        .collect())
}

/// `s` without NUL characters, which PostgreSQL's text cannot hold.
fn without_nul(s: &str) -> String {
    s.replace('\0', "")
}

/// What a message is, once its debounce time is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Debounced {
    /// A later message of the same burst answers for it: no reply of its own.
    Absorbed { by: String },
    /// It answers, for the texts of its burst up to it (its own last).
    Answer { texts: Vec<String> },
}

/// The customer's current burst: (wamid, text) of their latest messages
/// written within the debounce time of each other, oldest first.
pub async fn burst(
    pool: &PgPool,
    tenant: Uuid,
    customer: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let v: serde_json::Value = sqlx::query_scalar("SELECT alphadome.session_burst($1, $2)")
        .bind(tenant)
        .bind(without_nul(customer))
        .fetch_one(pool)
        .await?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["w"].as_str().unwrap_or_default().to_owned(),
                        e["t"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// What message `wamid` (text `text`) is, given the customer's burst (as
/// stored: without NUL characters): its
/// last message answers for the burst's texts; an earlier one is absorbed;
/// one no longer in the burst (a pause started a new one after it) answers
/// for itself.
pub fn debounced(burst: &[(String, String)], wamid: &str, text: &str) -> Debounced {
    let wamid = without_nul(wamid);
    match burst.iter().position(|(w, _)| *w == wamid) {
        Some(i) if i + 1 < burst.len() => Debounced::Absorbed {
            by: burst[burst.len() - 1].0.clone(),
        },
        Some(i) => Debounced::Answer {
            texts: burst[..=i].iter().map(|(_, t)| t.clone()).collect(),
        },
        None => Debounced::Answer {
            texts: vec![text.to_owned()],
        },
    }
}

/// A customer's window and opt-out, as the sender and the dashboard see
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub last_inbound_at: DateTime<Utc>,
    pub opted_out_at: Option<DateTime<Utc>>,
    pub state: String,
}

impl Window {
    /// Whether a free-form message may go to the customer at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        open_at(Some(self.last_inbound_at), now)
    }

    /// When the window closes (closed already when in the past).
    pub fn closes_at(&self) -> DateTime<Utc> {
        self.last_inbound_at + chrono::Duration::from_std(WINDOW).unwrap_or_default()
    }
}

/// Whether a customer who last wrote at `last` may get a free-form
/// message at `now`.
pub fn open_at(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last.is_some_and(|l| {
        (now - l).to_std().unwrap_or_default() < WINDOW && l <= now + chrono::Duration::minutes(5)
    })
}

/// The customer's window and opt-out (`None`: they never wrote).
pub async fn window(
    pool: &PgPool,
    tenant: Uuid,
    customer: &str,
) -> Result<Option<Window>, sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    let w = window_in(&mut tx, tenant, customer).await?;
    tx.commit().await?;
    Ok(w)
}

/// [`window`] in the caller's transaction (acting for the tenant).
pub async fn window_in(
    conn: &mut PgConnection,
    tenant: Uuid,
    customer: &str,
) -> Result<Option<Window>, sqlx::Error> {
    Ok(windows_in(conn, tenant, &[without_nul(customer)])
        .await?
        .pop()
        .map(|(_, w)| w))
}

type WindowRow = (String, DateTime<Utc>, Option<DateTime<Utc>>, String);

/// The windows of some of a tenant's customers, by customer.
pub async fn windows_in(
    conn: &mut PgConnection,
    tenant: Uuid,
    customers: &[String],
) -> Result<Vec<(String, Window)>, sqlx::Error> {
    let rows: Vec<WindowRow> = sqlx::query_as(
        "SELECT customer, last_inbound_at, opted_out_at, \
           CASE WHEN state_expires_at <= now() THEN 'idle' ELSE state END \
         FROM alphadome.conversation_sessions WHERE bot_tenant_id = $1 AND customer = ANY($2)",
    )
    .bind(tenant)
    .bind(customers)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, last_inbound_at, opted_out_at, state)| {
            (
                c,
                Window {
                    last_inbound_at,
                    opted_out_at,
                    state,
                },
            )
        })
        .collect())
}

/// The customers of a tenant who opted out, newest first.
pub async fn opted_out_in(
    conn: &mut PgConnection,
    tenant: Uuid,
    limit: i64,
) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT customer, opted_out_at FROM alphadome.conversation_sessions \
         WHERE bot_tenant_id = $1 AND opted_out_at IS NOT NULL ORDER BY opted_out_at DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// What a customer's word asks of their subscription to proactive
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    Out,
    In,
}

/// The words that stop proactive messages, beside the tenant's own.
pub const OPT_OUT_WORDS: &[&str] = &["stop", "unsubscribe", "stop all", "opt out", "optout"];
/// The words that start them again, beside the tenant's own.
pub const OPT_IN_WORDS: &[&str] = &["start", "subscribe", "unstop", "opt in", "optin"];

/// A whole message read as a command word ("STOP", " menu! "): trimmed,
/// without the punctuation around it, lower-case.
pub fn command_word(text: &str) -> String {
    text.trim()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// Whether `text` is an opt-out or opt-in word (the whole message, in any
/// case, without the punctuation around it), given the tenant's own words.
pub fn opt_word(text: &str, tenant_out: &[String], tenant_in: &[String]) -> Option<Opt> {
    let t = command_word(text);
    if t.is_empty() || t.len() > 40 {
        return None;
    }
    let is = |builtin: &[&str], own: &[String]| {
        builtin.contains(&t.as_str()) || own.iter().any(|w| w.trim().to_lowercase() == t)
    };
    if is(OPT_OUT_WORDS, tenant_out) {
        Some(Opt::Out)
    } else if is(OPT_IN_WORDS, tenant_in) {
        Some(Opt::In)
    } else {
        None
    }
}

/// Records the customer's STOP (`Opt::Out`) or START written at `at`; a
/// late redelivery of an older word changes nothing. Whether it changed
/// the customer's subscription.
pub async fn set_opt(
    pool: &PgPool,
    tenant: Uuid,
    customer: &str,
    opt: Opt,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let customer = without_nul(customer);
    let mut tx = scoped(pool, tenant).await?;
    let changed = sqlx::query(
        "UPDATE alphadome.conversation_sessions \
         SET opted_out_at = CASE WHEN $3 THEN coalesce(opted_out_at, $4) END, opt_changed_at = $4, updated_at = now() \
         WHERE bot_tenant_id = $1 AND customer = $2 AND (opt_changed_at IS NULL OR opt_changed_at <= $4) \
           AND (opted_out_at IS NULL) = $3",
    )
    .bind(tenant)
    .bind(&customer)
    .bind(opt == Opt::Out)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    tx.commit().await?;
    Ok(changed)
}

/// Puts the conversation in flow step `state` with `context`, lapsing back
/// to idle after `ttl` (a flow's way out when the customer walks away).
pub async fn set_state(
    pool: &PgPool,
    tenant: Uuid,
    customer: &str,
    state: &str,
    context: &serde_json::Value,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    sqlx::query(
        "UPDATE alphadome.conversation_sessions \
         SET state = $3, context = $4, state_expires_at = now() + make_interval(secs => $5), updated_at = now() \
         WHERE bot_tenant_id = $1 AND customer = $2",
    )
    .bind(tenant)
    .bind(customer)
    .bind(state)
    .bind(context)
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Ends the conversation's flow: back to idle, its context dropped.
/// Whether a flow was running.
pub async fn clear_state(pool: &PgPool, tenant: Uuid, customer: &str) -> Result<bool, sqlx::Error> {
    let mut tx = scoped(pool, tenant).await?;
    let n = sqlx::query(
        "UPDATE alphadome.conversation_sessions \
         SET state = 'idle', context = '{}'::jsonb, state_expires_at = NULL, updated_at = now() \
         WHERE bot_tenant_id = $1 AND customer = $2 AND state <> 'idle'",
    )
    .bind(tenant)
    .bind(customer)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_words_are_whole_messages_in_any_case() {
        let none: Vec<String> = vec![];
        assert_eq!(opt_word("STOP", &none, &none), Some(Opt::Out));
        assert_eq!(opt_word(" stop. ", &none, &none), Some(Opt::Out));
        assert_eq!(opt_word("Start!", &none, &none), Some(Opt::In));
        assert_eq!(opt_word("please stop the noise", &none, &none), None);
        assert_eq!(opt_word("acha", &none, &none), None);
        let own = vec!["Acha".to_owned()];
        assert_eq!(opt_word("ACHA", &own, &none), Some(Opt::Out));
        assert_eq!(opt_word("anza", &none, &["anza".to_owned()]), Some(Opt::In));
    }

    #[test]
    fn the_last_message_of_a_burst_answers_for_it() {
        let burst: Vec<(String, String)> =
            [("w1", "hi"), ("w2", "do you sell"), ("w3", "guitars?")]
                .iter()
                .map(|(w, t)| (w.to_string(), t.to_string()))
                .collect();
        assert_eq!(
            debounced(&burst, "w1", "hi"),
            Debounced::Absorbed { by: "w3".into() }
        );
        assert_eq!(
            debounced(&burst, "w3", "guitars?"),
            Debounced::Answer {
                texts: vec!["hi".into(), "do you sell".into(), "guitars?".into()]
            }
        );
        assert_eq!(
            debounced(&burst, "w0", "earlier"),
            Debounced::Answer {
                texts: vec!["earlier".into()]
            }
        );
    }

    #[test]
    fn the_window_and_new_conversations() {
        let now = Utc::now();
        assert!(open_at(Some(now - chrono::Duration::hours(23)), now));
        assert!(!open_at(Some(now - chrono::Duration::hours(25)), now));
        assert!(!open_at(None, now));
        let mut s = Session::first();
        assert!(s.is_new_conversation(now));
        s.previous_inbound_at = Some(now - chrono::Duration::hours(2));
        assert!(!s.is_new_conversation(now));
        s.previous_inbound_at = Some(now - chrono::Duration::hours(24));
        assert!(s.is_new_conversation(now));
    }
}
