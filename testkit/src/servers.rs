//! Servers of a test's own, for tests that must stop and restart them
//! without touching the shared ones: a JetStream-enabled `nats-server` and
//! a PostgreSQL cluster made with initdb, each on a free port with its own
//! directory, removed on drop.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::eventually;
use crate::proc;

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
