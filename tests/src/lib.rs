//! The end-to-end harness: the platform started in-process ([`RunningStack`],
//! [`TestEnv`]) or as the built binary ([`cli`]), on the resources of
//! `alphadome-testkit` (a database and a NATS prefix per test, the
//! stand-ins for Meta, LLM providers and SMTP, signed webhooks, tenants from
//! manifests), which this crate re-exports for the suites in `tests/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alphadome_cli::stack::{self, RunOptions, Service};
use alphadome_core::config::Config;
use alphadome_core::crypto::Keyring;
use alphadome_core::CancellationToken;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

pub use alphadome_testkit::fixtures::{
    admin_database_url, eventually, keyring, nats_url, TestDb, TestNats, PLATFORM_APP_SECRET,
};
pub use alphadome_testkit::graph::{Behaviour, GraphStandIn, Received};
pub use alphadome_testkit::llm::{LlmBehaviour, LlmRequest, LlmStandIn};
pub use alphadome_testkit::servers::{OwnNats, OwnPostgres};
pub use alphadome_testkit::smtp::SmtpSink;
pub use alphadome_testkit::tenants::{manifest_yaml, tenant, wrote, TenantSpec, TestTenant};
pub use alphadome_testkit::webhooks::{post_signed, status_webhook, text_webhook, with_callback};
pub use alphadome_testkit::{load, proc};

/// The platform's configuration for a test.
pub fn config(db: &TestDb, nats: &TestNats, keyring: Arc<Keyring>, graph_url: &str) -> Config {
    Config {
        nats_url: nats_url(),
        nats_prefix: nats.prefix.clone(),
        meta_app_secret: Some(SecretString::from(PLATFORM_APP_SECRET.to_owned())),
        graph_url: graph_url.to_owned(),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        send_timeout: Duration::from_secs(2),
        send_reconcile_wait: Duration::from_secs(1),
        tenant_refresh: Duration::from_millis(500),
        send_mps: 1000,
        ..Config::new(SecretString::from(db.url.clone()), keyring)
    }
}

/// A running in-process stack.
pub struct RunningStack {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow_free::Result>,
}

/// Avoids a dev-dependency on anyhow: the stack's result as a string.
pub mod anyhow_free {
    pub type Result = std::result::Result<(), String>;
}

impl RunningStack {
    /// Starts `services` in this process.
    pub async fn start(config: Config, services: &[Service]) -> Self {
        Self::start_with(config, RunOptions::new(services)).await
    }

    pub async fn start_with(config: Config, opts: RunOptions) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            stack::run(config, opts, listener, s)
                .await
                .map_err(|e| format!("{e:#}"))
        });
        let me = Self {
            addr,
            shutdown,
            task,
        };
        me.wait_ready().await;
        me
    }

    /// Waits for `/readyz`.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("stack at {} never became ready", self.addr);
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// Graceful stop; returns the stack's result.
    pub async fn stop(self) -> anyhow_free::Result {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("stack task failed: {e}")),
            Err(_) => Err("stack did not stop within 30 s".into()),
        }
    }
}

/// Starts a Graph API stand-in on a free port.
pub async fn graph() -> (Arc<GraphStandIn>, String, CancellationToken) {
    GraphStandIn::start_local().await.expect("stand-in")
}

/// Counts `bot_message_logs` rows of a tenant by direction.
pub async fn log_counts(pool: &PgPool, tenant: Uuid) -> (i64, i64) {
    let r: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE direction = 'incoming'), count(*) FILTER (WHERE direction = 'outgoing') \
         FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .expect("count logs");
    r
}

/// Path of the built `alphadome` binary (built by `cargo build --bins`
/// before the tests run, as the README's test command does).
pub fn alphadome_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("alphadome");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` before the tests",
        bin.display()
    );
    bin
}

/// Runs the `alphadome` binary with `args` and `env`; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    cli_with_stdin(args, env, None)
}

/// [`cli`] with `input` on the command's standard input (`None`: it reads
/// an empty one).
pub fn cli_with_stdin(
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&str>,
) -> (i32, String, String) {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(alphadome_bin());
    cmd.args(args);
    for var in [
        "DATABASE_URL",
        "ALPHADOME_MASTER_KEY",
        "ALPHADOME_PREVIOUS_MASTER_KEYS",
        "NATS_URL",
        "ALPHADOME_NATS_PREFIX",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run alphadome");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("run alphadome");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends the services' logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// What most end-to-end tests start from: a migrated database, a NATS
/// prefix, a master key and a Graph API stand-in.
pub struct TestEnv {
    pub db: TestDb,
    pub nats: TestNats,
    pub ring: Arc<Keyring>,
    pub graph: Arc<GraphStandIn>,
    pub graph_url: String,
    _graph_stop: CancellationToken,
}

impl TestEnv {
    pub async fn new() -> Self {
        let db = TestDb::migrated().await;
        let (_, ring) = keyring();
        let (graph, graph_url, stop) = graph().await;
        Self {
            db,
            nats: TestNats::new(),
            ring,
            graph,
            graph_url,
            _graph_stop: stop,
        }
    }

    /// The platform's configuration for this environment.
    pub fn config(&self) -> Config {
        config(&self.db, &self.nats, self.ring.clone(), &self.graph_url)
    }

    /// Every service, in-process.
    pub async fn stack(&self) -> RunningStack {
        RunningStack::start(self.config(), &Service::ALL).await
    }
}

/// Posts a signed webhook with a text message from `from` to the tenant's
/// number, and checks Meta would see it accepted.
pub async fn ask(stack: &RunningStack, t: &TestTenant, from: &str, wamid: &str, text: &str) {
    let body = text_webhook(&t.phone_number_id, from, wamid, text);
    assert_eq!(
        post_signed(&stack.webhook_url(), PLATFORM_APP_SECRET, &body)
            .await
            .status(),
        200
    );
}

/// The text of the reply to `wamid` the Graph stand-in received (waits up
/// to 20 s for it).
pub async fn reply_to(graph: &GraphStandIn, wamid: &str) -> String {
    eventually(Duration::from_secs(20), "a reply", || async {
        graph
            .received()
            .into_iter()
            .find(|r| r.in_reply_to() == wamid)
            .map(|r| r.text())
    })
    .await
}

/// A client of a running stack's JSON API (`/api/v1`), authenticating with
/// a bearer token.
pub struct ApiClient {
    pub client: reqwest::Client,
    pub base: String,
}

impl ApiClient {
    pub fn new(stack: &RunningStack) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: format!("http://{}/api/v1", stack.addr),
        }
    }

    /// `method path` with an optional JSON body: the status and the JSON
    /// answer (`null` when it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("the API answers");
        let status = r.status().as_u16();
        let text = r.text().await.expect("the API's answer is readable");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `method path` with a body of content type `kind`: the status, the
    /// answer's content type and its text.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        kind: &str,
        body: &str,
    ) -> (u16, String, String) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", kind)
            .body(body.to_owned())
            .send()
            .await
            .expect("the API answers");
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            status,
            kind,
            r.text().await.expect("the API's answer is readable"),
        )
    }
}

/// A new API token `name` with `role`, for `tenant` (id or client phone;
/// none: the whole platform).
pub async fn api_token(
    pool: &PgPool,
    name: &str,
    role: alphadome_admin::people::Role,
    tenant: Option<&str>,
) -> String {
    use secrecy::ExposeSecret as _;
    alphadome_admin::people::create_token(pool, name, role, tenant, "254", "test")
        .await
        .expect("creating the API token")
        .expose_secret()
        .to_owned()
}
