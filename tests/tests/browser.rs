//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, installed by scripts/setup.sh) driven over
//! WebDriver with fantoccini, against the whole platform in-process. A
//! platform admin signs in, creates a tenant, adds an FAQ entry, flips a
//! setting, puts the tenant live; a customer's conversation (signed
//! webhooks) appears live in the open conversation page, the agent
//! answers from it, and Meta's stand-in receives the answer. Screenshots of
//! the pages are written to `target/screenshots/` (or
//! `ALPHADOME_SCREENSHOTS`), from where docs/screenshots/ was taken.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alphadome_admin::people::{self, Role};
use alphadome_tests::{eventually, post_signed, text_webhook, TestEnv};
use fantoccini::{Client, ClientBuilder, Locator};
use secrecy::SecretString;
use serde_json::json;

/// A chromedriver on a free port, stopped when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (scripts/setup.sh installs chromium-driver): {e}")
            });
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver answers", || {
            let status = format!("{url}/status");
            async move {
                reqwest::get(status)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        Self { child, url }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--lang=en-GB"]
        });
        if let Ok(bin) = std::env::var("CHROMIUM") {
            options["binary"] = json!(bin);
        } else if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        caps.insert("goog:chromeOptions".into(), options);
        // WebDriver on loopback speaks plain HTTP: no TLS stack needed.
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn screenshots() -> PathBuf {
    let dir = std::env::var("ALPHADOME_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn fill(b: &Client, css: &str, text: &str) {
    let e = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn click(b: &Client, css: &str) {
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until the page's text contains `text`.
async fn see(b: &Client, text: &str) {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(src) = b.source().await {
                if src.contains(text) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "the page never showed {text:?}: {}",
        b.source().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn a_business_runs_its_bot_from_the_browser() {
    let env = TestEnv::new().await;
    let stack = env.stack().await;
    let base = format!("http://localhost:{}", stack.addr.port());
    let password = "a long enough password";
    people::add_user(
        &env.db.pool,
        "ops@alphadome.example",
        Role::PlatformAdmin,
        None,
        &SecretString::from(password.to_owned()),
        "254",
        "test",
    )
    .await
    .unwrap();
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // Sign in.
    b.goto(&format!("{base}/")).await.unwrap();
    see(&b, "Sign in").await;
    shoot(&b, "login").await;
    fill(&b, "#email", "ops@alphadome.example").await;
    fill(&b, "#password", password).await;
    click(&b, "main form button[type=submit]").await;
    see(&b, "Tenants").await;

    // Create a tenant.
    click(&b, "a.button[href='/tenants/new']").await;
    fill(&b, "#client_name", "Kassangas Music Shop").await;
    fill(&b, "#client_phone", "0702245555").await;
    fill(&b, "#whatsapp_phone_number_id", "100000000000077").await;
    fill(&b, "#whatsapp_access_token", "EAAG-browser-token").await;
    fill(&b, "#whatsapp_app_secret", "browser-app-secret").await;
    click(&b, "main form button[type=submit]").await;
    see(&b, "Go-live checklist").await;
    let id: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM alphadome.bot_tenants WHERE client_phone = '254702245555'",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with(&id.to_string()));

    // Add an FAQ entry: it is listed, and stored for the tenant.
    b.goto(&format!("{base}/t/{id}/faq")).await.unwrap();
    fill(&b, "#question", "Do you sell violins?").await;
    fill(
        &b,
        "#answer",
        "Yes: violins from KSh 15,000, in store in Nairobi.",
    )
    .await;
    click(&b, "#add-faq button[type=submit]").await;
    see(&b, "violins from KSh 15,000").await;
    // A bad entry is refused with the field marked.
    fill(&b, "#question", "Do you sell violins?").await;
    fill(&b, "#answer", "Again").await;
    click(&b, "#add-faq button[type=submit]").await;
    see(&b, "already exists").await;
    let invalid = b
        .find(Locator::Css("#question"))
        .await
        .unwrap()
        .attr("aria-invalid")
        .await
        .unwrap();
    assert_eq!(invalid.as_deref(), Some("true"));
    shoot(&b, "faq").await;

    // Flip a toggle: training mode on.
    b.goto(&format!("{base}/t/{id}/settings")).await.unwrap();
    click(&b, "input[name=enable_training_mode]").await;
    click(&b, "#settings button[type=submit]").await;
    eventually(Duration::from_secs(10), "training mode stored", || {
        let pool = env.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT enable_training_mode FROM alphadome.bot_control_settings WHERE bot_tenant_id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .filter(|on| *on)
        }
    })
    .await;
    b.goto(&format!("{base}/t/{id}/settings")).await.unwrap();
    let checked = b
        .find(Locator::Css("input[name=enable_training_mode]"))
        .await
        .unwrap()
        .prop("checked")
        .await
        .unwrap();
    assert_eq!(checked.as_deref(), Some("true"));
    shoot(&b, "settings").await;
    // The business's own details, from the same page.
    fill(&b, "#profile #client_name", "Kassangas Music Shop Ltd").await;
    click(&b, "#profile button[type=submit]").await;
    eventually(Duration::from_secs(10), "the new name stored", || {
        let pool = env.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT client_name FROM alphadome.bot_tenants WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()
            .filter(|n| n == "Kassangas Music Shop Ltd")
        }
    })
    .await;

    // Put it live (the checklist is not done: the browser asks first).
    b.goto(&format!("{base}/t/{id}")).await.unwrap();
    click(&b, "#activate").await;
    b.accept_alert().await.unwrap();
    see(&b, ">live<").await;

    // A customer writes; the conversation shows in the inbox.
    let hook = stack.webhook_url();
    let r = post_signed(
        &hook,
        "browser-app-secret",
        &text_webhook(
            "100000000000077",
            "254755000007",
            "wamid.b1",
            "Do you sell violins?",
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(15), "the bot answered", || {
        let graph = env.graph.clone();
        async move {
            graph
                .received_from(0)
                .into_iter()
                .find(|m| m.to() == "254755000007")
        }
    })
    .await;
    // (the log is written beside the reply; the inbox reads the log)
    eventually(Duration::from_secs(15), "the exchange logged", || {
        let pool = env.db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1 AND user_phone = '254755000007'",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            (n >= 2).then_some(())
        }
    })
    .await;
    b.goto(&format!("{base}/t/{id}/inbox")).await.unwrap();
    see(&b, "+254755000007").await;
    see(&b, "violins from KSh 15,000").await;
    shoot(&b, "inbox").await;
    click(&b, "a[href$='/inbox/254755000007']").await;
    see(&b, "violins from KSh 15,000").await;

    // The open conversation follows the customer live.
    let r = post_signed(
        &hook,
        "browser-app-secret",
        &text_webhook(
            "100000000000077",
            "254755000007",
            "wamid.b2",
            "Can I pay in three instalments?",
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    see(&b, "Can I pay in three instalments?").await;

    // The agent answers from the page; Meta's stand-in receives it.
    let before = env.graph.accepted();
    fill(
        &b,
        "form.reply textarea",
        "Yes, three monthly instalments. Come by the shop!",
    )
    .await;
    click(&b, "form.reply button[type=submit]").await;
    let sent = eventually(
        Duration::from_secs(15),
        "the agent's reply reaches Meta",
        || {
            let graph = env.graph.clone();
            async move {
                graph
                    .received_from(before)
                    .into_iter()
                    .find(|m| m.text() == "Yes, three monthly instalments. Come by the shop!")
            }
        },
    )
    .await;
    assert_eq!(sent.to(), "254755000007");
    assert_eq!(sent.token, "EAAG-browser-token");
    see(&b, "user:ops@alphadome.example").await;
    // The bot is paused while a person handles it; given back, it answers.
    b.goto(&format!("{base}/t/{id}/inbox/254755000007"))
        .await
        .unwrap();
    see(&b, "Give back to the bot").await;
    shoot(&b, "conversation").await;
    click(&b, "#resume").await;
    eventually(Duration::from_secs(10), "the handoff ends", || {
        let pool = env.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT resumed_at IS NOT NULL FROM alphadome.conversation_handoffs WHERE bot_tenant_id = $1 AND user_phone = '254755000007'",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .filter(|done| *done)
        }
    })
    .await;

    // The overview's charts and checklist, on a wide and a phone screen.
    b.goto(&format!("{base}/t/{id}")).await.unwrap();
    see(&b, "Replies by source").await;
    shoot(&b, "overview").await;
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("{base}/t/{id}/inbox/254755000007"))
        .await
        .unwrap();
    see(&b, "Can I pay in three instalments?").await;
    let overflow: serde_json::Value = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        json!(true),
        "the conversation page is wider than a phone"
    );
    shoot(&b, "conversation-phone").await;
    b.close().await.unwrap();
    stack.stop().await.unwrap();
}
