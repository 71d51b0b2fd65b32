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

/// Reads `topic` from the beginning until `want(records)` holds or `timeout` passes. `want`
/// is asked again only when records came, so it may keep state (see
/// [`distinct_fixes_at_least`]); a condition that looks at every record each time would cost
/// the square of the records read.
pub fn consume_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut want: impl FnMut(&[Record]) -> bool,
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
    let mut done = want(&out);
    while !done && Instant::now() < deadline {
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
            done = want(&out);
        }
    }
    out
}

/// The identity of the fix in a locations record: user, device, sequence.
pub fn fix_identity(r: &Record) -> (String, String, i64) {
    let f = locus_schemas::wire::read_fix(&r.value[5..]).expect("every record decodes");
    (f.user_id, f.device_id, f.seq)
}

/// A [`consume_until`] condition: at least `n` distinct fixes (a fix written twice after a
/// redelivery counts once). Each record is decoded once, when it first arrives.
pub fn distinct_fixes_at_least(n: usize) -> impl FnMut(&[Record]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut read = 0;
    move |records| {
        for r in &records[read..] {
            seen.insert(fix_identity(r));
        }
        read = records.len();
        seen.len() >= n
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

/// Why fixes are missing from `records` (what a test read of `topic`): for each partition
/// that holds a missing fix's user, what the test read of it against the broker's
/// watermarks now, whether a fresh read of the whole topic finds the missing fixes, and how
/// many records the DLQ holds. Called only when a test is about to fail.
pub fn explain_missing(s: &Scope, records: &[Record], missing: &[(String, String, i64)]) -> String {
    let mut partitions: std::collections::BTreeMap<i32, (usize, i64)> = Default::default();
    let mut of_user: HashMap<Vec<u8>, i32> = HashMap::new();
    for r in records {
        let e = partitions.entry(r.partition).or_insert((0, -1));
        e.0 += 1;
        e.1 = e.1.max(r.offset);
        of_user.insert(r.key.clone(), r.partition);
    }
    let consumer: BaseConsumer = s
        .kafka()
        .consumer_config("test", &unique("test-"))
        .create()
        .unwrap();
    let marks: HashMap<i32, _> = partitions
        .keys()
        .map(|p| {
            let m = consumer.fetch_watermarks(&s.locations, *p, Duration::from_secs(10));
            (*p, m)
        })
        .collect();
    let mut out = String::new();
    let suspects: std::collections::BTreeSet<i32> = missing
        .iter()
        .filter_map(|(user, _, _)| of_user.get(user.as_bytes()).copied())
        .collect();
    for p in &suspects {
        let (n, max) = partitions[p];
        out += &format!(
            "partition {p}: the test read {n} records up to offset {max}; watermarks now {:?}\n",
            marks[p]
        );
    }
    let end: i64 = marks
        .values()
        .filter_map(|m| m.as_ref().ok().map(|(low, high)| high - low))
        .sum();
    let want: std::collections::BTreeSet<_> = missing.iter().cloned().collect();
    let again = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        r.len() as i64 >= end
    });
    let found = again
        .iter()
        .map(fix_identity)
        .filter(|f| want.contains(f))
        .count();
    out += &format!(
        "a fresh read found {} records ({} before), {found} of {} missing fixes among them\n",
        again.len(),
        records.len(),
        want.len()
    );
    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(5), |_| false);
    out += &format!("the DLQ holds {} records\n", dlq.len());
    for r in dlq.iter().take(3) {
        out += &format!("  DLQ: {:?}\n", r.headers);
    }
    out
}
