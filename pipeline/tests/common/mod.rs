//! Helpers for end-to-end tests against the local stack: unique names, the `locus` and
//! `locus-sim` binaries as child processes, a private tansu broker for outage tests, and a
//! consumer that reads a whole topic.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use locus_kafka::KafkaConfig;
use locus_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use locus_kafka::rdkafka::message::{Headers, Message};
use locus_kafka::rdkafka::{Offset, TopicPartitionList};

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Now, in ms since the epoch (event times of test fixes).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_locus"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn brokers() -> String {
    std::env::var("LOCUS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn registry_url() -> String {
    std::env::var("LOCUS_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

/// The local stack's Redis (database 0; tests keep apart by key prefix).
#[allow(dead_code)]
pub fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:{}/0",
        std::env::var("LOCUS_REDIS_PORT").unwrap_or_else(|_| "6379".into())
    )
}

pub fn mqtt_port() -> u16 {
    std::env::var("LOCUS_MQTT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1883)
}

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

/// Names that keep one test's data apart from every other's.
#[derive(Debug, Clone)]
pub struct Scope {
    pub prefix: String,
    pub locations: String,
    pub dlq: String,
    pub template: String,
    pub share_group: String,
    pub brokers: String,
}

impl Scope {
    pub fn new(name: &str) -> Scope {
        let prefix = unique(&format!("{name}-"));
        Scope {
            locations: format!("{prefix}.locations"),
            dlq: format!("{prefix}.dlq"),
            template: format!("{prefix}/{{tenant}}/{{user_id}}/location"),
            share_group: prefix.clone(),
            brokers: brokers(),
            prefix,
        }
    }

    pub fn topic(&self, tenant: &str, user: &str) -> String {
        format!("{}/{tenant}/{user}/location", self.prefix)
    }

    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            ..Default::default()
        }
    }

    /// Creates this scope's topics (4 partitions for fixes, 1 for the DLQ).
    pub async fn create_topics(&self) {
        let yaml = format!(
            "topics:\n\
             - {{name: {}, partitions: 4, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}}\n\
             - {{name: {}, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}}\n",
            self.locations, self.dlq
        );
        let file = locus_topics::TopicsFile::parse(&yaml, "test").unwrap();
        let k = self.kafka();
        // tansu can be slow to answer metadata while other tests load it: try a few times.
        for attempt in 1..=3 {
            let done = match locus_topics::plan(&k, &file, Some(1)).await {
                Ok(plan) => locus_topics::apply(&k, &plan)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match done {
                Ok(_) => return,
                Err(e) if attempt < 3 => eprintln!("creating topics failed ({e}); again"),
                Err(e) => panic!("cannot create the test topics: {e}"),
            }
        }
    }

    /// Starts `locus bridge` for this scope; returns it and its HTTP port.
    pub fn bridge(&self, client_id: &str, extra_env: &[(&str, String)]) -> (Proc, u16) {
        let port = free_port();
        let mut cmd = self.bridge_command(client_id, &[], port);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start locus bridge");
        (
            Proc {
                child,
                name: "bridge".into(),
            },
            port,
        )
    }

    /// `locus bridge <args>` for this scope as client `client_id` (not started yet).
    pub fn bridge_command(&self, client_id: &str, args: &[&str], port: u16) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_locus"));
        cmd.arg("--config")
            .arg(repo().join("dev/locus.dev.toml"))
            .arg("bridge")
            .args(args)
            .env("LOCUS_KAFKA__BROKERS", &self.brokers)
            .env("LOCUS_REGISTRY__URL", registry_url())
            .env("LOCUS_TOPICS__LOCATIONS", &self.locations)
            .env("LOCUS_TOPICS__DLQ", &self.dlq)
            .env("LOCUS_BRIDGE__TOPIC_TEMPLATE", &self.template)
            .env("LOCUS_BRIDGE__SHARE_GROUP", &self.share_group)
            .env("LOCUS_BRIDGE__CLIENT_ID", client_id)
            .env("LOCUS_BRIDGE__MQTT_PORT", mqtt_port().to_string())
            .env("LOCUS_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("LOCUS_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log_file(&format!("{}-{client_id}-bridge", self.prefix)));
        cmd
    }

    /// Runs `locus-sim` to completion for this scope; returns its report.
    pub fn sim(&self, args: &[&str]) -> serde_json::Value {
        let report = std::env::temp_dir().join(format!("{}-sim-{}.json", self.prefix, unique("")));
        let status = Command::new(bin_dir().join("locus-sim"))
            .args(["--port", &mqtt_port().to_string(), "--quiet"])
            .args([
                "--topic-template",
                &self.template,
                "--id-prefix",
                &format!("{}-", self.prefix),
            ])
            .arg("--report")
            .arg(&report)
            .args(args)
            .status()
            .expect("run locus-sim (built by `cargo build --workspace`)");
        assert!(status.success(), "locus-sim failed");
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
    }

    /// Starts `locus-sim` in the background.
    pub fn sim_background(&self, args: &[&str]) -> (Proc, PathBuf) {
        let report = std::env::temp_dir().join(format!("{}-sim-{}.json", self.prefix, unique("")));
        let child = Command::new(bin_dir().join("locus-sim"))
            .args(["--port", &mqtt_port().to_string(), "--quiet"])
            .args([
                "--topic-template",
                &self.template,
                "--id-prefix",
                &format!("{}-", self.prefix),
            ])
            .arg("--report")
            .arg(&report)
            .args(args)
            .spawn()
            .expect("start locus-sim");
        (
            Proc {
                child,
                name: "sim".into(),
            },
            report,
        )
    }
}

pub fn log_file(name: &str) -> Stdio {
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(format!("{name}.log")))
        .unwrap()
        .into()
}

/// The (tenant, user, device, seq) of every fix a sim report says the broker acknowledged.
pub fn expected_fixes(report: &serde_json::Value) -> Vec<(String, String, i64)> {
    let mut out = vec![];
    for d in report["devices"].as_array().unwrap() {
        for r in d["seqs"].as_array().unwrap() {
            for seq in r[0].as_i64().unwrap()..=r[1].as_i64().unwrap() {
                out.push((
                    d["user_id"].as_str().unwrap().to_string(),
                    d["device_id"].as_str().unwrap().to_string(),
                    seq,
                ));
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// Record timestamp, ms.
    pub timestamp: Option<i64>,
}

/// Reads `topic` from the beginning until `want(records)` holds or `timeout` passes.
pub fn consume_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    want: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let k = KafkaConfig {
        brokers: brokers.to_string(),
        ..Default::default()
    };
    let consumer: BaseConsumer = k
        .consumer_config("test", &unique("test-"))
        .create()
        .unwrap();
    // tansu can be slow to answer metadata while other tests load it: try a few times.
    let md = (1..=3)
        .find_map(
            |attempt| match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                Ok(md) => Some(md),
                Err(e) if attempt < 3 => {
                    eprintln!("metadata of {topic} failed ({e}); again");
                    None
                }
                Err(e) => panic!("no metadata for {topic}: {e}"),
            },
        )
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = vec![];
    while Instant::now() < deadline && !want(&out) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hd = h.get(i);
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
                timestamp: m.timestamp().to_millis(),
            });
        }
    }
    out
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

/// The text of a process's `/metrics`.
pub async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn metric(port: u16, name: &str) -> f64 {
    metrics_text(port)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A private tansu broker (for tests that stop Kafka), with its own data folder.
pub struct PrivateKafka {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Option<Proc>,
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

impl PrivateKafka {
    pub fn start() -> PrivateKafka {
        let mut k = PrivateKafka {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            proc: None,
        };
        k.resume();
        k
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.child.id())
    }

    pub fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (built by dev/stack up)");
        self.proc = Some(Proc {
            child,
            name: "tansu".into(),
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.term();
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

pub fn cql_addr() -> String {
    std::env::var("LOCUS_CQL_ADDR").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

/// A private CQL adapter in front of the stack's Cassandra (to cut the writer off from
/// Cassandra without disturbing other tests).
pub fn private_adapter(port: u16) -> Proc {
    let upstream =
        std::env::var("LOCUS_CASSANDRA_ADDR").unwrap_or_else(|_| "127.0.0.1:19042".into());
    let child = Command::new(bin_dir().join("locus-cql-adapter"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &upstream,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start locus-cql-adapter (built by cargo build --workspace)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "adapter did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc {
        child,
        name: "cql-adapter".into(),
    }
}

/// Produces `fixes` (Avro, key = user id) to the scope's locations topic and waits for
/// every delivery.
pub async fn produce(s: &Scope, fixes: &[locus_schemas::LocationFix]) {
    FixProducer::new(s).send(fixes).await;
}

/// A producer of fixes to a scope's locations topic, for tests that produce many times.
#[allow(dead_code)]
pub struct FixProducer {
    codec: locus_schemas::Codec,
    producer: locus_kafka::Producer,
    topic: String,
}

#[allow(dead_code)]
impl FixProducer {
    pub fn new(s: &Scope) -> FixProducer {
        let codec = locus_schemas::Codec::new(
            &locus_schemas::RegistryConfig {
                url: registry_url(),
                ..Default::default()
            },
            &s.locations,
        )
        .unwrap();
        FixProducer {
            codec,
            producer: locus_kafka::Producer::new(&s.kafka(), "test").unwrap(),
            topic: s.locations.clone(),
        }
    }

    /// Sends every fix and waits for every delivery.
    pub async fn send(&self, fixes: &[locus_schemas::LocationFix]) {
        let mut pending = vec![];
        for f in fixes {
            let bytes = self.codec.encode(f).await.unwrap();
            pending.push(
                self.producer
                    .send(&self.topic, f.user_id.as_bytes(), &bytes, &[])
                    .await
                    .unwrap(),
            );
        }
        for d in pending {
            d.delivered().await.unwrap();
        }
    }
}

/// The HS256 secret of `dev/locus.dev.toml`, which the tests' `locus` processes use.
pub const DEV_SECRET: &str = "locus-dev-secret-change-me-in-production";

/// A token for `tenant` (every user of it, or only `users`), valid for `ttl_s` seconds.
pub fn token(tenant: &str, users: Option<&[&str]>, ttl_s: i64) -> String {
    let now_s = now_ms() / 1000;
    locus_sse::mint_hs256(
        DEV_SECRET,
        &locus_sse::Claims {
            tenant: tenant.into(),
            users: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
            exp: (now_s + ttl_s).max(0) as u64,
            sub: None,
            iss: None,
            aud: None,
        },
    )
    .unwrap()
}

/// GET of a data route (`/v1/tenants/{tenant}/…`) with a token for the tenant it names.
pub async fn get_data(port: u16, path: &str) -> reqwest::Response {
    let tenant = path.split('/').nth(3).unwrap_or_default();
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token(tenant, None, 600))
        .send()
        .await
        .unwrap()
}
