//! `max_messages_per_hour` (per tenant) and `max_messages_per_user_per_day`
//! enforced exactly across any number of responder instances: the counters
//! live in Postgres and each increment is one atomic upsert, so every
//! message sees a distinct count. A message is counted once however often it
//! is redelivered (its decision is stored with it). Past a limit the
//! customer gets at most one notice per window, then silence.

use sqlx::PgPool;
use uuid::Uuid;

use alphadome_core::tenant::ControlSettings;

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
    fn as_str(self) -> &'static str {
        match self {
            LimitDecision::Allow => "allow",
            LimitDecision::Notice => "notice",
            LimitDecision::Silent => "silent",
        }
    }

    fn parse(s: &str) -> Self {
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

/// Counts the message `wamid` from `user` against the tenant's limits.
pub async fn check(
    db: &PgPool,
    tenant: Uuid,
    settings: &ControlSettings,
    user: &str,
    wamid: &str,
) -> Result<LimitDecision, sqlx::Error> {
    let (per_hour, per_day) = (
        settings.max_messages_per_hour,
        settings.max_messages_per_user_per_day,
    );
    if per_hour.is_none() && per_day.is_none() {
        return Ok(LimitDecision::Allow);
    }
    let mut tx = alphadome_core::db::scoped(db, tenant).await?;
    let first: Option<(i32,)> = sqlx::query_as(
        "INSERT INTO alphadome.rate_limit_events (bot_tenant_id, whatsapp_message_id, decision) VALUES ($1, $2, 'allow') \
         ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(tenant)
    .bind(wamid)
    .fetch_optional(&mut *tx)
    .await?;
    if first.is_none() {
        // Seen before: the decision stands.
        let d: String = sqlx::query_scalar(
            "SELECT decision FROM alphadome.rate_limit_events WHERE bot_tenant_id = $1 AND whatsapp_message_id = $2",
        )
        .bind(tenant)
        .bind(wamid)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(LimitDecision::parse(&d));
    }
    // Only replies the limits allow are counted: each counter is raised only
    // while below its limit (one atomic upsert each); the per-user count is
    // given back when the tenant's hourly cap refuses the message.
    let mut over: Option<(&str, &str)> = None; // (window kind, date_trunc unit)
    let mut counted_user = false;
    if let Some(limit) = per_day {
        if bump(&mut tx, tenant, &format!("user:{user}"), "day", limit).await? {
            counted_user = true;
        } else {
            over = Some(("day", "day"));
        }
    }
    if let (None, Some(limit)) = (over, per_hour) {
        if !bump(&mut tx, tenant, "tenant", "hour", limit).await? {
            over = Some(("hour", "hour"));
            if counted_user {
                sqlx::query(
                    "UPDATE alphadome.rate_limit_counters SET count = count - 1 \
                     WHERE bot_tenant_id = $1 AND scope = $2 AND window_start = date_trunc('day', now())",
                )
                .bind(tenant)
                .bind(format!("user:{user}"))
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    let decision = match over {
        None => LimitDecision::Allow,
        Some((kind, unit)) => {
            let first_notice: Option<(i32,)> = sqlx::query_as(
                "INSERT INTO alphadome.rate_limit_notices (bot_tenant_id, user_phone, window_kind, window_start) \
                 VALUES ($1, $2, $3, date_trunc($4, now())) ON CONFLICT DO NOTHING RETURNING 1",
            )
            .bind(tenant)
            .bind(user)
            .bind(kind)
            .bind(unit)
            .fetch_optional(&mut *tx)
            .await?;
            if first_notice.is_some() {
                LimitDecision::Notice
            } else {
                LimitDecision::Silent
            }
        }
    };
    if decision != LimitDecision::Allow {
        sqlx::query("UPDATE alphadome.rate_limit_events SET decision = $3 WHERE bot_tenant_id = $1 AND whatsapp_message_id = $2")
            .bind(tenant)
            .bind(wamid)
            .bind(decision.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(decision)
}

/// Raises the counter of `scope` in the current `unit` window if it is below
/// `limit`; returns whether it did.
async fn bump(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: Uuid,
    scope: &str,
    unit: &str,
    limit: i32,
) -> Result<bool, sqlx::Error> {
    if limit <= 0 {
        return Ok(false);
    }
    let row: Option<(i32,)> = sqlx::query_as(
        "INSERT INTO alphadome.rate_limit_counters AS c (bot_tenant_id, scope, window_start, count) \
         VALUES ($1, $2, date_trunc($3, now()), 1) \
         ON CONFLICT (bot_tenant_id, scope, window_start) DO UPDATE SET count = c.count + 1 \
         WHERE c.count < $4 RETURNING count",
    )
    .bind(tenant)
    .bind(scope)
    .bind(unit)
    .bind(limit)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}
