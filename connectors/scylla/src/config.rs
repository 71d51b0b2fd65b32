use std::time::Duration;

use serde::{Deserialize, Serialize};

use locus_schemas::Secret;

use crate::ScyllaError;

/// `[scylla]`: how to reach Cassandra/ScyllaDB.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    #[serde(default = "default_nodes")]
    pub nodes: Vec<String>,
    /// Keyspace of the Locus tables.
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// Read schema metadata (`system_schema.*`) from the cluster. Needs Cassandra 3+ or
    /// Scylla; off for the local stack's Cassandra 2.1, which has no `system_schema`.
    #[serde(default = "default_fetch_schema_metadata")]
    pub fetch_schema_metadata: bool,
    /// Give up connecting after this many milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Username for password authentication; empty: none.
    #[serde(default)]
    pub username: String,
    /// Password for password authentication.
    #[serde(default)]
    pub password: Secret,
    /// TLS to the nodes: the CA (PEM) that signs their certificates; empty: plaintext.
    #[serde(default)]
    pub tls_ca_file: String,
    /// Client certificate (PEM) for nodes that require one; with `tls_client_key_file`.
    #[serde(default)]
    pub tls_client_cert_file: String,
    /// Its private key (PEM).
    #[serde(default)]
    pub tls_client_key_file: String,
    /// Whether a node's certificate must carry the IP address the driver connects to
    /// (the driver names nodes by address). Off: only the chain to the CA is checked.
    #[serde(default = "default_tls_verify_hostname")]
    pub tls_verify_hostname: bool,
}

fn default_tls_verify_hostname() -> bool {
    true
}

fn default_nodes() -> Vec<String> {
    vec!["127.0.0.1:9042".into()]
}
fn default_keyspace() -> String {
    "locus".into()
}
fn default_fetch_schema_metadata() -> bool {
    true
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: default_nodes(),
            keyspace: default_keyspace(),
            fetch_schema_metadata: default_fetch_schema_metadata(),
            connect_timeout_ms: default_connect_timeout_ms(),
            username: String::new(),
            password: Secret::default(),
            tls_ca_file: String::new(),
            tls_client_cert_file: String::new(),
            tls_client_key_file: String::new(),
            tls_verify_hostname: default_tls_verify_hostname(),
        }
    }
}

impl ScyllaConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), ScyllaError> {
        if self.nodes.is_empty() {
            return Err(ScyllaError::Config(
                "scylla.nodes must name at least one node".into(),
            ));
        }
        for n in &self.nodes {
            if !n.contains(':') {
                return Err(ScyllaError::Config(format!(
                    "scylla.nodes entry '{n}' must be host:port"
                )));
            }
        }
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ScyllaError::Config(format!(
                "scylla.keyspace '{ks}' must be 1-48 letters, digits or underscores"
            )));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ScyllaError::Config(
                "scylla.connect_timeout_ms must be > 0".into(),
            ));
        }
        if !self.username.is_empty() && self.password.is_empty() {
            return Err(ScyllaError::Config(
                "scylla.password is required when scylla.username is set".into(),
            ));
        }
        if self.tls_ca_file.is_empty() && !self.tls_client_cert_file.is_empty() {
            return Err(ScyllaError::Config(
                "scylla.tls_client_cert_file needs scylla.tls_ca_file (a client certificate \
                 is not sent in clear)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The TLS configuration of the session, read from the files; `None`: plaintext.
    pub fn tls(
        &self,
    ) -> Result<Option<std::sync::Arc<locus_schemas::tls::rustls::ClientConfig>>, ScyllaError> {
        if self.tls_ca_file.is_empty() {
            return Ok(None);
        }
        let files = locus_schemas::tls::PemFiles::read(
            "scylla",
            &self.tls_ca_file,
            &self.tls_client_cert_file,
            &self.tls_client_key_file,
        )
        .map_err(ScyllaError::Config)?;
        let config = locus_schemas::tls::client_config(files.as_files(self.tls_verify_hostname))
            .map_err(|e| ScyllaError::Config(format!("scylla.tls_*: {e}")))?;
        Ok(Some(std::sync::Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted() {
        let c = ScyllaConfig {
            username: "u".into(),
            password: Secret::new("hunter2"),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }

    #[test]
    fn tls_settings_are_checked() {
        let c = ScyllaConfig {
            tls_client_cert_file: "c.pem".into(),
            tls_client_key_file: "k.pem".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("in clear"));
        assert!(
            ScyllaConfig::default().tls().unwrap().is_none(),
            "plaintext by default"
        );
        let c = ScyllaConfig {
            tls_ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        let e = c.tls().unwrap_err().to_string();
        assert!(
            e.contains("scylla.tls_ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let c = ScyllaConfig {
            tls_ca_file: concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            tls_client_cert_file: "c.pem".into(),
            ..Default::default()
        };
        assert!(c.tls().unwrap_err().to_string().contains("go together"));
        let c = ScyllaConfig {
            tls_ca_file: concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            ..Default::default()
        };
        assert!(c.tls().unwrap_err().to_string().contains("no certificate"));
    }

    #[test]
    fn bad_values_are_named() {
        let c = ScyllaConfig {
            keyspace: "bad-name".into(),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("scylla.keyspace")
        );
        let c = ScyllaConfig {
            nodes: vec!["localhost".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("host:port"));
    }
}

/// `[history]`: the history writer (`locus history`) and the track query API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Kafka consumer group.
    #[serde(default = "default_group")]
    pub group: String,
    /// Table of fixes, in `scylla.keyspace`.
    #[serde(default = "default_table")]
    pub table: String,
    /// Keyspace replication, as CQL options. Local: SimpleStrategy; production:
    /// `{ class = "NetworkTopologyStrategy", dc1 = "3" }`.
    #[serde(default = "default_replication")]
    pub replication: std::collections::BTreeMap<String, String>,
    /// Run `locus history migrate` at start.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Hours of fixes in one partition (per tenant and user): bounds partition size even for
    /// a device reporting every second for years.
    #[serde(default = "default_bucket_hours")]
    pub bucket_hours: u32,
    /// How long fixes are kept, days (the table's default TTL).
    #[serde(default = "default_ttl_days")]
    pub ttl_days: u32,
    /// Most records per consumer batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest a consumer batch waits to fill, ms.
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// Consumer batches applied concurrently.
    #[serde(default = "default_max_in_flight_batches")]
    pub max_in_flight_batches: usize,
    /// CQL writes in flight at once (each an unlogged batch within one partition). With many
    /// users each batch holds few rows, so throughput is writes in flight ÷ write latency:
    /// 64 held the local stack's writer near 4,500 fixes/s, 256 past 6,000.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most rows in one unlogged batch: 8 bridge-shaped rows stay under Cassandra's default
    /// `batch_size_warn_threshold_in_kb` (5), which Cassandra 2.1 logs a warning for on every
    /// batch above it (~485 bytes a row as it counts them).
    #[serde(default = "default_rows_per_batch")]
    pub rows_per_batch: usize,
    /// Which rows share an unlogged batch: `replica_set` (rows whose partitions have the
    /// same replicas, node and shard, so the batch is applied where it lands) or `partition`
    /// (rows of one partition only).
    #[serde(default)]
    pub batch_grouping: BatchGrouping,
    /// Default and largest page of the track query.
    #[serde(default = "default_query_limit")]
    pub query_default_limit: usize,
    #[serde(default = "default_query_max_limit")]
    pub query_max_limit: usize,
    /// Longest time range of one track query, days.
    #[serde(default = "default_query_max_range_days")]
    pub query_max_range_days: u32,
}

/// How the history writer puts rows together into unlogged batches (`history.batch_grouping`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BatchGrouping {
    /// Rows whose partitions have the same replica set (every replica's node and shard): the
    /// coordinator it is routed to is a replica of every row, so the batch costs one client
    /// request instead of one per partition. The Spark Cassandra connector's `replica_set`
    /// grouping, for the same reason.
    #[default]
    ReplicaSet,
    /// Rows of one partition only (one mutation per batch).
    Partition,
}

fn default_group() -> String {
    "history".into()
}
fn default_table() -> String {
    "track".into()
}
fn default_replication() -> std::collections::BTreeMap<String, String> {
    [("class", "SimpleStrategy"), ("replication_factor", "1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
fn default_true() -> bool {
    true
}
fn default_bucket_hours() -> u32 {
    24
}
fn default_ttl_days() -> u32 {
    30
}
fn default_max_batch() -> usize {
    2000
}
fn default_max_batch_wait_ms() -> u64 {
    50
}
fn default_max_in_flight_batches() -> usize {
    4
}
fn default_concurrency() -> usize {
    256
}
fn default_rows_per_batch() -> usize {
    8
}
fn default_query_limit() -> usize {
    1000
}
fn default_query_max_limit() -> usize {
    10_000
}
fn default_query_max_range_days() -> u32 {
    31
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            group: default_group(),
            table: default_table(),
            replication: default_replication(),
            migrate_on_start: true,
            bucket_hours: default_bucket_hours(),
            ttl_days: default_ttl_days(),
            max_batch: default_max_batch(),
            max_batch_wait_ms: default_max_batch_wait_ms(),
            max_in_flight_batches: default_max_in_flight_batches(),
            concurrency: default_concurrency(),
            rows_per_batch: default_rows_per_batch(),
            batch_grouping: BatchGrouping::default(),
            query_default_limit: default_query_limit(),
            query_max_limit: default_query_max_limit(),
            query_max_range_days: default_query_max_range_days(),
        }
    }
}

impl HistoryConfig {
    pub fn bucket_ms(&self) -> i64 {
        i64::from(self.bucket_hours) * 3_600_000
    }

    pub fn validate(&self) -> Result<(), ScyllaError> {
        let bad = |m: &str| Err(ScyllaError::Config(m.to_string()));
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 48
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !ident(&self.table) {
            return bad("history.table must be 1-48 letters, digits or underscores");
        }
        if self.group.is_empty() {
            return bad("history.group must not be empty");
        }
        if !self.replication.contains_key("class") {
            return bad(
                "history.replication needs a class (SimpleStrategy or NetworkTopologyStrategy)",
            );
        }
        for (k, v) in &self.replication {
            if !ident(k)
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            {
                return bad("history.replication keys and values must be plain words or numbers");
            }
        }
        if self.bucket_hours == 0 || self.ttl_days == 0 {
            return bad("history.bucket_hours and history.ttl_days must be > 0");
        }
        if self.max_batch == 0
            || self.max_in_flight_batches == 0
            || self.concurrency == 0
            || self.rows_per_batch == 0
        {
            return bad(
                "history.max_batch, max_in_flight_batches, concurrency and rows_per_batch must be > 0",
            );
        }
        if self.query_default_limit == 0 || self.query_default_limit > self.query_max_limit {
            return bad(
                "history.query_default_limit must be between 1 and history.query_max_limit",
            );
        }
        if self.query_max_range_days == 0 {
            return bad("history.query_max_range_days must be > 0");
        }
        Ok(())
    }
}
