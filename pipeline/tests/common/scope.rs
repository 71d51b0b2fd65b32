//! Names that keep one test's data apart, its topics, its bridge and simulator.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use locus_kafka::KafkaConfig;

use super::*;

/// Names that keep one test's data apart from every other's.
#[derive(Debug, Clone)]
pub struct Scope {
    pub prefix: String,
    pub locations: String,
    pub dlq: String,
    pub groups: String,
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
            groups: format!("{prefix}.groups"),
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
             - {{name: {}, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}}\n\
             - {{name: {}, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: -1, cleanup_policy: compact, compression: producer}}\n",
            self.locations, self.dlq, self.groups
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
            .env("LOCUS_TOPICS__GROUPS", &self.groups)
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

    /// `locus-sim` for this scope (its broker, topic template and id prefix), writing its
    /// report to a file of its own.
    fn sim_command(&self, args: &[&str]) -> (Command, PathBuf) {
        let report = std::env::temp_dir().join(format!("{}-sim-{}.json", self.prefix, unique("")));
        let mut cmd = Command::new(bin_dir().join("locus-sim"));
        cmd.args(["--port", &mqtt_port().to_string(), "--quiet"])
            .args([
                "--topic-template",
                &self.template,
                "--id-prefix",
                &format!("{}-", self.prefix),
            ])
            .arg("--report")
            .arg(&report)
            .args(args);
        (cmd, report)
    }

    /// Runs `locus-sim` to completion for this scope; returns its report.
    pub fn sim(&self, args: &[&str]) -> serde_json::Value {
        let (mut cmd, report) = self.sim_command(args);
        let status = cmd
            .status()
            .expect("run locus-sim (built by `cargo build --workspace`)");
        assert!(status.success(), "locus-sim failed");
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
    }

    /// Starts `locus-sim` in the background.
    pub fn sim_background(&self, args: &[&str]) -> (Proc, PathBuf) {
        let (mut cmd, report) = self.sim_command(args);
        let child = cmd.spawn().expect("start locus-sim");
        (
            Proc {
                child,
                name: "sim".into(),
            },
            report,
        )
    }
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
