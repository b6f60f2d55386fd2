//! Test harness: a fresh Postgres database per test (on the shared server),
//! a NATS prefix per test (on the shared server), the platform started
//! in-process or as a child process, a Graph API stand-in, tenants from
//! manifests and correctly signed webhooks.
//!
//! `ALPHADOME_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and
//! `ALPHADOME_TEST_NATS_URL` (default `nats://127.0.0.1:4222`) name the
//! servers.

pub mod load;
pub mod proc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alphadome_cli::stack::{self, RunOptions, Service};
use alphadome_core::bus::Bus;
use alphadome_core::config::Config;
use alphadome_core::crypto::Keyring;
use alphadome_core::manifest::{self, Manifest};
use alphadome_core::standin::GraphStandIn;
use alphadome_core::{db, meta, CancellationToken};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

/// URL of the Postgres server's maintenance database.
pub fn admin_database_url() -> String {
    std::env::var("ALPHADOME_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the NATS server.
pub fn nats_url() -> String {
    std::env::var("ALPHADOME_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// An empty database (no migrations applied).
    pub async fn empty() -> Self {
        let name = format!("alphadome_t_{}", Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_database_url())
            .await
            .expect("connect to the test Postgres server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let base = admin_database_url();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{}", &base[..i], name),
            None => panic!("ALPHADOME_TEST_DATABASE_URL has no database part"),
        };
        let pool = db::connect(&SecretString::from(url.clone()), 10)
            .await
            .expect("connect to test database");
        Self { name, url, pool }
    }

    /// A database with every migration applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        db::migrate(&db.pool).await.expect("migrations apply");
        db
    }
}

/// Runs clean-up work from a `Drop`: on a thread and runtime of its own,
/// since the test's runtime may be shutting down; waits for it.
fn clean_up<F: std::future::Future<Output = ()> + Send + 'static>(work: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // FORCE ends the test's own pooled connections.
        clean_up(async move {
            if let Ok(admin) = PgPool::connect(&admin_database_url()).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
        });
    }
}

/// A fresh master key ring.
pub fn keyring() -> (String, Arc<Keyring>) {
    let key = Keyring::generate_key();
    let ring = Keyring::from_base64(&key, &[]).expect("generated key is valid");
    (key, Arc::new(ring))
}

/// A NATS prefix of its own for one test; its streams are deleted on drop.
pub struct TestNats {
    pub prefix: String,
}

impl TestNats {
    pub fn new() -> Self {
        Self {
            prefix: format!("t{}", &Uuid::new_v4().simple().to_string()[..12]),
        }
    }

    /// A bus on the test's prefix.
    pub async fn bus(&self) -> Bus {
        Bus::connect(&nats_url(), &self.prefix)
            .await
            .expect("connect to NATS")
    }
}

impl Default for TestNats {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        clean_up(async move {
            if let Ok(bus) = Bus::connect(&nats_url(), &prefix).await {
                for kind in alphadome_core::bus::StreamKind::ALL {
                    let _ = bus.js.delete_stream(bus.stream_name(kind)).await;
                }
            }
        });
    }
}

/// The platform's configuration for a test.
pub fn config(db: &TestDb, nats: &TestNats, keyring: Arc<Keyring>, graph_url: &str) -> Config {
    Config {
        database_url: SecretString::from(db.url.clone()),
        nats_url: nats_url(),
        nats_prefix: nats.prefix.clone(),
        keyring,
        meta_app_secret: Some(SecretString::from(PLATFORM_APP_SECRET.to_owned())),
        meta_app_id: None,
        graph_url: graph_url.to_owned(),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        send_timeout: Duration::from_secs(2),
        send_reconcile_wait: Duration::from_secs(1),
        tenant_refresh: Duration::from_millis(500),
        default_fallback_reply: alphadome_core::config::DEFAULT_FALLBACK_REPLY.to_owned(),
        duplicate_window: Duration::from_secs(120),
        send_mps: 1000,
        pair_burst: 45,
        ai: alphadome_core::config::AiSettings::default(),
        smtp_url: None,
        smtp_from: "Alphadome <alphadome@localhost>".into(),
    }
}

/// The platform-wide Meta app secret the tests use.
pub const PLATFORM_APP_SECRET: &str = "platform-app-secret-for-tests";

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

/// A tenant created for a test.
#[derive(Debug, Clone)]
pub struct TestTenant {
    pub id: Uuid,
    pub phone: String,
    pub phone_number_id: String,
    pub token: String,
    pub app_secret: Option<String>,
}

/// Options for [`tenant`].
pub struct TenantSpec<'a> {
    pub name: &'a str,
    pub phone: &'a str,
    pub phone_number_id: &'a str,
    pub token: &'a str,
    pub app_secret: Option<&'a str>,
    pub active: bool,
    /// (question, answer) FAQ pairs.
    pub faq: &'a [(&'a str, &'a str)],
    /// Extra YAML under control_settings.
    pub control: &'a str,
    /// Extra YAML under tenant (e.g. the AI provider).
    pub tenant_extra: &'a str,
    /// Extra YAML under the default template.
    pub template_extra: &'a str,
    /// Extra items of training_data (YAML list items, indented two spaces).
    pub training_extra: &'a str,
}

impl Default for TenantSpec<'_> {
    fn default() -> Self {
        Self {
            name: "Test Shop",
            phone: "254700000001",
            phone_number_id: "100000000000001",
            token: "EAAG-test-token-1",
            app_secret: None,
            active: true,
            faq: &[("What are your opening hours?", "We are open 9 to 5.")],
            control: "",
            tenant_extra: "",
            template_extra: "",
            training_extra: "",
        }
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The manifest text for `spec`.
pub fn manifest_yaml(spec: &TenantSpec<'_>) -> String {
    let mut y = format!(
        "tenant:\n  client_name: {}\n  client_phone: {}\n  whatsapp_phone_number_id: {}\n  whatsapp_access_token: {}\n  is_active: {}\n  webhook_verify_token: {}\n",
        yaml_str(spec.name),
        yaml_str(spec.phone),
        yaml_str(spec.phone_number_id),
        yaml_str(spec.token),
        spec.active,
        yaml_str(&format!("verify-{}", spec.phone_number_id)),
    );
    if let Some(s) = spec.app_secret {
        y.push_str(&format!("  whatsapp_app_secret: {}\n", yaml_str(s)));
    }
    for line in spec.tenant_extra.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("  {}\n", line.trim()));
    }
    y.push_str("control_settings:\n  log_conversations: true\n");
    for line in spec.control.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("  {}\n", line.trim()));
    }
    y.push_str("templates:\n  - template_name: default\n    is_default: true\n    system_prompt: You are a helpful assistant.\n");
    for line in spec.template_extra.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {}\n", line.trim()));
    }
    if !spec.faq.is_empty() || !spec.training_extra.is_empty() {
        y.push_str("training_data:\n");
        for (q, a) in spec.faq {
            y.push_str(&format!(
                "  - data_type: faq\n    question: {}\n    answer: {}\n",
                yaml_str(q),
                yaml_str(a)
            ));
        }
        y.push_str(spec.training_extra);
    }
    y
}

/// Creates a tenant through the manifest path.
pub async fn tenant(pool: &PgPool, keyring: &Keyring, spec: TenantSpec<'_>) -> TestTenant {
    let m = Manifest::parse(&manifest_yaml(&spec)).expect("test manifest parses");
    let r = manifest::apply(pool, keyring, &m)
        .await
        .expect("test manifest applies");
    TestTenant {
        id: r.tenant_id,
        phone: spec.phone.to_owned(),
        phone_number_id: spec.phone_number_id.to_owned(),
        token: spec.token.to_owned(),
        app_secret: spec.app_secret.map(str::to_owned),
    }
}

/// A text webhook body.
pub fn text_webhook(phone_number_id: &str, from: &str, wamid: &str, text: &str) -> String {
    alphadome_cli::simulate::text_webhook(phone_number_id, from, "Test User", wamid, text)
}

/// A status webhook body.
pub fn status_webhook(
    phone_number_id: &str,
    wamid: &str,
    status: &str,
    ts: i64,
    error_code: Option<i64>,
) -> String {
    let mut st = serde_json::json!({"id": wamid, "status": status, "timestamp": ts.to_string(), "recipient_id": "254711111111"});
    if let Some(code) = error_code {
        st["errors"] = serde_json::json!([{"code": code, "title": "Message failed", "message": "Message failed",
            "error_data": {"details": "stand-in failure"}}]);
    }
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "0", "phone_number_id": phone_number_id},
        "statuses": [st]}}]}]})
    .to_string()
}

/// `body` (a [`status_webhook`]) with its status echoing `callback` as
/// `biz_opaque_callback_data`, as Meta does for what the sender set.
pub fn with_callback(body: &str, callback: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if !callback.is_empty() {
        v["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] =
            serde_json::Value::String(callback.to_owned());
    }
    v.to_string()
}

/// POSTs `body` to `url` signed with `secret`.
pub async fn post_signed(url: &str, secret: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            meta::sign(secret.as_bytes(), body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("POST webhook")
}

/// Starts a Graph API stand-in on a free port.
pub async fn graph() -> (Arc<GraphStandIn>, String, CancellationToken) {
    let shutdown = CancellationToken::new();
    let (g, url) = GraphStandIn::start(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await
        .expect("stand-in");
    (g, url, shutdown)
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let out = cmd.output().expect("run alphadome");
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

/// A NATS server of the test's own (so it can be stopped), on a free port
/// with its own store directory.
pub struct OwnNats {
    pub port: u16,
    pub store: PathBuf,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn binary() -> PathBuf {
        for dir in std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/usr/local/bin"])
        {
            let p = PathBuf::from(dir).join("nats-server");
            if p.exists() {
                return p;
            }
        }
        panic!("nats-server not found on PATH or in /usr/sbin");
    }

    /// Starts a JetStream-enabled server.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let store =
            std::env::temp_dir().join(format!("alphadome-nats-{}", Uuid::new_v4().simple()));
        let mut me = Self {
            port,
            store,
            child: None,
        };
        me.resume().await;
        me
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (same port, same store).
    pub async fn resume(&mut self) {
        let child = std::process::Command::new(Self::binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(10), "nats-server listening", || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// One request the LLM stand-in received.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    pub path: String,
    pub key: String,
    pub body: serde_json::Value,
    pub headers: Vec<(String, String)>,
}

impl LlmRequest {
    /// The system prompt.
    pub fn system(&self) -> String {
        self.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    /// The last user message.
    pub fn last_user(&self) -> String {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A scripted LLM answer.
#[derive(Debug, Clone)]
pub enum LlmBehaviour {
    /// 200 with this completion text.
    Reply(String),
    /// This status and JSON body, with an optional Retry-After (seconds).
    Status(u16, String, Option<u64>),
    /// No answer for this long.
    Hang(Duration),
}

/// A local OpenAI-compatible Chat Completions stand-in (any base path,
/// `.../chat/completions`). Unscripted requests get
/// `"AI answer to: <last user message>"`.
#[derive(Default)]
pub struct LlmStandIn {
    /// How long every answer takes (a slow model).
    latency: std::sync::Mutex<Duration>,
    requests: std::sync::Mutex<Vec<LlmRequest>>,
    script: std::sync::Mutex<std::collections::VecDeque<LlmBehaviour>>,
}

impl LlmStandIn {
    pub async fn start() -> (Arc<Self>, String) {
        use axum::extract::State;
        async fn handle(
            State(me): State<Arc<LlmStandIn>>,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let key = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let req = LlmRequest {
                path: uri.path().to_owned(),
                key,
                body: json,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect(),
            };
            let last = req.last_user();
            me.requests.lock().expect("lock").push(req);
            let latency = *me.latency.lock().expect("lock");
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let next = me.script.lock().expect("lock").pop_front();
            let reply = |text: String| {
                axum::Json(serde_json::json!({"id": "chatcmpl-standin", "object": "chat.completion", "model": "standin-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}}))
                .into_response()
            };
            match next {
                None => reply(format!("AI answer to: {last}")),
                Some(LlmBehaviour::Reply(t)) => reply(t),
                Some(LlmBehaviour::Status(code, body, retry_after)) => {
                    let mut r = (
                        axum::http::StatusCode::from_u16(code).expect("status"),
                        body,
                    )
                        .into_response();
                    r.headers_mut().insert(
                        "content-type",
                        axum::http::HeaderValue::from_static("application/json"),
                    );
                    if let Some(s) = retry_after {
                        r.headers_mut().insert(
                            "retry-after",
                            axum::http::HeaderValue::from_str(&s.to_string()).expect("header"),
                        );
                    }
                    r
                }
                Some(LlmBehaviour::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    reply("too late".into())
                }
            }
        }
        let me = Arc::new(Self::default());
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(handle))
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind llm stand-in");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (me, url)
    }

    /// Makes every answer take `d`.
    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock().expect("lock") = d;
    }

    pub fn script(&self, b: impl IntoIterator<Item = LlmBehaviour>) {
        self.script.lock().expect("lock").extend(b);
    }

    pub fn requests(&self) -> Vec<LlmRequest> {
        self.requests.lock().expect("lock").clone()
    }
}

/// A minimal SMTP server that accepts every message and keeps its text.
#[derive(Default)]
pub struct SmtpSink {
    messages: std::sync::Mutex<Vec<String>>,
}

impl SmtpSink {
    pub async fn start() -> (Arc<Self>, String) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let me = Arc::new(Self::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp sink");
        let url = format!("smtp://{}", listener.local_addr().expect("addr"));
        let sink = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                    let mut data: Option<String> = None;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(buf) = data.as_mut() {
                            if line == "." {
                                sink.messages
                                    .lock()
                                    .expect("lock")
                                    .push(std::mem::take(buf));
                                data = None;
                                let _ = w.write_all(b"250 OK queued\r\n").await;
                            } else {
                                buf.push_str(&line);
                                buf.push('\n');
                            }
                            continue;
                        }
                        let cmd = line.to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                            b"250 sink\r\n"
                        } else if cmd.starts_with("DATA") {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 OK\r\n"
                        };
                        let _ = w.write_all(reply).await;
                    }
                });
            }
        });
        (me, url)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
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

/// A PostgreSQL 15 cluster of the test's own (so it can be stopped and
/// started again), made with initdb in a temporary directory and served on
/// a free port. Run as the `postgres` user when the tests run as root.
pub struct OwnPostgres {
    pub port: u16,
    pub dir: PathBuf,
}

impl OwnPostgres {
    fn bin(name: &str) -> PathBuf {
        let dir = std::env::var("ALPHADOME_PG_BIN").unwrap_or_else(|_| {
            std::fs::read_dir("/usr/lib/postgresql")
                .ok()
                .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).max())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
        });
        PathBuf::from(dir).join(name)
    }

    fn as_owner(program: &str) -> std::process::Command {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(Self::bin(program));
            c
        } else {
            std::process::Command::new(Self::bin(program))
        }
    }

    /// Makes and starts the cluster.
    pub async fn start() -> Self {
        let port = proc::free_port().expect("free port");
        let dir = std::env::temp_dir().join(format!("alphadome-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let out = Self::as_owner("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let me = Self { port, dir };
        me.resume().await;
        me
    }

    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) and waits until it takes connections.
    pub async fn resume(&self) {
        let out = Self::as_owner("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = self.url("postgres");
        eventually(
            Duration::from_secs(20),
            "own Postgres accepting",
            || async { PgPool::connect(&url).await.ok().map(|_| ()) },
        )
        .await;
    }

    /// Stops the server at once (connections are cut, as in a crash of the
    /// database host's service).
    pub fn stop(&self) {
        let _ = Self::as_owner("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
