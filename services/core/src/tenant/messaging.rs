//! What a tenant configures about its conversations beyond the answers:
//! its approved WhatsApp message templates (the only messages Meta lets
//! through outside the 24-hour window, protocols.md 2.4a, 2.8) and its
//! opening hours. Validated where a manifest or the API writes them, and
//! read by the services from the rows.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::v1::TemplateMessage;

/// The proactive messages a template may carry.
pub const PURPOSES: &[&str] = &["escalation", "token_alert", "training", "agent"];

/// The values the platform fills a template's parameters with, by name.
pub const VALUES: &[&str] = &[
    "business_name",
    "customer",
    "customer_name",
    "reason",
    "message",
    "text",
];

/// One of the tenant's approved WhatsApp message templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppTemplate {
    /// The template's name as approved by Meta.
    pub name: String,
    /// Its language code (`en`, `en_US`, `sw`).
    pub language: String,
    /// What fills its body's parameters, in order: `business_name`,
    /// `customer`, `customer_name`, `reason`, `message` (the customer's
    /// words) or `text` (the whole free-form message).
    #[serde(default)]
    pub parameters: Vec<String>,
    /// Which proactive messages use it outside the window: `escalation`,
    /// `token_alert`, `training`, `agent` (offered to agents in the inbox).
    #[serde(default)]
    pub use_for: Vec<String>,
}

impl WhatsAppTemplate {
    /// Why the template is not usable (naming the field), if it is not.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 512
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Some((
                "name",
                format!(
                    "{:?} is not a WhatsApp template name (lower-case letters, digits and _)",
                    self.name
                ),
            ));
        }
        let lang_ok = (2..=8).contains(&self.language.len())
            && self
                .language
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == '_');
        if !lang_ok {
            return Some((
                "language",
                format!(
                    "{:?} is not a language code such as en or en_US",
                    self.language
                ),
            ));
        }
        if let Some(p) = self
            .parameters
            .iter()
            .find(|p| !VALUES.contains(&p.as_str()))
        {
            return Some((
                "parameters",
                format!("{p:?} is not one of {}", VALUES.join(", ")),
            ));
        }
        if let Some(p) = self
            .use_for
            .iter()
            .find(|p| !PURPOSES.contains(&p.as_str()))
        {
            return Some((
                "use_for",
                format!("{p:?} is not one of {}", PURPOSES.join(", ")),
            ));
        }
        None
    }

    /// The template message, its parameters filled from `values` (by
    /// name; a value not given is sent as "-", since Meta refuses an
    /// empty parameter).
    pub fn fill(&self, values: &[(&str, &str)]) -> TemplateMessage {
        TemplateMessage {
            name: self.name.clone(),
            language: self.language.clone(),
            parameters: self
                .parameters
                .iter()
                .map(|p| {
                    let v = values
                        .iter()
                        .find(|(k, _)| k == p)
                        .map(|(_, v)| v.trim())
                        .filter(|v| !v.is_empty())
                        .unwrap_or("-");
                    fit_parameter(v)
                })
                .collect(),
        }
    }
}

/// The longest text parameter sent (Meta limits a body to 1,024
/// characters; a parameter may not hold new lines or runs of spaces).
const MAX_PARAMETER: usize = 500;

/// `v` as a template parameter: one line, no tabs or runs of more than
/// four spaces, at most [`MAX_PARAMETER`] characters.
pub fn fit_parameter(v: &str) -> String {
    let one_line = v.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_PARAMETER {
        return one_line;
    }
    let mut s: String = one_line.chars().take(MAX_PARAMETER - 1).collect();
    s.push('…');
    s
}

/// The tenant's templates from their stored JSON (the ones that do not
/// parse are left out).
pub fn templates_of(stored: &serde_json::Value) -> Vec<WhatsAppTemplate> {
    stored
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| serde_json::from_value::<WhatsAppTemplate>(t.clone()).ok())
                .filter(|t| t.problem().is_none())
                .collect()
        })
        .unwrap_or_default()
}

/// The first of `templates` used for `purpose`, filled from `values`.
pub fn template_for(
    templates: &[WhatsAppTemplate],
    purpose: &str,
    values: &[(&str, &str)],
) -> Option<TemplateMessage> {
    templates
        .iter()
        .find(|t| t.use_for.iter().any(|p| p == purpose))
        .map(|t| t.fill(values))
}

/// Checks a list of templates: each usable, no name and language twice.
/// The error names the item and field at fault (`[1].language`).
pub fn check_templates(list: &[WhatsAppTemplate]) -> Result<(), (String, String)> {
    for (i, t) in list.iter().enumerate() {
        if let Some((field, why)) = t.problem() {
            return Err((format!("[{i}].{field}"), why));
        }
        if list[..i]
            .iter()
            .any(|o| o.name == t.name && o.language == t.language)
        {
            return Err((
                format!("[{i}].name"),
                format!("{} ({}) is listed twice", t.name, t.language),
            ));
        }
    }
    Ok(())
}

/// A tenant's opening hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// An IANA time zone (`Africa/Nairobi`).
    pub timezone: String,
    /// Opening spans per day (`mon` ... `sun`), each `["08:00", "18:00"]`;
    /// a day left out is closed. `"24:00"` ends a span at midnight.
    #[serde(default)]
    pub weekly: std::collections::BTreeMap<String, Vec<[String; 2]>>,
    /// Days closed all day (`2026-12-25`), in the tenant's time zone.
    #[serde(default)]
    pub closed_dates: Vec<String>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Minutes since midnight of `"HH:MM"` (`"24:00"` is 1440).
fn minutes(s: &str) -> Option<u32> {
    if s == "24:00" {
        return Some(1440);
    }
    NaiveTime::parse_from_str(s, "%H:%M")
        .ok()
        .map(|t| t.hour_minute())
}

trait HourMinute {
    fn hour_minute(&self) -> u32;
}
impl HourMinute for NaiveTime {
    fn hour_minute(&self) -> u32 {
        use chrono::Timelike;
        self.hour() * 60 + self.minute()
    }
}

impl BusinessHours {
    /// Why the hours are not usable (naming the field), if they are not.
    pub fn problem(&self) -> Option<(String, String)> {
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Some((
                "timezone".into(),
                format!(
                    "{:?} is not an IANA time zone such as Africa/Nairobi",
                    self.timezone
                ),
            ));
        }
        for (day, spans) in &self.weekly {
            if !DAYS.contains(&day.as_str()) {
                return Some((
                    format!("weekly.{day}"),
                    "is not a day (mon, tue, wed, thu, fri, sat, sun)".into(),
                ));
            }
            for (i, [from, to]) in spans.iter().enumerate() {
                match (minutes(from), minutes(to)) {
                    (Some(a), Some(b)) if a < b && a < 1440 => {}
                    _ => {
                        return Some((
                            format!("weekly.{day}[{i}]"),
                            format!("[{from:?}, {to:?}] is not a span of the day such as [\"08:00\", \"18:00\"]"),
                        ))
                    }
                }
            }
        }
        for (i, d) in self.closed_dates.iter().enumerate() {
            if NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() {
                return Some((
                    format!("closed_dates[{i}]"),
                    format!("{d:?} is not a date such as 2026-12-25"),
                ));
            }
        }
        None
    }

    /// Whether the business is open at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let Ok(tz) = self.timezone.parse::<chrono_tz::Tz>() else {
            return true;
        };
        let local = at.with_timezone(&tz);
        let date = local.date_naive().format("%Y-%m-%d").to_string();
        if self.closed_dates.contains(&date) {
            return false;
        }
        let day = DAYS[local.weekday().num_days_from_monday() as usize];
        let now = local.time().hour_minute();
        self.weekly.get(day).is_some_and(|spans| {
            spans.iter().any(|[from, to]| {
                matches!((minutes(from), minutes(to)), (Some(a), Some(b)) if a <= now && now < b)
            })
        })
    }

    /// The hours from their stored JSON (`None`: none set, or unusable).
    pub fn of(stored: Option<&serde_json::Value>) -> Option<Self> {
        let h: Self = serde_json::from_value(stored?.clone()).ok()?;
        h.problem().is_none().then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn hours() -> BusinessHours {
        serde_json::from_value(serde_json::json!({
            "timezone": "Africa/Nairobi",
            "weekly": {"mon": [["08:00", "13:00"], ["14:00", "18:00"]], "sat": [["09:00", "24:00"]]},
            "closed_dates": ["2026-12-07"]
        }))
        .unwrap()
    }

    #[test]
    fn open_in_the_tenants_time_zone() {
        let h = hours();
        assert_eq!(h.problem(), None);
        // Monday 2026-11-30 08:30 in Nairobi is 05:30 UTC.
        assert!(h.is_open(Utc.with_ymd_and_hms(2026, 11, 30, 5, 30, 0).unwrap()));
        assert!(!h.is_open(Utc.with_ymd_and_hms(2026, 11, 30, 4, 59, 0).unwrap()));
        // Lunch.
        assert!(!h.is_open(Utc.with_ymd_and_hms(2026, 11, 30, 10, 30, 0).unwrap()));
        // Tuesday: not listed, closed.
        assert!(!h.is_open(Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap()));
        // Saturday until midnight.
        assert!(h.is_open(Utc.with_ymd_and_hms(2026, 12, 5, 20, 59, 0).unwrap()));
        // A closed Monday.
        assert!(!h.is_open(Utc.with_ymd_and_hms(2026, 12, 7, 7, 0, 0).unwrap()));
    }

    #[test]
    fn bad_hours_and_templates_name_the_field() {
        let mut h = hours();
        h.timezone = "Mars/Olympus".into();
        assert_eq!(h.problem().unwrap().0, "timezone");
        let mut h = hours();
        h.weekly
            .insert("mon".into(), vec![["18:00".into(), "08:00".into()]]);
        assert_eq!(h.problem().unwrap().0, "weekly.mon[0]");
        let mut h = hours();
        h.closed_dates.push("25/12".into());
        assert_eq!(h.problem().unwrap().0, "closed_dates[1]");
        let t = WhatsAppTemplate {
            name: "staff_alert".into(),
            language: "en".into(),
            parameters: vec!["customer".into(), "reason".into()],
            use_for: vec!["escalation".into()],
        };
        assert_eq!(t.problem(), None);
        let bad = WhatsAppTemplate {
            parameters: vec!["secret".into()],
            ..t.clone()
        };
        assert_eq!(bad.problem().unwrap().0, "parameters");
        assert_eq!(
            check_templates(&[t.clone(), t.clone()]).unwrap_err().0,
            "[1].name"
        );
        let filled = t.fill(&[
            ("customer", "+254711000111"),
            ("reason", "asked\nfor a person"),
        ]);
        assert_eq!(
            filled.parameters,
            vec!["+254711000111", "asked for a person"]
        );
        assert_eq!(t.fill(&[]).parameters, vec!["-", "-"]);
    }
}
