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
        Ok(())
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
