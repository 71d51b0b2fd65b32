use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TopicsError;

/// The whole `topics.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    pub topics: Vec<TopicSpec>,
}

/// One declared topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
    pub min_insync_replicas: u16,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: i64,
    /// `cleanup.policy`: `delete`, `compact` or `compact,delete`.
    pub cleanup_policy: String,
    /// `compression.type`: `producer`, `uncompressed`, `gzip`, `snappy`, `lz4`, `zstd`.
    pub compression: String,
    /// Any other topic-level config, verbatim.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// Topic-level configs this spec declares, as Kafka names them. `max_rf` caps
    /// min.insync.replicas the same way the replication factor is capped.
    pub fn configs(&self, max_rf: Option<u16>) -> BTreeMap<String, String> {
        let mut c = self.config.clone();
        c.insert("retention.ms".into(), self.retention_ms.to_string());
        c.insert("cleanup.policy".into(), self.cleanup_policy.clone());
        c.insert("compression.type".into(), self.compression.clone());
        let isr = max_rf.map_or(self.min_insync_replicas, |m| {
            self.min_insync_replicas.min(m)
        });
        c.insert("min.insync.replicas".into(), isr.to_string());
        c
    }

    pub fn effective_replication_factor(&self, max_rf: Option<u16>) -> u16 {
        max_rf.map_or(self.replication_factor, |m| self.replication_factor.min(m))
    }

    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if n.is_empty() || n.len() > 249 || !n.chars().all(legal) || n == "." || n == ".." {
            return Err(format!("topic name '{n}' is not a legal Kafka topic name"));
        }
        if self.partitions == 0 {
            return Err(format!("{n}: partitions must be >= 1"));
        }
        if self.replication_factor == 0 {
            return Err(format!("{n}: replication_factor must be >= 1"));
        }
        if self.min_insync_replicas == 0 || self.min_insync_replicas > self.replication_factor {
            return Err(format!(
                "{n}: min_insync_replicas must be between 1 and replication_factor ({})",
                self.replication_factor
            ));
        }
        if self.retention_ms < -1 || self.retention_ms == 0 {
            return Err(format!("{n}: retention_ms must be -1 (forever) or > 0"));
        }
        if !matches!(
            self.cleanup_policy.as_str(),
            "delete" | "compact" | "compact,delete" | "delete,compact"
        ) {
            return Err(format!(
                "{n}: cleanup_policy '{}' is not delete, compact or compact,delete",
                self.cleanup_policy
            ));
        }
        if !matches!(
            self.compression.as_str(),
            "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd"
        ) {
            return Err(format!(
                "{n}: compression '{}' is not producer, uncompressed, gzip, snappy, lz4 or zstd",
                self.compression
            ));
        }
        for k in self.config.keys() {
            if matches!(
                k.as_str(),
                "retention.ms" | "cleanup.policy" | "compression.type" | "min.insync.replicas"
            ) {
                return Err(format!("{n}: set {k} with its own field, not under config"));
            }
        }
        Ok(())
    }
}

impl TopicsFile {
    pub fn parse(text: &str, path: &str) -> Result<TopicsFile, TopicsError> {
        let file: TopicsFile = serde_yaml::from_str(text).map_err(|e| TopicsError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let mut seen = HashSet::new();
        for t in &file.topics {
            t.validate().map_err(|message| TopicsError::Invalid {
                path: path.into(),
                message,
            })?;
            if !seen.insert(&t.name) {
                return Err(TopicsError::Invalid {
                    path: path.into(),
                    message: format!("topic '{}' is declared twice", t.name),
                });
            }
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<TopicsFile, TopicsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopicsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        TopicsFile::parse(&text, &path.display().to_string())
    }

    pub fn get(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// The declarations with no topic over `max` partitions: the shape for a small cluster
    /// (the local stack's single broker, where every partition costs each produce and fetch).
    pub fn with_max_partitions(mut self, max: Option<u32>) -> TopicsFile {
        if let Some(max) = max {
            for t in &mut self.topics {
                t.partitions = t.partitions.min(max);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_valid() {
        let f = TopicsFile::parse(crate::DEFAULT_TOPICS_YAML, "topics.yaml").unwrap();
        assert!(f.get("locations").is_some());
        assert!(f.get("locations.dlq").is_some());
    }

    #[test]
    fn mistakes_are_named() {
        let bad =
            crate::DEFAULT_TOPICS_YAML.replace("cleanup_policy: delete", "cleanup_policy: shred");
        let e = TopicsFile::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("shred"), "{e}");
        let unknown = "topics:\n  - name: a\n    partitionz: 3\n";
        let e = TopicsFile::parse(unknown, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("partitionz"), "{e}");
    }

    #[test]
    fn the_cap_applies_to_rf_and_isr() {
        let f = TopicsFile::parse(crate::DEFAULT_TOPICS_YAML, "topics.yaml").unwrap();
        let t = f.get("locations").unwrap();
        assert_eq!(t.effective_replication_factor(Some(1)), 1);
        assert_eq!(t.configs(Some(1))["min.insync.replicas"], "1");
        assert_eq!(t.configs(None)["min.insync.replicas"], "2");
    }

    #[test]
    fn the_partition_cap_lowers_only_what_is_over_it() {
        let f = TopicsFile::parse(crate::DEFAULT_TOPICS_YAML, "topics.yaml").unwrap();
        let parts = |f: &TopicsFile, n: &str| f.get(n).unwrap().partitions;
        assert_eq!(parts(&f, "locations"), 48);
        let same = f.clone().with_max_partitions(None);
        assert_eq!(same, f);
        let capped = f.clone().with_max_partitions(Some(12));
        assert_eq!(parts(&capped, "locations"), 12);
        assert_eq!(parts(&capped, "locations.dlq"), parts(&f, "locations.dlq"));
        assert_eq!(parts(&capped, "groups"), 1);
        assert_eq!(parts(&f.with_max_partitions(Some(1)), "locations.dlq"), 1);
    }
}
