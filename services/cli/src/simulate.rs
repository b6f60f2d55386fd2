//! `alphadome simulate`: chat with a tenant's bot from the terminal, no
//! Meta account needed. It starts a local stand-in for the Graph API, sends
//! correctly signed webhooks to the ingress as Meta would, and prints the
//! replies the platform delivers to the stand-in. The platform must run
//! with `WHATSAPP_GRAPH_URL` pointing at the stand-in
//! (`http://127.0.0.1:8089/v24.0` by default).

use std::net::SocketAddr;
use std::time::Duration;

use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_core::{meta, CancellationToken};
use alphadome_testkit::graph::GraphStandIn;
use alphadome_testkit::webhooks::named_text_webhook;
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Options of a simulation.
pub struct SimulateOptions {
    pub tenant: String,
    /// Country code of national phone numbers (`--tenant 07...`).
    pub country_code: String,
    pub ingress_url: String,
    pub graph_listen: SocketAddr,
    pub from: String,
    pub profile_name: String,
    pub messages: Vec<String>,
    pub timeout: Duration,
}

/// Runs the simulation; prints each reply to stdout.
pub async fn run(
    db: &PgPool,
    keyring: &Keyring,
    platform_secret: Option<SecretString>,
    opts: SimulateOptions,
) -> anyhow::Result<()> {
    let tenant = alphadome_admin::tenants::find(db, &opts.tenant, &opts.country_code).await?;
    let Some(pnid) = tenant.whatsapp_phone_number_id.clone() else {
        bail!(
            "tenant {} has no whatsapp_phone_number_id",
            tenant.client_name
        );
    };
    let secret = match tenant.whatsapp_app_secret.as_deref() {
        Some(s) => keyring
            .decrypt(tenant.id, SecretColumn::WhatsappAppSecret, s)
            .context("decrypting the tenant's app secret")?,
        None => platform_secret
            .context("the tenant has no app secret and META_APP_SECRET is not set")?,
    };
    let shutdown = CancellationToken::new();
    let (standin, url) = GraphStandIn::start(opts.graph_listen, shutdown.clone())
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the Graph API stand-in",
                opts.graph_listen
            )
        })?;
    eprintln!(
        "Chatting with {} ({}) as {}. Replies are captured at {url} (run the platform with WHATSAPP_GRAPH_URL={url}).",
        tenant.client_name, tenant.client_phone, opts.from
    );
    if !tenant.is_active {
        eprintln!("Note: this tenant is inactive; it logs messages but does not answer. Activate it with `alphadome tenant activate {}`.", tenant.client_phone);
    }
    let chat = Chat {
        http: reqwest::Client::new(),
        standin,
        pnid,
        secret,
        opts: &opts,
    };
    let mut lines: std::collections::VecDeque<String> = opts.messages.iter().cloned().collect();
    let interactive = lines.is_empty();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let text = if interactive {
            eprint!("you> ");
            match stdin.next_line().await? {
                Some(l) if l.trim().is_empty() => continue,
                Some(l) => l,
                None => break,
            }
        } else {
            match lines.pop_front() {
                Some(l) => l,
                None => break,
            }
        };
        match chat.say(&text).await? {
            Some(reply) => println!("bot> {reply}"),
            None => {
                println!("bot> (no reply within {} s)", opts.timeout.as_secs());
                eprintln!(
                    "     The tenant may be inactive, over a limit, or this chat handed to a person \
                     (alphadome conversation list --tenant {}); the platform's log says why.",
                    tenant.client_phone
                );
            }
        }
    }
    shutdown.cancel();
    Ok(())
}

/// One customer's chat with one tenant's bot.
struct Chat<'a> {
    http: reqwest::Client,
    standin: std::sync::Arc<GraphStandIn>,
    pnid: String,
    secret: SecretString,
    opts: &'a SimulateOptions,
}

impl Chat<'_> {
    /// Sends `text` as a signed webhook; the bot's reply, if one reaches
    /// the stand-in within the time-out.
    async fn say(&self, text: &str) -> anyhow::Result<Option<String>> {
        let opts = self.opts;
        let wamid = format!("wamid.sim.{}", uuid::Uuid::new_v4().simple());
        let body = named_text_webhook(&self.pnid, &opts.from, &opts.profile_name, &wamid, text);
        let sig = meta::sign(self.secret.expose_secret().as_bytes(), body.as_bytes());
        let mut seen = self.standin.accepted();
        let resp = self
            .http
            .post(&opts.ingress_url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the ingress at {}", opts.ingress_url))?;
        if !resp.status().is_success() {
            bail!(
                "ingress answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default().trim()
            );
        }
        let deadline = tokio::time::Instant::now() + opts.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got = self.standin.wait_for(seen + 1, left).await;
            if let Some(r) = got.iter().skip(seen).find(|r| r.in_reply_to() == wamid) {
                return Ok(Some(r.text()));
            }
            if got.len() <= seen || left.is_zero() {
                return Ok(None);
            }
            seen = got.len();
        }
    }
}
