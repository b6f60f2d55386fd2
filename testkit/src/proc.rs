//! The platform as real child processes (`alphadome up`, or one service
//! with `alphadome run <service>`), for the benchmarks and the
//! fault-injection tests: started on a free port, killed with SIGKILL or
//! stopped with SIGTERM, restarted with the same settings, and measured
//! (resident memory from /proc).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// The settings an `alphadome` process needs (everything but its address).
pub fn platform_env(
    database_url: &str,
    nats_url: &str,
    prefix: &str,
    master_key: &str,
    graph_url: &str,
) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("NATS_URL", nats_url),
        ("ALPHADOME_NATS_PREFIX", prefix),
        ("ALPHADOME_MASTER_KEY", master_key),
        ("META_APP_SECRET", crate::fixtures::PLATFORM_APP_SECRET),
        ("WHATSAPP_GRAPH_URL", graph_url),
        ("ALPHADOME_SEND_TIMEOUT_MS", "1000"),
        ("ALPHADOME_SEND_RECONCILE_WAIT_MS", "2000"),
        ("ALPHADOME_TENANT_REFRESH_MS", "500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([(
        "RUST_LOG".to_owned(),
        std::env::var("ALPHADOME_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
    )])
    .collect()
}

/// One `alphadome` child process.
pub struct Proc {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub addr: SocketAddr,
    child: Option<Child>,
    /// Where its stderr goes (kept for a failing test to read).
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin args` with `env` on a free port and waits for `/readyz`.
    pub async fn start(
        bin: &Path,
        args: &[&str],
        env: Vec<(String, String)>,
    ) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let log = std::env::temp_dir().join(format!(
            "alphadome-proc-{}-{}.log",
            args.join("-"),
            uuid::Uuid::new_v4().simple()
        ));
        let mut me = Self {
            bin: bin.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            log,
        };
        me.restart().await?;
        Ok(me)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (again), with the same settings and port.
    pub async fn restart(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ALPHADOME_HTTP_ADDR", self.addr.to_string())
            .stdout(
                log.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.addr);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "{} {} exited ({status}): {}",
                    self.bin.display(),
                    self.args.join(" "),
                    self.log_tail()
                ));
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{} never became ready: {}",
            self.args.join(" "),
            self.log_tail()
        ))
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the graceful exit (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Resident memory now and at its peak, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The last lines the process wrote to stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("ALPHADOME_CHILD_LOG").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
