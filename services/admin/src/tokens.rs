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
use alphadome_core::{audit, tenant, CancellationToken};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

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

type Row = (
    Uuid,
    String,
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
);

impl TokenWatch {
    pub fn new(config: &Config, db: PgPool, bus: Bus) -> Self {
        let app_token = match (&config.meta_app_id, &config.meta_app_secret) {
            (Some(id), Some(secret)) => Some(SecretString::from(format!(
                "{id}|{}",
                secret.expose_secret()
            ))),
            _ => None,
        };
        Self {
            db,
            bus,
            keyring: config.keyring.clone(),
            mailer: Mailer::new(config.smtp_url.as_ref(), &config.smtp_from),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            graph_url: config.graph_url.clone(),
            app_token,
        }
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
                    Err(e) => tracing::warn!(error = %e, "token check failed; will retry"),
                }
            }
        })
    }

    /// One pass over every tenant with a token; returns the alerts sent.
    pub async fn check(&self) -> Result<Vec<TokenAlert>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.id, t.client_name, t.whatsapp_access_token, t.whatsapp_token_expires_at, t.whatsapp_token_invalid_at, \
               c.escalation_phone, c.escalation_email \
             FROM alphadome.bot_tenants t LEFT JOIN alphadome.bot_control_settings c ON c.bot_tenant_id = t.id \
             WHERE t.whatsapp_access_token IS NOT NULL ORDER BY t.id",
        )
        .fetch_all(&self.db)
        .await?;
        let mut sent = Vec::new();
        for (id, name, stored, mut expires_at, mut invalid_at, phone, email) in rows {
            if let Some(app) = &self.app_token {
                if let Some((exp, valid)) = self.ask_meta(id, &stored, app).await {
                    // An expired token is reported invalid too; that is expiry, not rejection.
                    let lapsed = exp.is_some_and(|e| e <= Utc::now());
                    if !valid && !lapsed && invalid_at.is_none() {
                        sqlx::query("UPDATE alphadome.bot_tenants SET whatsapp_token_invalid_at = now() WHERE id = $1 AND whatsapp_token_invalid_at IS NULL")
                            .bind(id)
                            .execute(&self.db)
                            .await?;
                        invalid_at = Some(Utc::now());
                        tenant::announce_change(&self.bus, id).await;
                    }
                    if exp != expires_at {
                        sqlx::query("UPDATE alphadome.bot_tenants SET whatsapp_token_expires_at = $2 WHERE id = $1")
                            .bind(id)
                            .bind(exp)
                            .execute(&self.db)
                            .await?;
                        expires_at = exp;
                    }
                }
            }
            let now = Utc::now();
            let threshold = match (invalid_at, expires_at) {
                (Some(_), _) => "invalid",
                (None, Some(e)) if e <= now => "expired",
                (None, Some(e)) if e <= now + chrono::Duration::days(1) => "1d",
                (None, Some(e)) if e <= now + chrono::Duration::days(7) => "7d",
                _ => continue,
            };
            let fingerprint = hex::encode(&Sha256::digest(stored.as_bytes())[..8]);
            let first: Option<(i32,)> = sqlx::query_as(
                "INSERT INTO alphadome.token_alerts (bot_tenant_id, threshold, token_fingerprint) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING RETURNING 1",
            )
            .bind(id)
            .bind(threshold)
            .bind(&fingerprint)
            .fetch_optional(&self.db)
            .await?;
            if first.is_none() {
                continue;
            }
            let text = match threshold {
                "invalid" => format!("Alphadome: Meta rejected {name}'s WhatsApp access token. The bot cannot send replies until a new token is applied (alphadome tenant apply)."),
                "expired" => format!("Alphadome: {name}'s WhatsApp access token has expired. The bot cannot send replies until a new token is applied."),
                "1d" => format!("Alphadome: {name}'s WhatsApp access token expires within a day ({}). Apply a new token to keep the bot answering.", expires_at.map(|e| e.to_rfc3339()).unwrap_or_default()),
                _ => format!("Alphadome: {name}'s WhatsApp access token expires within 7 days ({}). Apply a new token to keep the bot answering.", expires_at.map(|e| e.to_rfc3339()).unwrap_or_default()),
            };
            tracing::warn!(tenant_id = %id, threshold, alert = "whatsapp_token", "{text}");
            // Through the tenant's own number only while its token still works.
            if let (Some(p), "7d" | "1d") = (phone.as_deref(), threshold) {
                let msg_id = format!("token-alert:{id}:{threshold}:{fingerprint}");
                if let Err(e) =
                    notify::whatsapp(&self.bus, id, p, &msg_id, &text, "token_alert").await
                {
                    tracing::error!(tenant_id = %id, error = %e, "token alert WhatsApp message not queued");
                }
            }
            if let Some(to) = email.as_deref() {
                let subject = format!(
                    "[{name}] WhatsApp token {}",
                    match threshold {
                        "invalid" => "rejected by Meta".to_owned(),
                        "expired" => "expired".to_owned(),
                        t => format!(
                            "expires within {}",
                            if t == "1d" { "a day" } else { "7 days" }
                        ),
                    }
                );
                if let Err(e) = self.mailer.send(to, &subject, &text).await {
                    tracing::error!(tenant_id = %id, error = %e, "token alert e-mail not sent");
                    sqlx::query("UPDATE alphadome.token_alerts SET email_error = $4 WHERE bot_tenant_id = $1 AND threshold = $2 AND token_fingerprint = $3")
                        .bind(id)
                        .bind(threshold)
                        .bind(&fingerprint)
                        .bind(e)
                        .execute(&self.db)
                        .await?;
                }
            }
            sent.push(TokenAlert {
                tenant: id,
                threshold,
            });
        }
        Ok(sent)
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
            .map_err(|e| tracing::error!(tenant_id = %id, error = %e, "cannot decrypt the tenant's token"))
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
