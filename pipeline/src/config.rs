//! The `locus` configuration: one TOML file plus `LOCUS_<SECTION>__<KEY>` environment
//! overrides. Unknown keys are errors that name the key. `locus.example.toml` documents every
//! option with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use locus_kafka::KafkaConfig;
use locus_mqtt::BridgeConfig;
use locus_redis::CacheConfig;
use locus_replay::ReplayConfig;
use locus_schemas::RegistryConfig;
use locus_scylla::{HistoryConfig, ScyllaConfig};
use locus_sse::PushConfig;
use serde::{Deserialize, Serialize};

/// Environment variables that name the config file rather than override a key.
pub const CONFIG_ENV: &str = "LOCUS_CONFIG";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub scylla: ScyllaConfig,
    #[serde(default)]
    pub topics: TopicsSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub bridge: BridgeConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub push: PushConfig,
    #[serde(default)]
    pub replay: ReplayConfig,
}

/// `[topics]`: which topics the stages use and where they are declared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicsSection {
    /// The declarations `locus topics plan|apply` reconcile.
    #[serde(default = "default_topics_file")]
    pub file: PathBuf,
    /// Topic of valid fixes.
    #[serde(default = "default_locations")]
    pub locations: String,
    /// Topic of rejected input (dead letters).
    #[serde(default = "default_dlq")]
    pub dlq: String,
    /// Compacted topic of the groups tokens may name (key `tenant/group`).
    #[serde(default = "default_groups")]
    pub groups: String,
    /// Cap on replication factor and min.insync.replicas (e.g. 1 for a single broker);
    /// unset: as declared.
    #[serde(default)]
    pub max_replication_factor: Option<u16>,
    /// Cap on each declared topic's partitions for `topics plan|apply` (e.g. 12 for a single
    /// local broker); unset: as declared.
    #[serde(default)]
    pub max_partitions: Option<u32>,
}

fn default_topics_file() -> PathBuf {
    "topics/topics.yaml".into()
}
fn default_locations() -> String {
    "locations".into()
}
fn default_dlq() -> String {
    "locations.dlq".into()
}
fn default_groups() -> String {
    "groups".into()
}

impl Default for TopicsSection {
    fn default() -> Self {
        TopicsSection {
            file: default_topics_file(),
            locations: default_locations(),
            dlq: default_dlq(),
            groups: default_groups(),
            max_replication_factor: None,
            max_partitions: None,
        }
    }
}

/// `[http]`: the one HTTP server of a `locus` process (metrics, health, APIs, SSE).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served instead of `listen` (unset: on
    /// `listen` with everything else), so that they can stay off a public port.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// How long shutdown waits for stages to flush and commit, ms.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// How often `/readyz` re-checks dependencies, ms.
    #[serde(default = "default_readiness_interval_ms")]
    pub readiness_interval_ms: u64,
    /// How long a connection may take to send a request head, ms; then it is closed.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Most new connections still sending their first request head at once (before any
    /// token is checked); beyond it a new connection is closed at once.
    #[serde(default = "default_max_pending_heads")]
    pub max_pending_heads: usize,
    /// A streaming response (the SSE stream) whose client has taken nothing for this long
    /// while there was something to send is closed, freeing its slot, ms.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_readiness_interval_ms() -> u64 {
    2_000
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_max_pending_heads() -> usize {
    1_024
}
fn default_stall_timeout_ms() -> u64 {
    30_000
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
            admin_listen: None,
            shutdown_grace_ms: default_shutdown_grace_ms(),
            readiness_interval_ms: default_readiness_interval_ms(),
            header_timeout_ms: default_header_timeout_ms(),
            max_pending_heads: default_max_pending_heads(),
            stall_timeout_ms: default_stall_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Human,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    #[serde(default)]
    pub format: LogFormat,
    /// tracing filter, e.g. `info` or `info,locus_mqtt=debug`; RUST_LOG overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Auto,
            level: default_level(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{origin}: {key}: {message}")]
    Key {
        origin: String,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` (or only defaults when `None`) and applies the environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                        path: p.display().to_string(),
                        message: e.to_string(),
                    })?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_string()),
        };
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut overridden = vec![];
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix("LOCUS_") else {
                continue;
            };
            if var == CONFIG_ENV || !rest.contains("__") {
                continue; // LOCUS_CONFIG, and the local stack's LOCUS_KAFKA_PORT & co.
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Env {
                    var,
                    message: "empty key segment".into(),
                });
            }
            set_path(&mut table, &defaults, &path, &raw).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            overridden.push(var);
        }
        let origin = if overridden.is_empty() {
            origin
        } else {
            format!("{origin} + {}", overridden.join(", "))
        };
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Key {
                    origin: origin.clone(),
                    key: e.path().to_string(),
                    message: e.inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.registry.validate().map_err(ConfigError::Invalid)?;
        self.scylla
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.cache
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.history
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.bridge
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.push
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.replay
            .validate(self.bridge.max_age_ms)
            .map_err(ConfigError::Invalid)?;
        if self.http.header_timeout_ms == 0 || self.http.stall_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "http.header_timeout_ms and http.stall_timeout_ms must be > 0".into(),
            ));
        }
        let t = &self.topics;
        if t.locations == t.dlq || t.groups == t.locations || t.groups == t.dlq {
            return Err(ConfigError::Invalid(
                "topics.locations, topics.dlq and topics.groups must be different topics".into(),
            ));
        }
        if self.topics.max_replication_factor == Some(0) {
            return Err(ConfigError::Invalid(
                "topics.max_replication_factor must be >= 1".into(),
            ));
        }
        if self.topics.max_partitions == Some(0) {
            return Err(ConfigError::Invalid(
                "topics.max_partitions must be >= 1".into(),
            ));
        }
        if self.http.admin_listen == Some(self.http.listen) {
            return Err(ConfigError::Invalid(
                "http.admin_listen must differ from http.listen (unset it to serve both on one port)"
                    .into(),
            ));
        }
        if self.http.readiness_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "http.readiness_interval_ms must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// The effective config as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.kafka = c.kafka.redacted();
        c.cache = c.cache.redacted();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Sets `path` in `table` to `raw`, typed like the default at that path (strings stay
/// strings; numbers, booleans and arrays are parsed as TOML values).
fn set_path(
    table: &mut toml::Table,
    defaults: &toml::Table,
    path: &[String],
    raw: &str,
) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    let mut d = Some(defaults);
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a section"))?;
        d = d.and_then(|d| d.get(p)).and_then(|v| v.as_table());
    }
    let default = d.and_then(|d| d.get(last));
    let value = match default {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        _ => {
            let wrapped = format!("v = {raw}");
            match toml::from_str::<toml::Table>(&wrapped) {
                Ok(mut parsed) => parsed
                    .remove("v")
                    .unwrap_or(toml::Value::String(raw.into())),
                Err(_) => toml::Value::String(raw.to_string()),
            }
        }
    };
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locus.toml");
        std::fs::write(&p, toml_text).unwrap();
        Config::load_with_env(
            Some(&p),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::load_with_env(None, []).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load("[kafka]\nbrokerz = \"x:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka") && e.contains("brokerz"), "{e}");
        let e = load("[kafka.producer]\nlinger = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka.producer") && e.contains("linger"), "{e}");
        let e = load("[nonsense]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let e = load("[http]\nlisten = 8080\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen"), "{e}");
        let e = load("[kafka.producer]\ncompression = \"brotli\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("brotli"), "{e}");
        let e = load("[kafka\n", &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = load("[topics]\nmax_partitions = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("topics.max_partitions"), "{e}");
    }

    #[test]
    fn env_overrides_win_and_are_typed() {
        let c = load(
            "[kafka]\nbrokers = \"a:1\"\n",
            &[
                ("LOCUS_KAFKA__BROKERS", "b:2"),
                ("LOCUS_KAFKA__PRODUCER__LINGER_MS", "20"),
                ("LOCUS_SCYLLA__FETCH_SCHEMA_METADATA", "false"),
                ("LOCUS_TOPICS__MAX_REPLICATION_FACTOR", "1"),
                ("LOCUS_TOPICS__MAX_PARTITIONS", "12"),
                ("LOCUS_REGISTRY__URL", "http://r:1"),
                ("LOCUS_KAFKA_PORT", "9092"), // the stack's, not an override
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.kafka.producer.linger_ms, 20);
        assert!(!c.scylla.fetch_schema_metadata);
        assert_eq!(c.topics.max_replication_factor, Some(1));
        assert_eq!(c.topics.max_partitions, Some(12));
        assert_eq!(c.registry.url, "http://r:1");
        let e = load("", &[("LOCUS_KAFKA__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("LOCUS_KAFKA__NOPE") && e.contains("nope"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let c = load(
            "[scylla]\nusername = \"u\"\npassword = \"hunter2\"\n[kafka.properties]\n\"sasl.password\" = \"pw2\"\n",
            &[],
        )
        .unwrap();
        let out = c.redacted_toml();
        assert!(!out.contains("hunter2") && !out.contains("pw2"), "{out}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_example_config_is_complete_and_valid() {
        let text = include_str!("../../locus.example.toml");
        let c = load(text, &[]).unwrap();
        // Every option is documented: the example sets every key, so its serialization
        // has the same keys as the defaults.
        let keys = |v: &toml::Table| {
            fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
                for (k, v) in t {
                    let p = format!("{prefix}{k}");
                    match v {
                        toml::Value::Table(t) if !p.ends_with("properties") => {
                            walk(&format!("{p}."), t, out)
                        }
                        _ => out.push(p),
                    }
                }
            }
            let mut out = vec![];
            walk("", v, &mut out);
            out.sort();
            out
        };
        let example: toml::Table = toml::from_str(text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(
            keys(&example),
            keys(&defaults),
            "locus.example.toml must set every option"
        );
        assert_eq!(c, Config::default(), "the example shows the defaults");
    }
}
