//! Bounded reads of a topic outside any consumer group: the cache rebuild (whole retained
//! log), a push resume (from event-id positions) and `locus replay` (a window of time) all
//! read this way. Partitions are assigned, never subscribed, and nothing is committed, so
//! the live groups are not disturbed.
//!
//! Where a read stops is fixed when it opens (the end offsets captured then, or the offsets
//! of a timestamp), so a read of a busy topic ends.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

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
///
/// A task of its own reads one long-lived message stream and hands batches over a bounded
/// channel, so reading from Kafka goes on while the caller decodes and writes. (Awaiting
/// `StreamConsumer::recv` under a short timeout, as this reader first did, lost wakeups when
/// the timeout dropped the pending future: reads then stalled for the length of the timeout,
/// 3× slower than a plain consumer. One stream polled across batches keeps its waker.)
/// A read opened with [`RangeReader::open_split`] may use several consumers, a task each, every
/// partition read by one of them. Dropping the reader ends the tasks.
pub struct RangeReader {
    topic: String,
    ranges: Vec<PartitionRange>,
    batches: Option<mpsc::Receiver<Result<Vec<Record>, KafkaError>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// A read that failed or ended stays so.
    done: bool,
    state: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// The assigned consumers and where each of their partitions starts and ends, until the
    /// first `next_batch` starts a reading task for each.
    pending: Option<Vec<Assigned>>,
    readers: usize,
    idle: Duration,
    values_only: bool,
}

/// A consumer assigned to the plan: next offset and end per partition to read.
struct Assigned {
    consumer: StreamConsumer,
    next: HashMap<i32, i64>,
    ends: HashMap<i32, i64>,
}

/// What the reading task reports.
#[derive(Debug, Default)]
struct Shared {
    progress: Progress,
    next: HashMap<i32, i64>,
}

/// Records per batch handed over.
const BATCH: usize = 1024;

/// How many consumers a read uses ([`RangeReader::open_split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Consumers at most (at most one a partition to read).
    pub readers: usize,
    /// Plans smaller than this are read by one consumer.
    pub min_records: u64,
}

impl Split {
    /// One consumer, whatever the plan.
    pub const ONE: Split = Split {
        readers: 1,
        min_records: 0,
    };

    /// A command reading a window of any size: `kafka.range_readers` consumers for a plan of
    /// 100,000 records or more (the extra consumer costs a connection, threads and a fetch
    /// queue: worth it for a backlog of seconds, not for a few records).
    pub fn backlog(kafka: &KafkaConfig) -> Split {
        Split {
            readers: kafka.range_readers as usize,
            min_records: 100_000,
        }
    }
}

/// `ranges` shared among `n` readers: the biggest ranges first, each to the reader with the
/// fewest records so far (ties to the lowest number), so shares are near equal; each share in
/// partition order.
fn shares<'a>(ranges: &[&'a PartitionRange], n: usize) -> Vec<Vec<&'a PartitionRange>> {
    let mut order: Vec<&PartitionRange> = ranges.to_vec();
    order.sort_by_key(|r| (std::cmp::Reverse(r.len()), r.partition));
    let mut load = vec![0i64; n.max(1)];
    let mut shares = vec![Vec::new(); n.max(1)];
    for r in order {
        let to = (0..load.len()).min_by_key(|j| (load[*j], *j)).unwrap_or(0);
        load[to] += r.len();
        shares[to].push(r);
    }
    for s in &mut shares {
        s.sort_by_key(|r| r.partition);
    }
    shares
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("topic", &self.topic)
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RangeReader {
    /// Plans the read (metadata, watermarks, offsets for times) and assigns the partitions
    /// that have anything to read, all to one consumer. `stage` names the client (`client.id`
    /// suffix).
    pub async fn open(
        kafka: &KafkaConfig,
        stage: &str,
        topic: &str,
        start: StartAt,
        stop: StopAt,
    ) -> Result<RangeReader, KafkaError> {
        Self::open_split(kafka, stage, topic, start, stop, Split::ONE).await
    }

    /// [`RangeReader::open`], read by `split.readers` consumers (at most one a partition to
    /// read) when the plan holds at least `split.min_records` records; each consumer reads a
    /// share of the partitions balanced by records. Every partition is still read by one
    /// consumer, in offset order.
    pub async fn open_split(
        kafka: &KafkaConfig,
        stage: &str,
        topic: &str,
        start: StartAt,
        stop: StopAt,
        split: Split,
    ) -> Result<RangeReader, KafkaError> {
        let mut cfg = kafka.consumer_config(stage, &format!("{}-{stage}", kafka.client_id));
        // Assigned, never subscribed: nothing is committed, no group is joined. A backlog is
        // read in big fetches.
        cfg.set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.max.bytes", kafka.range_fetch_max_bytes.to_string());
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let topic_owned = topic.to_string();
        let planner = cfg.clone();
        let (consumer, ranges) = tokio::task::spawn_blocking(move || {
            // The first reader plans: its connection is set up once.
            let consumer: StreamConsumer = planner.create().map_err(KafkaError::Client)?;
            let ranges = plan(&consumer, &topic_owned, &start, &stop, timeout)?;
            Ok::<_, KafkaError>((consumer, ranges))
        })
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))??;
        let to_read: Vec<&PartitionRange> = ranges.iter().filter(|r| !r.is_empty()).collect();
        let total: u64 = to_read.iter().map(|r| r.len() as u64).sum();
        let readers = if total >= split.min_records {
            split.readers.clamp(1, to_read.len().max(1))
        } else {
            1
        };
        let mut consumers = vec![consumer];
        if readers > 1 {
            // Creating a client may block (TLS material is read then): off the async workers.
            let client_id = format!("{}-{stage}", kafka.client_id);
            let more = tokio::task::spawn_blocking(move || {
                (1..readers)
                    .map(|i| {
                        let mut c = cfg.clone();
                        c.set("client.id", format!("{client_id}-{i}"));
                        c.create::<StreamConsumer>().map_err(KafkaError::Client)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| KafkaError::Join(e.to_string()))??;
            consumers.extend(more);
        }
        let mut assigned = Vec::with_capacity(readers);
        let mut next_all = HashMap::new();
        for (consumer, share) in consumers.into_iter().zip(shares(&to_read, readers)) {
            let mut tpl = TopicPartitionList::new();
            let (mut next, mut ends) = (HashMap::new(), HashMap::new());
            for r in share {
                let from = r.start.max(r.low);
                tpl.add_partition_offset(topic, r.partition, Offset::Offset(from))
                    .map_err(KafkaError::Client)?;
                next.insert(r.partition, from);
                ends.insert(r.partition, r.end);
            }
            if !next.is_empty() {
                consumer.assign(&tpl).map_err(KafkaError::Client)?;
            }
            next_all.extend(next.iter().map(|(p, o)| (*p, *o)));
            assigned.push(Assigned {
                consumer,
                next,
                ends,
            });
        }
        let state = Arc::new(Mutex::new(Shared {
            progress: Progress {
                total,
                ..Progress::default()
            },
            next: next_all,
        }));
        Ok(RangeReader {
            topic: topic.to_string(),
            ranges,
            batches: None,
            tasks: Vec::new(),
            done: false,
            state,
            stop: Arc::new(AtomicBool::new(false)),
            pending: Some(assigned),
            readers,
            idle: Duration::from_secs(30),
            values_only: false,
        })
    }

    /// How many consumers read.
    pub fn readers(&self) -> usize {
        self.readers
    }

    /// The plan: every partition of the topic, read or not.
    pub fn ranges(&self) -> &[PartitionRange] {
        &self.ranges
    }

    /// How long the read may get nothing before it is called stalled (default 30 s).
    pub fn with_idle_timeout(mut self, idle: Duration) -> RangeReader {
        self.idle = idle;
        self
    }

    /// Hands over records with their position, timestamp and value only: no key, no headers,
    /// no topic name (for a reader that decodes values and nothing else; `Progress::bytes`
    /// then counts values). Takes effect if called before the first `next_batch`.
    pub fn values_only(&mut self) {
        self.values_only = true;
    }

    pub fn progress(&self) -> Progress {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut p = s.progress.clone();
        p.positions = s.next.iter().map(|(p, o)| (*p, *o)).collect();
        p.positions.sort_unstable();
        p
    }

    /// The next records, in offset order per partition (at most 1,024 at a time); `None` once
    /// every partition reached its end. `_max` is kept for callers that size their work.
    pub async fn next_batch(&mut self, _max: usize) -> Result<Option<Vec<Record>>, KafkaError> {
        if let Some(assigned) = self.pending.take() {
            if assigned.iter().all(|a| a.next.is_empty()) {
                return Ok(None);
            }
            let (tx, rx) = mpsc::channel(8);
            for Assigned {
                consumer,
                next,
                ends,
            } in assigned.into_iter().filter(|a| !a.next.is_empty())
            {
                let failed = tx.clone();
                let poller = Poller {
                    topic: self.topic.clone(),
                    next,
                    ends,
                    idle: self.idle,
                    values_only: self.values_only,
                    state: self.state.clone(),
                    stop: self.stop.clone(),
                    tx: tx.clone(),
                };
                self.tasks.push(tokio::spawn(async move {
                    // A panic is this read's error at once, not when the other tasks end.
                    if AssertUnwindSafe(poller.run(consumer))
                        .catch_unwind()
                        .await
                        .is_err()
                    {
                        let _ = failed
                            .send(Err(KafkaError::Join("a reading task panicked".into())))
                            .await;
                    }
                }));
            }
            self.batches = Some(rx);
        }
        if self.done {
            return Ok(None);
        }
        let Some(rx) = self.batches.as_mut() else {
            return Ok(None);
        };
        match rx.recv().await {
            Some(Ok(batch)) => {
                // Counted as the caller gets them, not as they are read ahead.
                let bytes: usize = batch.iter().map(Record::size).sum();
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                s.progress.records += batch.len() as u64;
                s.progress.bytes += bytes as u64;
                Ok(Some(batch))
            }
            Some(Err(e)) => {
                // One reader failed: the read is over for every reader.
                self.done = true;
                self.stop.store(true, Ordering::Relaxed);
                rx.close();
                for t in &self.tasks {
                    t.abort();
                }
                Err(e)
            }
            None => {
                // Every task ended without an error: every partition reached its end, unless
                // one panicked.
                self.done = true;
                for t in std::mem::take(&mut self.tasks) {
                    if let Err(e) = t.await
                        && e.is_panic()
                    {
                        return Err(KafkaError::Join(e.to_string()));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// A reading task's side: one consumer and its share of the partitions.
struct Poller {
    topic: String,
    /// Next offset of each partition not yet finished.
    next: HashMap<i32, i64>,
    /// End of each partition this task reads (finished ones too).
    ends: HashMap<i32, i64>,
    idle: Duration,
    values_only: bool,
    state: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Result<Vec<Record>, KafkaError>>,
}

impl Poller {
    async fn run(mut self, consumer: StreamConsumer) {
        let mut stream = consumer.stream();
        let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
        let mut idle_since = tokio::time::Instant::now();
        let mut checked = tokio::time::Instant::now();
        while !self.next.is_empty() && !self.stop.load(Ordering::Relaxed) {
            let tick = if batch.is_empty() {
                Duration::from_millis(500)
            } else {
                Duration::from_millis(20)
            };
            let m = tokio::select! {
                biased;
                m = stream.next() => m,
                _ = tokio::time::sleep(tick) => {
                    // Nothing for a moment: hand over what there is.
                    if !batch.is_empty() {
                        if !self.hand_over(&mut batch).await {
                            return;
                        }
                        // Time spent waiting for the caller is not Kafka being idle.
                        idle_since = tokio::time::Instant::now();
                        continue;
                    }
                    if checked.elapsed() >= Duration::from_secs(2) {
                        // Nothing for a while: a partition may have nothing more to give
                        // (retention deleted the rest of its range and the consumer moved
                        // past the end, or its last offsets are not records).
                        self.finish_passed(&consumer);
                        checked = tokio::time::Instant::now();
                        if self.next.is_empty() {
                            continue; // done: the loop ends
                        }
                    }
                    if idle_since.elapsed() >= self.idle {
                        let mut positions: Vec<(i32, i64)> =
                            self.next.iter().map(|(p, o)| (*p, *o)).collect();
                        positions.sort_unstable();
                        let _ = self.tx.send(Err(KafkaError::Stalled {
                            topic: self.topic.clone(),
                            idle: self.idle,
                            positions,
                        })).await;
                        return;
                    }
                    continue;
                }
            };
            // This record and whatever else librdkafka has ready, taken without a timer each.
            let mut m = m;
            loop {
                let m_ok = match m {
                    None => {
                        let _ = self
                            .tx
                            .send(Err(KafkaError::Config(format!(
                                "the consumer of {} stopped before the end of the read",
                                self.topic
                            ))))
                            .await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = self.tx.send(Err(KafkaError::Read(e))).await;
                        return;
                    }
                    Some(Ok(m)) => m,
                };
                let r = if self.values_only {
                    Record::value_of_message(&m_ok)
                } else {
                    Record::from_message(&m_ok)
                };
                drop(m_ok);
                self.take(&consumer, r, &mut batch);
                if batch.len() >= BATCH || self.next.is_empty() {
                    break;
                }
                // Polled with a no-op waker: when nothing is ready, the next turn of the loop
                // polls the stream again with the task's waker (`biased`, first), and the
                // stream checks its queue after storing that waker, so no wake-up is lost.
                match stream.next().now_or_never() {
                    Some(next) => m = next,
                    None => break,
                }
            }
            idle_since = tokio::time::Instant::now();
            if batch.len() >= BATCH {
                if !self.hand_over(&mut batch).await {
                    return;
                }
                idle_since = tokio::time::Instant::now();
            }
        }
        if !batch.is_empty() {
            self.hand_over(&mut batch).await;
        }
        // Dropping the sender ends the read for the caller.
    }

    /// Keeps `r` if it is inside its partition's range; finishes the partition at its end.
    fn take(&mut self, consumer: &StreamConsumer, r: Record, batch: &mut Vec<Record>) {
        let Some(next) = self.next.get_mut(&r.partition) else {
            return; // finished already
        };
        let end = self.ends[&r.partition];
        if r.offset < *next {
            return; // a duplicate delivery after a seek
        }
        *next = r.offset + 1;
        if *next >= end {
            self.finish(consumer, r.partition);
        }
        if r.offset < end {
            batch.push(r);
        }
    }

    /// Publishes progress and sends the batch; `false` if the reader is gone.
    async fn hand_over(&mut self, batch: &mut Vec<Record>) -> bool {
        self.publish_positions();
        let b = std::mem::replace(batch, Vec::with_capacity(BATCH));
        self.tx.send(Ok(b)).await.is_ok()
    }

    fn publish_positions(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for p in self.ends.keys() {
            match self.next.get(p) {
                Some(o) => s.next.insert(*p, *o),
                None => s.next.remove(p),
            };
        }
    }

    /// Finishes the partitions whose consumer position is at or past their end.
    fn finish_passed(&mut self, consumer: &StreamConsumer) {
        let Ok(positions) = consumer.position() else {
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
            self.finish(consumer, p);
        }
    }

    fn finish(&mut self, consumer: &StreamConsumer, partition: i32) {
        self.next.remove(&partition);
        self.publish_positions();
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition(&self.topic, partition)
            .set_offset(Offset::Invalid)
            .is_ok()
        {
            // Stop fetching what is not needed; a failure only costs reading ahead.
            let _ = consumer.pause(&tpl);
        }
    }
}

/// The plan for every partition of `topic`.
fn plan(
    consumer: &impl Consumer,
    topic: &str,
    start: &StartAt,
    stop: &StopAt,
    timeout: Duration,
) -> Result<Vec<PartitionRange>, KafkaError> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(KafkaError::Client)?;
    let partitions = crate::partitions_of(&md, topic);
    if partitions.is_empty() {
        return Err(KafkaError::MissingTopic(topic.to_string()));
    }
    // Both watermarks of every partition in two requests (ListOffsets for the earliest and
    // the latest offset), not two a partition.
    let low = list_offsets(consumer, topic, &partitions, Offset::Beginning, timeout)?;
    let high = list_offsets(consumer, topic, &partitions, Offset::End, timeout)?;
    let mut ranges = Vec::with_capacity(partitions.len());
    for ((p, low), high) in partitions.iter().zip(low).zip(high) {
        let (low, high) = match (low, high) {
            (Some(low), Some(high)) if low <= high => (low, high),
            // A batched ListOffsets answer without an offset, or a low above the high (the two
            // requests are apart; a leader may have moved): ask for this partition alone.
            _ => consumer
                .fetch_watermarks(topic, *p, timeout)
                .map_err(KafkaError::Client)?,
        };
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

/// The offsets ListOffsets gives for `at` (`Beginning`, `End`, or a time) on each partition, in one
/// request; `None` where the answer holds no offset.
fn list_offsets(
    consumer: &impl Consumer,
    topic: &str,
    partitions: &[i32],
    at: Offset,
    timeout: Duration,
) -> Result<Vec<Option<i64>>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, at)
            .map_err(KafkaError::Client)?;
    }
    let found = consumer
        .offsets_for_times(tpl, timeout)
        .map_err(KafkaError::Client)?;
    partitions
        .iter()
        .map(|p| {
            let e = found
                .find_partition(topic, *p)
                .ok_or_else(|| KafkaError::MissingTopic(topic.to_string()))?;
            if let Err(err) = e.error() {
                return Err(KafkaError::Client(err));
            }
            Ok(match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
        .collect()
}

/// Per range, the first offset at or after time `t` (ms); the end of the log if none.
fn offsets_for_time(
    consumer: &impl Consumer,
    topic: &str,
    ranges: &[PartitionRange],
    t: i64,
    timeout: Duration,
) -> Result<Vec<i64>, KafkaError> {
    let partitions: Vec<i32> = ranges.iter().map(|r| r.partition).collect();
    let found = list_offsets(
        consumer,
        topic,
        &partitions,
        Offset::Offset(t.max(0)),
        timeout,
    )?;
    Ok(ranges
        .iter()
        .zip(found)
        // No record at or after t: the end of the log.
        .map(|(r, o)| o.map_or(r.high, |o| o.clamp(r.low, r.high)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, len: i64) -> PartitionRange {
        PartitionRange {
            partition,
            low: 0,
            high: len,
            start: 0,
            end: len,
        }
    }

    /// Every partition goes to exactly one reader, and the shares' sizes differ by at most
    /// the biggest partition.
    #[test]
    fn shares_cover_every_partition_once_and_balance() {
        let ranges: Vec<PartitionRange> = [900, 10, 500, 480, 30, 20, 7, 400, 410, 1]
            .iter()
            .enumerate()
            .map(|(p, n)| range(p as i32, *n))
            .collect();
        let refs: Vec<&PartitionRange> = ranges.iter().collect();
        for n in 1..=4 {
            let shares = shares(&refs, n);
            let mut seen: Vec<i32> = shares.iter().flatten().map(|r| r.partition).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>(), "{n} readers");
            let sizes: Vec<i64> = shares
                .iter()
                .map(|s| s.iter().map(|r| r.len()).sum())
                .collect();
            let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
            assert!(spread <= 900, "{n} readers: {sizes:?}");
            for s in &shares {
                assert!(s.windows(2).all(|w| w[0].partition < w[1].partition));
            }
        }
        // Two readers: 900 + 410 + 30 + 20 + 10 + 7 + 1 against 500 + 480 + 400.
        let two: Vec<i64> = shares(&refs, 2)
            .iter()
            .map(|s| s.iter().map(|r| r.len()).sum())
            .collect();
        assert_eq!(two, vec![1378, 1380]);
    }
}
