//! The scheduled check of tenants' WhatsApp tokens. It reads each token's
//! expiry (`whatsapp_token_expires_at`, refreshed from Meta's `debug_token`
//! when `META_APP_ID` and `META_APP_SECRET` give an app token) and alerts
//! the tenant's escalation contacts 7 days and 1 day before expiry, on
//! expiry, and when Meta rejects the token (a 190 from the sender, or
//! `is_valid: false`), once per threshold and token.

use std::sync::Arc;
use std::time::Duration;

use alphadome_core::bus::Bus;
use alphadome_core::config::Config;
use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_core::notify::{self, Mailer};
use alphadome_core::tenant::messaging;
use alphadome_core::tenant::store::TokenHolder;
use alphadome_core::{audit, tenant, CancellationToken, Report};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::store;

/// One alert sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAlert {
    pub tenant: Uuid,
    pub threshold: &'static str,
}

/// Checks tenants' tokens and alerts.
pub struct TokenWatch {
    db: PgPool,
    bus: Bus,
    keyring: Arc<Keyring>,
    mailer: Mailer,
    http: reqwest::Client,
    graph_url: String,
    app_token: Option<SecretString>,
}

#[derive(Deserialize)]
struct DebugToken {
    data: DebugData,
}

#[derive(Deserialize)]
struct DebugData {
    #[serde(default)]
    expires_at: i64,
    #[serde(default = "yes")]
    is_valid: bool,
}

fn yes() -> bool {
    true
}

impl TokenWatch {
    pub fn new(config: &Config, db: PgPool, bus: Bus) -> Result<Self, reqwest::Error> {
        let app_token = match (&config.meta_app_id, &config.meta_app_secret) {
            (Some(id), Some(secret)) => Some(SecretString::from(format!(
                "{id}|{}",
                secret.expose_secret()
            ))),
            _ => None,
        };
        Ok(Self {
            db,
            bus,
            keyring: config.keyring.clone(),
            mailer: Mailer::new(config.smtp_url.as_ref(), &config.smtp_from),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            graph_url: config.graph_url.clone(),
            app_token,
        })
    }

    /// Runs [`check`](Self::check) every `every` until `shutdown`.
    pub fn spawn(
        self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.check().await {
                    Ok(alerts) if !alerts.is_empty() => {
                        tracing::info!(alerts = alerts.len(), "token alerts sent")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %Report(&e), "token check failed; will retry"),
                }
            }
        })
    }

    /// One pass over every tenant with a token; returns the alerts sent.
    pub async fn check(&self) -> Result<Vec<TokenAlert>, sqlx::Error> {
        let holders = tenant::store::token_holders(&self.db).await?;
        let mut sent = Vec::new();
        for h in holders {
            if let Some(alert) = self.check_one(h).await? {
                sent.push(alert);
            }
        }
        Ok(sent)
    }

    /// Checks one tenant's token; the alert sent, if one was due.
    async fn check_one(&self, h: TokenHolder) -> Result<Option<TokenAlert>, sqlx::Error> {
        let (id, name, stored) = (
            h.id,
            h.client_name.as_str(),
            h.whatsapp_access_token.as_str(),
        );
        let (mut expires_at, mut invalid_at) =
            (h.whatsapp_token_expires_at, h.whatsapp_token_invalid_at);
        if let Some(app) = &self.app_token {
            if let Some((exp, valid)) = self.ask_meta(id, stored, app).await {
                // An expired token is reported invalid too; that is expiry, not rejection.
                let lapsed = exp.is_some_and(|e| e <= Utc::now());
                if !valid && !lapsed && invalid_at.is_none() {
                    if tenant::store::mark_token_invalid(&self.db, id).await? {
                        tenant::announce_change(&self.bus, id).await;
                    }
                    invalid_at = Some(Utc::now());
                }
                if exp != expires_at {
                    tenant::store::set_token_expiry(&self.db, id, exp).await?;
                    expires_at = exp;
                }
            }
        }
        let Some(threshold) = threshold(invalid_at, expires_at, Utc::now()) else {
            return Ok(None);
        };
        let fingerprint = hex::encode(&Sha256::digest(stored.as_bytes())[..8]);
        if !store::claim_token_alert(&self.db, id, threshold, &fingerprint).await? {
            return Ok(None);
        }
        let text = alert_text(name, threshold, expires_at);
        tracing::warn!(tenant_id = %id, threshold, alert = "whatsapp_token", "{text}");
        // Through the tenant's own number only while its token still works.
        if let (Some(p), "7d" | "1d") = (h.escalation_phone.as_deref(), threshold) {
            let msg_id = format!("token-alert:{id}:{threshold}:{fingerprint}");
            let template = messaging::template_for(
                &messaging::templates_of(&h.whatsapp_templates),
                "token_alert",
                &[
                    ("business_name", name),
                    ("reason", subject_of(threshold)),
                    ("text", &text),
                ],
            );
            if let Err(e) =
                notify::whatsapp(&self.bus, id, p, &msg_id, &text, "token_alert", template).await
            {
                tracing::error!(tenant_id = %id, error = %Report(&e), "token alert WhatsApp message not queued");
            }
        }
        if let Some(to) = h.escalation_email.as_deref() {
            let subject = format!("[{name}] WhatsApp token {}", subject_of(threshold));
            if let Err(e) = self.mailer.send(to, &subject, &text).await {
                let error = Report(&e).to_string();
                tracing::error!(tenant_id = %id, %error, "token alert e-mail not sent");
                store::record_token_alert_email_error(
                    &self.db,
                    id,
                    threshold,
                    &fingerprint,
                    &error,
                )
                .await?;
            }
        }
        Ok(Some(TokenAlert {
            tenant: id,
            threshold,
        }))
    }

    /// Asks Meta's `debug_token` about a tenant's token: (expiry, valid).
    async fn ask_meta(
        &self,
        id: Uuid,
        stored: &str,
        app: &SecretString,
    ) -> Option<(Option<DateTime<Utc>>, bool)> {
        let token = self
            .keyring
            .decrypt(id, SecretColumn::WhatsappAccessToken, stored)
            .map_err(|e| tracing::error!(tenant_id = %id, error = %Report(&e), "cannot decrypt the tenant's token"))
            .ok()?;
        audit::record_use(
            &self.db,
            id,
            SecretColumn::WhatsappAccessToken,
            "service:admin",
            "token expiry check (debug_token)",
        )
        .await;
        let resp = self
            .http
            .get(format!("{}/debug_token", self.graph_url))
            .query(&[("input_token", token.expose_secret()), ("access_token", app.expose_secret())])
            .send()
            .await
            .map_err(|e| tracing::warn!(tenant_id = %id, timeout = e.is_timeout(), "debug_token request failed"))
            .ok()?;
        if !resp.status().is_success() {
            tracing::warn!(tenant_id = %id, status = resp.status().as_u16(), "debug_token refused");
            return None;
        }
        let d: DebugToken = resp
            .json()
            .await
            .map_err(|_| tracing::warn!(tenant_id = %id, "debug_token answer unreadable"))
            .ok()?;
        // 0 means a never-expiring (system user) token.
        let exp = (d.data.expires_at > 0)
            .then(|| DateTime::<Utc>::from_timestamp(d.data.expires_at, 0))
            .flatten();
        Some((exp, d.data.is_valid))
    }
}

/// The alert a token is due, if any: rejected by Meta, expired, expiring
/// within a day, within 7 days.
pub fn threshold(
    invalid_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<&'static str> {
    match (invalid_at, expires_at) {
        (Some(_), _) => Some("invalid"),
        (None, Some(e)) if e <= now => Some("expired"),
        (None, Some(e)) if e <= now + chrono::Duration::days(1) => Some("1d"),
        (None, Some(e)) if e <= now + chrono::Duration::days(7) => Some("7d"),
        _ => None,
    }
}

/// What the tenant's people are told.
pub fn alert_text(name: &str, threshold: &str, expires_at: Option<DateTime<Utc>>) -> String {
    let when = expires_at.map(|e| e.to_rfc3339()).unwrap_or_default();
    match threshold {
        "invalid" => format!("Alphadome: Meta rejected {name}'s WhatsApp access token. The bot cannot send replies until a new token is applied (alphadome tenant apply)."),
        "expired" => format!("Alphadome: {name}'s WhatsApp access token has expired. The bot cannot send replies until a new token is applied."),
        "1d" => format!("Alphadome: {name}'s WhatsApp access token expires within a day ({when}). Apply a new token to keep the bot answering."),
        _ => format!("Alphadome: {name}'s WhatsApp access token expires within 7 days ({when}). Apply a new token to keep the bot answering."),
    }
}

fn subject_of(threshold: &str) -> &'static str {
    match threshold {
        "invalid" => "rejected by Meta",
        "expired" => "expired",
        "1d" => "expires within a day",
        _ => "expires within 7 days",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_by_expiry() {
        let now = Utc::now();
        let d = chrono::Duration::days;
        assert_eq!(
            threshold(Some(now), Some(now + d(30)), now),
            Some("invalid")
        );
        assert_eq!(threshold(None, Some(now - d(1)), now), Some("expired"));
        assert_eq!(
            threshold(None, Some(now + chrono::Duration::hours(5)), now),
            Some("1d")
        );
        assert_eq!(threshold(None, Some(now + d(3)), now), Some("7d"));
        assert_eq!(threshold(None, Some(now + d(30)), now), None);
        assert_eq!(threshold(None, None, now), None);
        assert!(alert_text("Shop", "1d", Some(now)).contains("within a day"));
        assert_eq!(subject_of("invalid"), "rejected by Meta");
    }
}
