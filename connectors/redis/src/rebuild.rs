//! `locus cache rebuild`: refill Redis from the topic's retained window, without a consumer
//! group (so the live `last-position` group is not disturbed). The forward-only update makes
//! this safe to run while the live group keeps writing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use locus_kafka::KafkaConfig;
use locus_kafka::Record;
use locus_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use locus_kafka::rdkafka::message::Message;
use locus_kafka::rdkafka::{Offset, TopicPartitionList};

use crate::{CacheError, CacheSink};

/// Reads `topic` from the beginning up to the end as of the start, applying every fix.
/// Calls `progress(done, total)` about once a second. Returns the records read.
pub async fn rebuild(
    kafka: &KafkaConfig,
    topic: &str,
    sink: &CacheSink,
    progress: impl Fn(u64, u64),
) -> Result<u64, CacheError> {
    let group = format!("locus-cache-rebuild-{}", std::process::id());
    let mut cfg = kafka.consumer_config("cache-rebuild", &group);
    cfg.set("enable.auto.commit", "false");
    let consumer: StreamConsumer = cfg
        .create()
        .map_err(|e| CacheError::Kafka(locus_kafka::KafkaError::Client(e)))?;
    let timeout = Duration::from_millis(kafka.request_timeout_ms);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| CacheError::Kafka(locus_kafka::KafkaError::Client(e)))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(CacheError::Kafka(locus_kafka::KafkaError::MissingTopic(
            topic.to_string(),
        )));
    }
    let mut end: HashMap<i32, i64> = HashMap::new();
    let mut total = 0u64;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| CacheError::Kafka(locus_kafka::KafkaError::Client(e)))?;
        if high > low {
            end.insert(*p, high);
            total += (high - low) as u64;
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))
                .map_err(|e| CacheError::Kafka(locus_kafka::KafkaError::Client(e)))?;
        }
    }
    if end.is_empty() {
        progress(0, 0);
        return Ok(0);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| CacheError::Kafka(locus_kafka::KafkaError::Client(e)))?;
    let mut done = 0u64;
    let mut batch: Vec<Record> = Vec::with_capacity(2000);
    let mut last_report = Instant::now();
    while !end.is_empty() {
        let m = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        let idle = m.is_err();
        if let Ok(Ok(m)) = m {
            let (p, o) = (m.partition(), m.offset());
            batch.push(Record {
                topic: m.topic().to_string(),
                partition: p,
                offset: o,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                timestamp_ms: m.timestamp().to_millis(),
                headers: vec![],
            });
            if end.get(&p).is_some_and(|high| o + 1 >= *high) {
                end.remove(&p);
            }
        }
        if batch.len() >= 2000 || (!batch.is_empty() && (end.is_empty() || idle)) {
            let fixes = sink.decode_batch(&batch).await.map_err(|e| {
                CacheError::Config(format!("registry unavailable during rebuild: {e}"))
            })?;
            sink.apply_fixes(&fixes).await;
            done += batch.len() as u64;
            batch.clear();
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(done, total);
            last_report = Instant::now();
        }
    }
    progress(done, total);
    Ok(done)
}
