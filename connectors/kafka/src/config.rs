use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::KafkaError;

/// `[kafka]`: how every stage reaches Kafka.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Client id prefix; each stage appends its name.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Longest a broker may hold a fetch when no data is ready, ms (librdkafka
    /// `fetch.wait.max.ms`). Brokers answer as soon as data arrives, so this does not add
    /// latency; a longer wait means fewer idle fetches.
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u32,
    /// Most bytes one fetch returns (librdkafka `fetch.max.bytes`; per partition at most
    /// 1 MiB). Smaller answers come back sooner from brokers that read them record by record.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: u32,
    /// `fetch_max_bytes` of bounded reads (`locus replay`, `locus cache rebuild`): they read
    /// backlogs, where fewer, bigger answers read faster (each fetch is a round trip the
    /// broker and the client take turns on). Default librdkafka's own, 52428800.
    #[serde(default = "default_range_fetch_max_bytes")]
    pub range_fetch_max_bytes: u32,
    /// Consumers a `locus replay` command (export, sink, topic) reads a window of 100,000
    /// records or more with, each a share of the partitions. A consumer has one fetch in
    /// flight per broker; with two, one consumer's fetch is in flight while the other's
    /// records are decoded (`locus replay export` of 1 M fixes: 2.23 → 2.11 s,
    /// loadtest/RESULTS.md). 1..=8. The services' reads (push resume, HTTP replay) and
    /// `locus cache rebuild` use one.
    #[serde(default = "default_range_readers")]
    pub range_readers: u32,
    /// How long a partition's next fetch waits once the consumer's queue holds more than
    /// librdkafka's `queued.min.messages` (100,000), ms (`fetch.queue.backoff.ms`). The queue
    /// of an assigned or subscribed consumer is shared by its partitions, so one fetch of a
    /// backlog of ~120 B records passes that, and librdkafka's default of 1,000 ms idles a
    /// catching-up stage or a replay most of each second (loadtest/RESULTS.md, 2026-12-01).
    #[serde(default = "default_fetch_queue_backoff_ms")]
    pub fetch_queue_backoff_ms: u32,
    /// Timeout of admin and metadata requests, ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Producer tuning.
    #[serde(default)]
    pub producer: ProducerSettings,
    /// Extra librdkafka properties passed through verbatim (security.protocol, sasl.*, ...).
    /// Values of keys containing "password" or "secret" are redacted by `config check`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[kafka.producer]`. The producer is always idempotent with acks=all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProducerSettings {
    /// How long to wait to fill a batch, ms (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Give up delivering a record after this long, ms (`message.timeout.ms`); 0 = retry
    /// forever. Locus retries forever: an undelivered fix is never acknowledged upstream.
    #[serde(default)]
    pub message_timeout_ms: u32,
    /// Records buffered in the producer before `send` applies back-pressure.
    #[serde(default = "default_queue_max_messages")]
    pub queue_max_messages: u32,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_client_id() -> String {
    "locus".into()
}
fn default_fetch_wait_max_ms() -> u32 {
    500
}
fn default_fetch_max_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_range_fetch_max_bytes() -> u32 {
    50 * 1024 * 1024
}
fn default_range_readers() -> u32 {
    2
}
fn default_fetch_queue_backoff_ms() -> u32 {
    10
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_linger_ms() -> u32 {
    5
}
fn default_compression() -> String {
    "lz4".into()
}
fn default_queue_max_messages() -> u32 {
    100_000
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            linger_ms: default_linger_ms(),
            compression: default_compression(),
            message_timeout_ms: 0,
            queue_max_messages: default_queue_max_messages(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            client_id: default_client_id(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
            fetch_max_bytes: default_fetch_max_bytes(),
            range_fetch_max_bytes: default_range_fetch_max_bytes(),
            range_readers: default_range_readers(),
            fetch_queue_backoff_ms: default_fetch_queue_backoff_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            producer: ProducerSettings::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// librdkafka properties that Locus sets itself; overriding them would break a guarantee.
/// librdkafka properties Locus sets for its guarantees, with their aliases (librdkafka takes
/// `request.required.acks` for `acks`, `metadata.broker.list` for `bootstrap.servers`, and a
/// `topic.` prefix for topic-level ones), so none can be overridden under another name.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "topic.acks",
    "topic.request.required.acks",
    "enable.auto.offset.store",
    "topic.enable.auto.offset.store",
    "enable.auto.commit",
    "auto.offset.reset",
    "topic.auto.offset.reset",
    "partitioner",
    "topic.partitioner",
    // Each stage's consumer group and its cooperative rebalancing.
    "group.id",
    "partition.assignment.strategy",
];

/// librdkafka properties set from a typed setting, which would win over a property of the same
/// name: refused, naming the setting, instead of ignored.
const TYPED: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", "fetch_wait_max_ms"),
    ("fetch.max.bytes", "fetch_max_bytes"),
    ("fetch.queue.backoff.ms", "fetch_queue_backoff_ms"),
    ("max.partition.fetch.bytes", "fetch_max_bytes"),
];

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), KafkaError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaError::Config("kafka.brokers must not be empty".into()));
        }
        for b in self.brokers.split(',') {
            if !b.trim().contains(':') {
                return Err(KafkaError::Config(format!(
                    "kafka.brokers entry '{}' must be host:port",
                    b.trim()
                )));
            }
        }
        match self.producer.compression.as_str() {
            "none" | "gzip" | "snappy" | "lz4" | "zstd" => {}
            other => {
                return Err(KafkaError::Config(format!(
                    "kafka.producer.compression '{other}' is not one of none, gzip, snappy, lz4, zstd"
                )));
            }
        }
        if self.fetch_max_bytes < 65_536 || self.range_fetch_max_bytes < 65_536 {
            return Err(KafkaError::Config(
                "kafka.fetch_max_bytes and range_fetch_max_bytes must be at least 65536".into(),
            ));
        }
        self.check_fetch_sizes()?;
        if !(1..=8).contains(&self.range_readers) {
            return Err(KafkaError::Config(
                "kafka.range_readers must be between 1 and 8".into(),
            ));
        }
        if self.fetch_wait_max_ms == 0 {
            return Err(KafkaError::Config(
                "kafka.fetch_wait_max_ms must be > 0".into(),
            ));
        }
        if self.fetch_queue_backoff_ms > 300_000 {
            return Err(KafkaError::Config(
                "kafka.fetch_queue_backoff_ms must be at most 300000".into(),
            ));
        }
        if self.producer.queue_max_messages == 0 {
            return Err(KafkaError::Config(
                "kafka.producer.queue_max_messages must be > 0".into(),
            ));
        }
        for key in self.properties.keys() {
            if let Some((_, field)) = TYPED
                .iter()
                .find(|(name, _)| key.trim().eq_ignore_ascii_case(name))
            {
                return Err(KafkaError::Config(format!(
                    "kafka.properties.{key}: set kafka.{field} instead"
                )));
            }
            if RESERVED.contains(&key.trim().to_ascii_lowercase().as_str()) {
                return Err(KafkaError::Config(format!(
                    "kafka.properties.{key} is set by Locus itself and cannot be overridden"
                )));
            }
        }
        Ok(())
    }

    /// librdkafka refuses to create a consumer whose `fetch.max.bytes` is below
    /// `message.max.bytes` (default 1000000), or whose explicitly set
    /// `receive.message.max.bytes` is below `fetch.max.bytes` + 512. Both fetch sizes are
    /// checked here, at start-up, instead of failing later in whichever command reads.
    fn check_fetch_sizes(&self) -> Result<(), KafkaError> {
        let number = |key: &str| -> Result<Option<u64>, KafkaError> {
            let Some((k, v)) = self
                .properties
                .iter()
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            else {
                return Ok(None);
            };
            v.trim().parse().map(Some).map_err(|_| {
                KafkaError::Config(format!("kafka.properties.{k} must be a number, not '{v}'"))
            })
        };
        let message_max = number("message.max.bytes")?.unwrap_or(1_000_000);
        let receive_max = number("receive.message.max.bytes")?;
        for (field, value) in [
            ("fetch_max_bytes", self.fetch_max_bytes),
            ("range_fetch_max_bytes", self.range_fetch_max_bytes),
        ] {
            if u64::from(value) < message_max {
                return Err(KafkaError::Config(format!(
                    "kafka.{field} ({value}) must be at least message.max.bytes ({message_max})"
                )));
            }
            if let Some(receive_max) = receive_max
                && receive_max < u64::from(value) + 512
            {
                return Err(KafkaError::Config(format!(
                    "kafka.properties.receive.message.max.bytes ({receive_max}) must be at least kafka.{field} + 512 ({})",
                    u64::from(value) + 512
                )));
            }
        }
        Ok(())
    }

    /// Settings every client shares: brokers, client id, pass-through properties.
    pub fn client_config(&self, stage: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{stage}", self.client_id));
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// An idempotent, acks=all producer with Java-compatible key partitioning.
    pub fn producer_config(&self, stage: &str) -> ClientConfig {
        let p = &self.producer;
        let mut c = self.client_config(stage);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // murmur2 like the Java client, so every client puts a user on the same partition.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", p.linger_ms.to_string())
            .set("compression.type", &p.compression)
            .set("message.timeout.ms", p.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                p.queue_max_messages.to_string(),
            );
        c
    }

    /// A consumer that stores offsets only when told to (at-least-once).
    pub fn consumer_config(&self, stage: &str, group: &str) -> ClientConfig {
        let mut c = self.client_config(stage);
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("fetch.max.bytes", self.fetch_max_bytes.to_string())
            .set(
                "fetch.queue.backoff.ms",
                self.fetch_queue_backoff_ms.to_string(),
            )
            .set(
                "max.partition.fetch.bytes",
                self.fetch_max_bytes.min(1024 * 1024).to_string(),
            )
            .set("partition.assignment.strategy", "cooperative-sticky");
        c
    }

    /// The config as `locus config check` prints it: secrets in pass-through properties redacted.
    pub fn redacted(&self) -> KafkaConfig {
        let mut c = self.clone();
        for (k, v) in c.properties.iter_mut() {
            if k.contains("password") || k.contains("secret") || k.contains("key.pem") {
                *v = "***".into();
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Production clusters (Strimzi's TLS listener, MSK, Confluent Cloud) need TLS and SASL:
    /// librdkafka must be built with them, or the client refuses the config at start-up.
    #[test]
    fn tls_and_sasl_scram_are_supported() {
        let mut c = KafkaConfig::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "locus-bridge"),
            ("sasl.password", "secret"),
        ] {
            c.properties.insert(k.into(), v.into());
        }
        c.validate().unwrap();
        let producer: Result<rdkafka::producer::BaseProducer, _> =
            c.producer_config("bridge").create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn reserved_properties_are_refused_under_their_aliases_too() {
        for key in [
            "request.required.acks",
            "metadata.broker.list",
            "topic.acks",
            "ACKS",
        ] {
            let mut c = KafkaConfig::default();
            c.properties.insert(key.into(), "1".into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("cannot be overridden"), "{key}: {e}");
        }
    }

    #[test]
    fn reserved_properties_are_refused() {
        let mut c = KafkaConfig::default();
        c.properties.insert("acks".into(), "1".into());
        let e = c.validate().unwrap_err().to_string();
        for key in ["group.id", "partition.assignment.strategy"] {
            let mut c = KafkaConfig::default();
            c.properties.insert(key.into(), "x".into());
            assert!(c.validate().is_err(), "{key}");
        }
        assert!(e.contains("kafka.properties.acks"), "{e}");
    }

    /// A property shadowed by a typed setting would be ignored: it is refused, naming the
    /// setting; the backoff is within librdkafka's range and reaches every consumer.
    #[test]
    fn fetch_settings_are_typed_and_checked() {
        for (key, field) in [
            ("fetch.queue.backoff.ms", "fetch_queue_backoff_ms"),
            ("FETCH.MAX.BYTES", "fetch_max_bytes"),
            ("fetch.wait.max.ms", "fetch_wait_max_ms"),
            ("max.partition.fetch.bytes", "fetch_max_bytes"),
        ] {
            let mut c = KafkaConfig::default();
            c.properties.insert(key.into(), "10".into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("kafka.{field}")), "{e}");
        }
        let mut c = KafkaConfig {
            fetch_queue_backoff_ms: 300_001,
            ..KafkaConfig::default()
        };
        assert!(c.validate().is_err());
        c.fetch_queue_backoff_ms = 25;
        c.validate().unwrap();
        let consumer = c.consumer_config("history", "g");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("25"));
        for (readers, ok) in [(0, false), (1, true), (8, true), (9, false)] {
            c.range_readers = readers;
            assert_eq!(c.validate().is_ok(), ok, "range_readers {readers}");
        }
    }

    /// What librdkafka would refuse when a consumer is created is refused by `validate`, for
    /// both fetch sizes; what it takes, `validate` takes.
    #[test]
    fn fetch_sizes_agree_with_the_message_limits() {
        let consumer = |c: &KafkaConfig, max: u32| {
            let mut cc = c.consumer_config("test", "g");
            cc.set("fetch.max.bytes", max.to_string());
            cc.create::<rdkafka::consumer::BaseConsumer>().is_ok()
        };
        for (key, value, field) in [
            (
                "receive.message.max.bytes",
                "10000000",
                "range_fetch_max_bytes",
            ),
            ("message.max.bytes", "60000000", "fetch_max_bytes"),
        ] {
            let mut c = KafkaConfig::default();
            c.properties.insert(key.into(), value.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{key}: {e}");
            assert!(!consumer(&c, c.range_fetch_max_bytes), "librdkafka agrees");
        }
        let mut c = KafkaConfig {
            range_fetch_max_bytes: 500_000,
            ..KafkaConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("message.max.bytes")
        );
        assert!(!consumer(&c, c.range_fetch_max_bytes));
        c.range_fetch_max_bytes = 1_000_000;
        c.properties
            .insert("receive.message.max.bytes".into(), "9000000".into());
        c.validate().unwrap();
        assert!(consumer(&c, c.fetch_max_bytes) && consumer(&c, c.range_fetch_max_bytes));
        c.properties
            .insert("receive.message.max.bytes".into(), "lots".into());
        assert!(c.validate().unwrap_err().to_string().contains("number"));
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = KafkaConfig::default();
        c.properties
            .insert("sasl.password".into(), "hunter2".into());
        assert_eq!(c.redacted().properties["sasl.password"], "***");
    }

    #[test]
    fn producer_keeps_the_guarantees() {
        let c = KafkaConfig::default().producer_config("bridge");
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
    }
}
