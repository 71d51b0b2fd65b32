//! `locus`, the CQL adapter and a private tansu as child processes, and waiting for them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn term(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_file(name: &str) -> Stdio {
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    // Appended: a process started again under the same name (a restart) keeps the first
    // one's log.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap()
        .into()
}

/// Polls the bridge's /readyz until ready.
pub async fn wait_ready(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let c = reqwest::Client::new();
    while Instant::now() < deadline {
        let url = format!("http://127.0.0.1:{port}/readyz");
        if c.get(url).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("locus on port {port} not ready within {timeout:?}");
}

/// The local tansu build for the current `dev/tansu` patches (built by `dev/stack up`).
pub fn tansu_bin() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("dev/tansu/build.sh"))
        .arg("--path")
        .output()
        .expect("run dev/tansu/build.sh --path");
    assert!(out.status.success(), "dev/tansu/build.sh --path failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// What a [`Private`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A tansu broker on sqlite in the private folder.
    Kafka,
    /// A Redis with an append-only file in the private folder (data survives a restart).
    Redis,
    /// A CQL adapter in front of the stack's Cassandra: taking it away cuts a stage off from
    /// Cassandra without disturbing the other tests.
    CqlAdapter,
}

/// The one outage helper: a service of the stack started for one test on a port and a data
/// folder of its own, so the test can take it away (`stop`: SIGTERM, `kill9`) and bring it
/// back (`resume`: same port, same data) without disturbing other tests.
pub struct Private {
    pub kind: Service,
    pub port: u16,
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Private {
    pub fn start(kind: Service) -> Private {
        let mut p = Private {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            proc: None,
        };
        p.resume();
        p
    }

    pub fn kafka() -> Private {
        Private::start(Service::Kafka)
    }

    pub fn redis() -> Private {
        Private::start(Service::Redis)
    }

    pub fn cql_adapter() -> Private {
        Private::start(Service::CqlAdapter)
    }

    /// `127.0.0.1:port` (Kafka's bootstrap servers, the adapter's CQL address).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The service's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.child.id())
    }

    /// Starts it (again), and waits until it listens.
    pub fn resume(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Service::Kafka => {
                let url = format!("tcp://127.0.0.1:{port}");
                let mut c = Command::new(tansu_bin());
                c.args(["broker", "--listener-url", &url])
                    .args(["--advertised-listener-url", &url])
                    .args(["--storage-engine", "sqlite://tansu.db"]);
                c
            }
            Service::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--bind", "127.0.0.1", "--port", &port])
                    .args(["--appendonly", "yes", "--save", ""])
                    .arg("--dir")
                    .arg(self.dir.path());
                c
            }
            Service::CqlAdapter => {
                let upstream = std::env::var("LOCUS_CASSANDRA_ADDR")
                    .unwrap_or_else(|_| "127.0.0.1:19042".into());
                let mut c = Command::new(bin_dir().join("locus-cql-adapter"));
                c.args(["--listen", &self.addr(), "--upstream", &upstream]);
                c
            }
        };
        let child = cmd
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?} (dev/stack installs it): {e}", self.kind));
        self.proc = Some(Proc {
            child,
            name: format!("{:?}", self.kind),
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not listen", self.kind);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.term();
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// Starts `locus <args>` for this scope with extra environment; returns it and its HTTP port.
pub fn locus(
    scope: &Scope,
    name: &str,
    args: &[&str],
    extra_env: &[(&str, String)],
) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locus"));
    cmd.arg("--config")
        .arg(repo().join("dev/locus.dev.toml"))
        .args(args)
        .env("LOCUS_KAFKA__BROKERS", &scope.brokers)
        .env("LOCUS_REGISTRY__URL", registry_url())
        .env("LOCUS_TOPICS__LOCATIONS", &scope.locations)
        .env("LOCUS_TOPICS__DLQ", &scope.dlq)
        .env("LOCUS_TOPICS__GROUPS", &scope.groups)
        .env("LOCUS_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LOCUS_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log_file(&format!("{}-{name}", scope.prefix)));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start locus");
    (
        Proc {
            child,
            name: name.into(),
        },
        port,
    )
}
