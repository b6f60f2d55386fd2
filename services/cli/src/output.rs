//! How the commands print their results for people: aligned tables and
//! `key value` lines. (`--json` prints the same data as JSON instead.)

use std::fmt::Write as _;

use alphadome_admin::dlq::Letter;
use alphadome_core::handoff::Handoff;
use alphadome_core::tenant::TenantSummary;
use alphadome_logger::store::UsageDay;

/// `s` cut to `n` characters, with an ellipsis when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!(
            "{}…",
            s.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    }
}

/// `tenant list`.
pub fn tenant_table(tenants: &[TenantSummary]) -> String {
    let mut out = format!(
        "{:<36}  {:<28}  {:<13}  {:<8}  {:>4}  STATUS\n",
        "ID", "NAME", "PHONE", "ACTIVE", "FAQ"
    );
    for t in tenants {
        let mut status = match (&t.degraded, t.is_bot_enabled) {
            (Some(d), _) => format!("DEGRADED: {d}"),
            (None, Some(false)) => "bot disabled".to_owned(),
            _ => "ok".to_owned(),
        };
        if let Some(days) = t.verify_token_age_days {
            let _ = write!(status, "; verify token {days} days old, rotate it");
        }
        let _ = writeln!(
            out,
            "{:<36}  {:<28}  {:<13}  {:<8}  {:>4}  {status}",
            t.id,
            truncate(&t.client_name, 28),
            t.client_phone,
            if t.is_active { "yes" } else { "no" },
            t.faq_entries
        );
    }
    out
}

/// A JSON object as `key value` lines (`tenant show`).
pub fn fields(value: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(map) = value.as_object() {
        for (k, val) in map {
            let shown = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "(not set)".to_owned(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "{k:<30} {shown}");
        }
    }
    out
}

/// `dlq list`.
pub fn letter_table(letters: &[Letter]) -> String {
    let mut out = format!(
        "{:>6}  {:<20}  {:<36}  {:>4}  REASON\n",
        "SEQ", "FROM", "TENANT", "TRIES"
    );
    for l in letters {
        let _ = writeln!(
            out,
            "{:>6}  {:<20}  {:<36}  {:>4}  {}",
            l.seq, l.source_stream, l.tenant_id, l.deliveries, l.reason
        );
    }
    out
}

/// `conversation list`.
pub fn handoff_table(handoffs: &[Handoff]) -> String {
    let mut out = format!(
        "{:<16}  {:<32}  {:<30}  PAUSED UNTIL\n",
        "CUSTOMER", "REASON", "SINCE"
    );
    for h in handoffs {
        let _ = writeln!(
            out,
            "{:<16}  {:<32}  {:<30}  {}",
            h.user_phone, h.reason, h.started_at, h.paused_until
        );
    }
    out
}

/// `training candidates`.
pub fn candidate_table(candidates: &[alphadome_core::training::Candidate]) -> String {
    let mut out = format!(
        "{:<36}  {:>5}  {:<9}  {:<20}  QUESTION\n",
        "ID", "ASKED", "STATUS", "LAST ASKED"
    );
    for c in candidates {
        let question: String = c.question.chars().take(60).collect();
        let _ = writeln!(
            out,
            "{:<36}  {:>5}  {:<9}  {:<20}  {}",
            c.id,
            c.ask_count,
            c.status,
            c.last_asked_at.format("%Y-%m-%d %H:%M:%S"),
            question
        );
    }
    out
}

/// `usage`.
pub fn usage_table(days: &[UsageDay]) -> String {
    let mut out = format!(
        "{:<10}  {:>8}  {:>8}  {:>10}  {:>13}  {:>17}\n",
        "DAY", "INCOMING", "OUTGOING", "AI REPLIES", "PROMPT TOKENS", "COMPLETION TOKENS"
    );
    for d in days {
        let _ = writeln!(
            out,
            "{:<10}  {:>8}  {:>8}  {:>10}  {:>13}  {:>17}",
            d.day, d.incoming, d.outgoing, d.ai_replies, d.prompt_tokens, d.completion_tokens
        );
    }
    out
}

/// When something happened, to the minute, or `-`.
fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// `user list`.
pub fn user_table(users: &[alphadome_admin::people::UserView]) -> String {
    let mut out = format!(
        "{:<32}  {:<14}  {:<24}  {:<16}  STATE\n",
        "EMAIL", "ROLE", "TENANT", "LAST LOGIN"
    );
    for u in users {
        let state = match u.disabled_at {
            Some(t) => format!("disabled {}", when(Some(t))),
            None => "enabled".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<32}  {:<14}  {:<24}  {:<16}  {state}",
            truncate(&u.email, 32),
            u.role,
            truncate(u.tenant_name.as_deref().unwrap_or("(all)"), 24),
            when(u.last_login_at),
        );
    }
    out
}

/// `token list`.
pub fn token_table(tokens: &[alphadome_admin::people::TokenView]) -> String {
    let mut out = format!(
        "{:<24}  {:<14}  {:<24}  {:<16}  {:<16}  STATE\n",
        "NAME", "ROLE", "TENANT", "CREATED", "LAST USED"
    );
    for t in tokens {
        let state = match t.revoked_at {
            Some(r) => format!("revoked {}", when(Some(r))),
            None => "live".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<24}  {:<14}  {:<24}  {:<16}  {:<16}  {state}",
            truncate(&t.name, 24),
            t.role,
            truncate(t.tenant_name.as_deref().unwrap_or("(all)"), 24),
            when(Some(t.created_at)),
            when(t.last_used_at),
        );
    }
    out
}

/// `audit log`.
pub fn change_table(records: &[alphadome_admin::changes::ChangeRecord]) -> String {
    let mut out = format!(
        "{:<16}  {:<28}  {:<26}  {:<36}  CHANGED\n",
        "AT", "ACTOR", "ACTION", "SUBJECT"
    );
    for r in records {
        let changed =
            alphadome_admin::changes::changed_keys(r.before.as_ref(), r.after.as_ref()).join(", ");
        let _ = writeln!(
            out,
            "{:<16}  {:<28}  {:<26}  {:<36}  {}",
            when(Some(r.at)),
            truncate(&r.actor, 28),
            r.action,
            truncate(&r.subject, 36),
            truncate(&changed, 60),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cut() {
        assert_eq!(truncate("Kassangas Music Shop", 10), "Kassangas…");
        assert_eq!(truncate("short", 10), "short");
        let t = usage_table(&[UsageDay {
            day: "2026-11-29".into(),
            incoming: 3,
            outgoing: 2,
            ai_replies: 1,
            prompt_tokens: 42,
            completion_tokens: 7,
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), lines[1].len());
        let f = fields(&serde_json::json!({"a": "x", "b": null, "c": 3}));
        assert!(f.contains("(not set)") && f.lines().count() == 3);
    }
}
