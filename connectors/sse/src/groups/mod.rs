//! Groups: named sets of a tenant's users. A token may name groups (`groups` claim) instead
//! of listing users, so a manager of 5,000 users carries one name, not 5,000 ids.
//!
//! **Where they live.** In a compacted Kafka topic (`topics.groups`): key `tenant/group`
//! (both ids from the safe set, so the `/` is unambiguous), value `{"users": [...]}`, a
//! tombstone (null value) deletes. Kafka keeps them durable and replicated like the fixes,
//! with no other store to run; compaction keeps the latest value of each group.
//!
//! **How they are read.** Every serving process follows the topic from the beginning and
//! keeps the table in memory ([`Groups::follow`]). The topic has one partition (a group's
//! records must stay on one partition, and the table is small); do not add partitions. Until it has read up to the end offsets
//! it found at start, a token naming groups gets 503 (tokens without groups never wait).
//! A change reaches every process within the fetch latency (milliseconds); it applies to
//! requests and streams opened after it (an open stream keeps the users it was opened with
//! until its token expires).
//!
//! **How they are changed.** `PUT`/`DELETE /v1/tenants/{tenant}/groups/{group}` ([`api`]),
//! with a token of the tenant carrying the scope `groups:write`; the write is produced with
//! acks=all and the answer waits until this process has read it back.

pub mod api;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use locus_kafka::{Backoff, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::M;

/// Longest group name, bytes (as user ids).
pub const MAX_GROUP_LEN: usize = 128;

/// A group's stored value.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    pub users: Vec<String>,
}

/// The key of a group in the topic.
pub fn key(tenant: &str, group: &str) -> String {
    format!("{tenant}/{group}")
}

/// Whether `id` may be a tenant, user or group id: 1..=128 bytes of the safe set.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_GROUP_LEN && id.chars().all(locus_schemas::is_id_char)
}

/// librdkafka reports the end of a partition (asked for: it ends the loading) as an error
/// too; only real errors are logged.
struct EofIsNoError;

impl rdkafka::ClientContext for EofIsNoError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            warn!(%error, reason, "the groups reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofIsNoError {}

/// The groups this process knows, as read from the topic.
#[derive(Debug)]
pub struct Groups {
    topic: String,
    table: RwLock<HashMap<String, Arc<HashSet<String>>>>,
    /// Next offset to read, per partition.
    applied: Mutex<HashMap<i32, i64>>,
    changed: Notify,
    loaded: AtomicBool,
}

impl Groups {
    pub fn new(topic: &str) -> Arc<Groups> {
        Arc::new(Groups {
            topic: topic.to_string(),
            table: RwLock::default(),
            applied: Mutex::default(),
            changed: Notify::new(),
            loaded: AtomicBool::new(false),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// True once the table holds everything the topic held when this process started.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The users of `tenant`'s `group`, if it exists.
    pub fn members(&self, tenant: &str, group: &str) -> Option<Arc<HashSet<String>>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.get(&key(tenant, group)).cloned()
    }

    /// `tenant`'s groups with their sizes, by name.
    pub fn list(&self, tenant: &str) -> Vec<(String, usize)> {
        let prefix = format!("{tenant}/");
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, usize)> = table
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.len())))
            .collect();
        out.sort();
        out
    }

    /// Applies one record of the topic (read at `offset` of `partition`). A record without a
    /// `tenant/group` key is skipped with a warning; one whose value is not a group deletes
    /// that group (a change this process cannot read must not leave the old, possibly wider,
    /// membership in force).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>, partition: i32, offset: i64) {
        let parsed = key.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| {
            k.split_once('/')
                .is_some_and(|(t, g)| valid_id(t) && valid_id(g))
        });
        let members = match (parsed, value) {
            (None, _) => {
                M.groups_skipped.inc();
                warn!(
                    partition,
                    offset, "a groups record without a tenant/group key; skipped"
                );
                None
            }
            (Some(_), None) => None,
            (Some(k), Some(v)) => match serde_json::from_slice::<Members>(v) {
                Ok(m) => Some(m.users.into_iter().filter(|u| valid_id(u)).collect()),
                Err(error) => {
                    M.groups_skipped.inc();
                    warn!(partition, offset, key = k, %error, "a groups record that is not {{\"users\": [...]}}; the group is removed");
                    None
                }
            },
        };
        if let Some(k) = parsed {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            match members {
                Some(users) => table.insert(k.to_string(), Arc::new(users)),
                None => table.remove(k),
            };
            M.groups.set(table.len() as i64);
        }
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.insert(partition, offset + 1);
        drop(applied);
        self.changed.notify_waiters();
    }

    /// Whether the record at `offset` of `partition` is applied.
    fn is_applied(&self, partition: i32, offset: i64) -> bool {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.get(&partition).is_some_and(|&next| next > offset)
    }

    /// Waits (up to `timeout`) until the record at `offset` of `partition` is applied.
    pub async fn wait_applied(&self, partition: i32, offset: i64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_applied(partition, offset) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Follows the topic until `cancel`: reads it from the beginning into the table, then
    /// every change. A missing topic or an unreachable Kafka is retried with backoff (the
    /// process serves everything but group tokens meanwhile).
    pub async fn follow(self: Arc<Self>, kafka: KafkaConfig, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500));
        loop {
            match self.follow_once(&kafka, &cancel).await {
                Ok(()) => return,
                Err(error) => {
                    warn!(topic = self.topic, %error, retry_in = ?backoff.current(), "cannot follow the groups topic");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.current()) => backoff.grow(),
                    }
                }
            }
        }
    }

    async fn follow_once(
        &self,
        kafka: &KafkaConfig,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let mut cfg = kafka.consumer_config("groups", &format!("{}-groups", kafka.client_id));
        // Assigned, never subscribed: nothing is committed, no group is joined. The end of
        // each partition is reported, so loading ends there even when the last offsets hold
        // no record to read (compacted away, transaction markers).
        cfg.set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let topic = self.topic.clone();
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let (consumer, ends) = tokio::task::spawn_blocking(move || {
            let planner: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
            let md = planner
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| e.to_string())?;
            let partitions = locus_kafka::partitions_of(&md, &topic);
            if partitions.is_empty() {
                return Err(format!(
                    "topic {topic} does not exist (locus topics apply creates it)"
                ));
            }
            let mut tpl = TopicPartitionList::new();
            let mut ends = HashMap::new();
            for p in partitions {
                let (low, high) = planner
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| e.to_string())?;
                if high > low {
                    ends.insert(p, high);
                }
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .map_err(|e| e.to_string())?;
            }
            let consumer: StreamConsumer<EofIsNoError> = cfg
                .create_with_context(EofIsNoError)
                .map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            Ok::<_, String>((consumer, ends))
        })
        .await
        .map_err(|e| e.to_string())??;
        // A fresh read: what was deleted while this process was not reading is gone too.
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Partitions not yet read to the end they had at start.
        let mut loading: HashSet<i32> = ends.keys().copied().collect();
        self.set_loaded(loading.is_empty());
        let mut stream = consumer.stream();
        loop {
            let m = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                m = stream.next() => m,
            };
            match m {
                Some(Ok(m)) => {
                    self.apply(m.key(), m.payload(), m.partition(), m.offset());
                    if ends
                        .get(&m.partition())
                        .is_some_and(|end| m.offset() + 1 >= *end)
                    {
                        loading.remove(&m.partition());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    loading.remove(&p);
                }
                Some(Err(error)) => {
                    warn!(%error, topic = self.topic, "reading the groups topic");
                    continue;
                }
                None => return Err("the groups consumer ended".into()),
            }
            if !self.is_loaded() && loading.is_empty() {
                self.set_loaded(true);
            }
        }
    }

    /// A directory holding `groups` (`(tenant, group, users)`), loaded, following nothing:
    /// for in-process tests of what uses one.
    pub fn preloaded(topic: &str, groups: &[(&str, &str, &[&str])]) -> Arc<Groups> {
        let g = Groups::new(topic);
        for (i, (tenant, group, users)) in groups.iter().enumerate() {
            let v = serde_json::json!({ "users": users }).to_string();
            g.apply(
                Some(key(tenant, group).as_bytes()),
                Some(v.as_bytes()),
                0,
                i as i64,
            );
        }
        g.set_loaded(true);
        g
    }

    #[cfg(test)]
    pub(crate) fn set_loaded_for_test(&self) {
        self.set_loaded(true);
    }

    fn set_loaded(&self, loaded: bool) {
        if loaded && !self.loaded.swap(true, Ordering::AcqRel) {
            let groups = self.table.read().unwrap_or_else(|e| e.into_inner()).len();
            info!(topic = self.topic, groups, "groups loaded");
        }
        if !loaded {
            self.loaded.store(false, Ordering::Release);
        }
        M.groups
            .set(self.table.read().unwrap_or_else(|e| e.into_inner()).len() as i64);
        M.groups_loaded.set(i64::from(loaded));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(g: &Groups, k: &str, users: &[&str], offset: i64) {
        let v = serde_json::json!({ "users": users }).to_string();
        g.apply(Some(k.as_bytes()), Some(v.as_bytes()), 0, offset);
    }

    #[test]
    fn records_become_the_table_and_a_tombstone_deletes() {
        let g = Groups::new("groups");
        put(&g, "acme/north", &["u1", "u2"], 0);
        put(&g, "acme/south", &["u3"], 1);
        put(&g, "other/north", &["x"], 2);
        assert_eq!(g.members("acme", "north").unwrap().len(), 2);
        assert_eq!(
            g.list("acme"),
            [("north".to_string(), 2), ("south".to_string(), 1)]
        );
        // A newer value replaces; a tombstone deletes.
        put(&g, "acme/north", &["u9"], 3);
        assert!(g.members("acme", "north").unwrap().contains("u9"));
        g.apply(Some(b"acme/south"), None, 0, 4);
        assert!(g.members("acme", "south").is_none());
        assert!(
            g.members("other", "north").is_some(),
            "other tenants untouched"
        );
    }

    #[test]
    fn hostile_records_are_skipped_and_cannot_widen_access() {
        let g = Groups::new("groups");
        // No key, a key without a group, ids outside the safe set, a value that is not a group.
        g.apply(None, Some(br#"{"users":["u1"]}"#), 0, 0);
        g.apply(Some(b"acme"), Some(br#"{"users":["u1"]}"#), 0, 1);
        g.apply(Some(b"acme/a/b"), Some(br#"{"users":["u1"]}"#), 0, 2);
        g.apply(Some(b"acme/n"), Some(b"[1,2]"), 0, 3);
        g.apply(
            Some(b"acme/n"),
            Some(br#"{"users":["u1"],"admin":true}"#),
            0,
            4,
        );
        assert!(g.list("acme").is_empty());
        // Members outside the safe set are left out.
        put(&g, "acme/n", &["ok", "<img>", "a:b", ""], 5);
        let m = g.members("acme", "n").unwrap();
        assert_eq!(m.len(), 1);
        assert!(m.contains("ok"));
    }

    #[tokio::test]
    async fn a_writer_waits_until_its_record_is_applied() {
        let g = Groups::new("groups");
        assert!(!g.wait_applied(0, 7, Duration::from_millis(50)).await);
        let g2 = g.clone();
        let waiter =
            tokio::spawn(async move { g2.wait_applied(0, 7, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        put(&g, "acme/n", &["u1"], 6);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "offset 6 is not offset 7");
        put(&g, "acme/n", &["u2"], 7);
        assert!(waiter.await.unwrap());
    }
}
