//! Bounded reads of a topic outside any consumer group: the cache rebuild (whole retained
//! log), a push resume (from event-id positions) and `locus replay` (a window of time) all
//! read this way. Partitions are assigned, never subscribed, and nothing is committed, so
//! the live groups are not disturbed.
//!
//! Where a read stops is fixed when it opens (the end offsets captured then, or the offsets
//! of a timestamp), so a read of a busy topic ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaConfig, KafkaError, Record};

/// Where each partition's read starts.
#[derive(Debug, Clone)]
pub enum StartAt {
    /// The oldest retained record.
    Beginning,
    /// These offsets (partitions not named are not read).
    Offsets(Vec<(i32, i64)>),
    /// The first record whose Kafka timestamp is at or after this time (ms).
    Time(i64),
}

/// Where each partition's read stops (exclusive).
#[derive(Debug, Clone)]
pub enum StopAt {
    /// The end of the log as it was when the read opened.
    End,
    /// These offsets (never past the end captured at open).
    Offsets(Vec<(i32, i64)>),
    /// The first record whose Kafka timestamp is at or after this time (ms); the end of the
    /// log if there is none yet.
    Time(i64),
}

/// One partition's planned read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    /// Oldest retained offset when the read opened.
    pub low: i64,
    /// End of the log when the read opened.
    pub high: i64,
    /// First offset asked for (may be below `low`: see [`PartitionRange::lost`]).
    pub start: i64,
    /// First offset not read.
    pub end: i64,
}

impl PartitionRange {
    /// Records asked for that retention already deleted.
    pub fn lost(&self) -> i64 {
        (self.low.min(self.end) - self.start).max(0)
    }

    /// Records this partition's read returns at most.
    pub fn len(&self) -> i64 {
        (self.end - self.start.max(self.low)).max(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a read has done so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Records returned.
    pub records: u64,
    /// Key, value and header bytes returned.
    pub bytes: u64,
    /// Records the plan holds at most (the sum of the ranges).
    pub total: u64,
    /// Next offset per partition still being read.
    pub positions: Vec<(i32, i64)>,
}

/// Reads a planned range of one topic in batches; `next_batch` returns `None` at the end.
pub struct RangeReader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    ranges: Vec<PartitionRange>,
    /// Next offset of each partition not yet finished.
    next: HashMap<i32, i64>,
    ends: HashMap<i32, i64>,
    idle: Duration,
    progress: Progress,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("topic", &self.topic)
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

impl RangeReader {
    /// Plans the read (metadata, watermarks, offsets for times) and assigns the partitions
    /// that have anything to read. `stage` names the client (`client.id` suffix).
    pub async fn open(
        kafka: &KafkaConfig,
        stage: &str,
        topic: &str,
        start: StartAt,
        stop: StopAt,
    ) -> Result<RangeReader, KafkaError> {
        let mut cfg = kafka.consumer_config(stage, &format!("{}-{stage}", kafka.client_id));
        // A bulk read: larger fetches per partition than the live consumers' (fewer round
        // trips), within the fetch size the config allows overall.
        cfg.set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "max.partition.fetch.bytes",
                kafka.fetch_max_bytes.min(8 << 20).to_string(),
            );
        let consumer: Arc<StreamConsumer> = Arc::new(cfg.create().map_err(KafkaError::Client)?);
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let ranges = {
            let (consumer, topic) = (consumer.clone(), topic.to_string());
            tokio::task::spawn_blocking(move || plan(&consumer, &topic, &start, &stop, timeout))
                .await
                .map_err(|e| KafkaError::Join(e.to_string()))??
        };
        let mut tpl = TopicPartitionList::new();
        let (mut next, mut ends) = (HashMap::new(), HashMap::new());
        let mut total = 0u64;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            let from = r.start.max(r.low);
            tpl.add_partition_offset(topic, r.partition, Offset::Offset(from))
                .map_err(KafkaError::Client)?;
            next.insert(r.partition, from);
            ends.insert(r.partition, r.end);
            total += r.len() as u64;
        }
        if !next.is_empty() {
            consumer.assign(&tpl).map_err(KafkaError::Client)?;
        }
        let progress = Progress {
            total,
            ..Progress::default()
        };
        Ok(RangeReader {
            consumer,
            topic: topic.to_string(),
            ranges,
            next,
            ends,
            idle: Duration::from_secs(30),
            progress,
        })
    }

    /// The plan: every partition of the topic, read or not.
    pub fn ranges(&self) -> &[PartitionRange] {
        &self.ranges
    }

    /// How long `next_batch` waits for a record before it calls the read stalled.
    pub fn with_idle_timeout(mut self, idle: Duration) -> RangeReader {
        self.idle = idle;
        self
    }

    pub fn progress(&self) -> Progress {
        let mut p = self.progress.clone();
        p.positions = self.next.iter().map(|(p, o)| (*p, *o)).collect();
        p.positions.sort_unstable();
        p
    }

    /// Up to `max` records, in offset order per partition; `None` once every partition
    /// reached its end. A batch is returned early when no record arrives for 100 ms.
    pub async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<Record>>, KafkaError> {
        if self.next.is_empty() {
            return Ok(None);
        }
        let mut batch = Vec::with_capacity(max.min(4096));
        let mut waited = Duration::ZERO;
        while batch.len() < max && !self.next.is_empty() {
            let wait = if batch.is_empty() {
                Duration::from_millis(500)
            } else {
                Duration::from_millis(100)
            };
            // What librdkafka already fetched is taken without a timer; only an empty queue
            // is waited on.
            let ready = futures::FutureExt::now_or_never(self.consumer.recv());
            let m = match ready.map(Ok).unwrap_or(Err(())) {
                Ok(r) => Ok(r),
                Err(()) => tokio::time::timeout(wait, self.consumer.recv()).await,
            };
            let m = match m {
                Err(_) if !batch.is_empty() => break,
                Err(_) => {
                    waited += wait;
                    if waited.as_millis() % 2000 < wait.as_millis() {
                        // Nothing for a while: a partition may have nothing more to give
                        // (retention deleted the rest of its range and the consumer moved past
                        // the end, or the last offsets are not records).
                        self.finish_passed();
                        if self.next.is_empty() {
                            break;
                        }
                    }
                    if waited >= self.idle {
                        return Err(KafkaError::Stalled {
                            topic: self.topic.clone(),
                            idle: self.idle,
                            positions: self.progress().positions,
                        });
                    }
                    continue;
                }
                Ok(Err(e)) => return Err(KafkaError::Read(e)),
                Ok(Ok(m)) => m,
            };
            waited = Duration::ZERO;
            let r = Record::from_message(&m);
            drop(m);
            let Some(next) = self.next.get_mut(&r.partition) else {
                continue; // finished already
            };
            let end = self.ends[&r.partition];
            if r.offset < *next {
                continue; // a duplicate delivery after a seek
            }
            *next = r.offset + 1;
            if *next >= end {
                self.finish(r.partition);
            }
            if r.offset >= end {
                continue;
            }
            self.progress.records += 1;
            self.progress.bytes += r.size() as u64;
            batch.push(r);
        }
        Ok(Some(batch))
    }

    /// Finishes the partitions whose consumer position is at or past their end.
    fn finish_passed(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let done: Vec<i32> = self
            .next
            .keys()
            .copied()
            .filter(|p| {
                matches!(
                    positions.find_partition(&self.topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= self.ends[p]
                )
            })
            .collect();
        for p in done {
            self.finish(p);
        }
    }

    fn finish(&mut self, partition: i32) {
        self.next.remove(&partition);
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition(&self.topic, partition)
            .set_offset(Offset::Invalid)
            .is_ok()
        {
            // Stop fetching what is not needed; a failure only costs reading ahead.
            let _ = self.consumer.pause(&tpl);
        }
    }
}

/// The plan for every partition of `topic`.
fn plan(
    consumer: &StreamConsumer,
    topic: &str,
    start: &StartAt,
    stop: &StopAt,
    timeout: Duration,
) -> Result<Vec<PartitionRange>, KafkaError> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(KafkaError::Client)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(KafkaError::MissingTopic(topic.to_string()));
    }
    let mut ranges = Vec::with_capacity(partitions.len());
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(KafkaError::Client)?;
        ranges.push(PartitionRange {
            partition: *p,
            low,
            high,
            start: low,
            end: high,
        });
    }
    let named = |list: &[(i32, i64)], p: i32| list.iter().find(|(q, _)| *q == p).map(|x| x.1);
    let start_times = match start {
        StartAt::Time(t) => Some(offsets_for_time(consumer, topic, &ranges, *t, timeout)?),
        _ => None,
    };
    let stop_times = match stop {
        StopAt::Time(t) => Some(offsets_for_time(consumer, topic, &ranges, *t, timeout)?),
        _ => None,
    };
    for (i, r) in ranges.iter_mut().enumerate() {
        r.start = match start {
            StartAt::Beginning => r.low,
            // A partition not named starts at the end: nothing to read.
            StartAt::Offsets(list) => named(list, r.partition).unwrap_or(r.high),
            StartAt::Time(_) => start_times.as_ref().map_or(r.low, |s| s[i]),
        };
        r.end = match stop {
            StopAt::End => r.high,
            StopAt::Offsets(list) => named(list, r.partition).unwrap_or(r.high).min(r.high),
            StopAt::Time(_) => stop_times.as_ref().map_or(r.high, |s| s[i]),
        };
    }
    Ok(ranges)
}

/// Per range, the first offset at or after time `t` (ms); the end of the log if none.
fn offsets_for_time(
    consumer: &StreamConsumer,
    topic: &str,
    ranges: &[PartitionRange],
    t: i64,
    timeout: Duration,
) -> Result<Vec<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for r in ranges {
        tpl.add_partition_offset(topic, r.partition, Offset::Offset(t.max(0)))
            .map_err(KafkaError::Client)?;
    }
    let found = consumer
        .offsets_for_times(tpl, timeout)
        .map_err(KafkaError::Client)?;
    ranges
        .iter()
        .map(|r| {
            let e = found
                .find_partition(topic, r.partition)
                .ok_or_else(|| KafkaError::MissingTopic(topic.to_string()))?;
            if let Err(err) = e.error() {
                return Err(KafkaError::Client(err));
            }
            Ok(match e.offset() {
                Offset::Offset(o) => o.clamp(r.low, r.high),
                // No record at or after t: the end of the log.
                _ => r.high,
            })
        })
        .collect()
}
