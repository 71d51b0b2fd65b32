//! Reading a topic whole, and producing fixes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use locus_kafka::KafkaConfig;
use locus_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use locus_kafka::rdkafka::message::{Headers, Message};
use locus_kafka::rdkafka::{Offset, TopicPartitionList};

use super::*;

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

    /// Sends every fix as the bridge does (key = user, the tenant header) and waits for
    /// every delivery.
    pub async fn send(&self, fixes: &[locus_schemas::LocationFix]) {
        let mut pending = vec![];
        for f in fixes {
            let bytes = self.codec.encode(f).await.unwrap();
            let headers = [(locus_schemas::TENANT_HEADER, f.tenant.as_bytes())];
            pending.push(
                self.producer
                    .send(&self.topic, f.user_id.as_bytes(), &bytes, &headers)
                    .await
                    .unwrap(),
            );
        }
        for d in pending {
            d.delivered().await.unwrap();
        }
    }
}
