//! The at-least-once consumer runner every sink stage shares.
//!
//! Records are read in batches and handed to a [`Sink`]; several batches may be applied
//! concurrently (bounded). An offset is stored only after the sink durably applied the record,
//! and per partition only up to the lowest offset not yet done, so concurrent work never
//! commits past an unfinished record. librdkafka auto-commits stored offsets; on a rebalance
//! and at shutdown the runner commits what is done, synchronously. In-flight work of revoked
//! partitions is dropped: whoever owns the partition next reads it again (a sink's writes
//! are idempotent, so a record applied twice is a no-op).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{KafkaConfig, KafkaError};

/// One record as a sink sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Message timestamp (ms), if the broker or producer set one.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Key, value and header bytes.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The only way to build a record: from what the consumer read.
    pub(crate) fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers,
        }
    }

    /// Position, timestamp and value only (`topic` empty, no key, no headers): one copy a
    /// record instead of one per header, key and topic name.
    pub(crate) fn value_of_message(m: &BorrowedMessage<'_>) -> Record {
        Record {
            topic: String::new(),
            partition: m.partition(),
            offset: m.offset(),
            key: None,
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers: vec![],
        }
    }
}

/// Where records go. `apply` returns only once every record of the batch is durably applied
/// (or durably dead-lettered); it retries transient failures itself (back-pressure: the
/// runner reads no more than `max_in_flight_batches` ahead meanwhile) and returns `Err` only
/// for a failure that must stop the stage.
pub trait Sink: Send + Sync + 'static {
    /// What stops the stage (kept as the source of [`KafkaError::Sink`]).
    type Error: std::error::Error + Send + Sync + 'static;
    fn apply(&self, batch: Vec<Record>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A batch's outcome and the (partition, offset) of each of its records.
type Applied<S> = (Result<(), <S as Sink>::Error>, Vec<(i32, i64)>);

/// How the runner reads.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub group: String,
    pub topic: String,
    /// Most records per batch.
    pub max_batch: usize,
    /// Longest a batch waits to fill, ms.
    pub max_batch_wait_ms: u64,
    /// Batches applied concurrently.
    pub max_in_flight_batches: usize,
}

/// Per partition: offsets handed to the sink and not yet done, and the highest seen.
#[derive(Debug, Default)]
struct Tracker {
    partitions: HashMap<i32, PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    pending: BTreeSet<i64>,
    next: i64,
}

impl Tracker {
    fn started(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Marks `offset` done; returns the offset safe to store (the lowest not yet done),
    /// if it moved.
    fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.pending.remove(&offset) {
            return None; // revoked meanwhile
        }
        Some(p.pending.first().copied().unwrap_or(p.next))
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

struct RunnerContext {
    tracker: Arc<Mutex<Tracker>>,
    group: String,
    stage: String,
    /// The partitions assigned to this consumer now: lag is reported for these only, and a
    /// revoked partition's lag series is removed, so a sum over replicas counts each once.
    assigned: Mutex<BTreeSet<i32>>,
}

impl ClientContext for RunnerContext {
    /// Consumer lag per partition from librdkafka's statistics (computed from the high
    /// watermarks fetch responses carry: no extra requests to the brokers).
    fn stats(&self, stats: rdkafka::Statistics) {
        let assigned = self
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for topic in stats.topics.values() {
            for (p, part) in &topic.partitions {
                if assigned.contains(p) && part.consumer_lag >= 0 {
                    crate::metrics::M
                        .lag
                        .with_label_values(&[self.stage.as_str(), &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RunnerContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is done before the partitions go; drop the rest of their work.
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(%error, "commit before revoke (nothing stored is fine)");
            }
            let mut t = lock(&self.tracker);
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                t.revoke(e.partition());
                assigned.remove(&e.partition());
                let _ = crate::metrics::M
                    .lag
                    .remove_label_values(&[self.stage.as_str(), &e.partition().to_string()]);
            }
            info!(
                group = self.group,
                partitions = tpl.count(),
                "partitions revoked"
            );
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.assigned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(tpl.elements().iter().map(|e| e.partition()));
            info!(
                group = self.group,
                partitions = tpl.count(),
                "partitions assigned"
            );
        }
    }
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads `settings.topic` in group `settings.group` and applies it to `sink` until `cancel`.
pub async fn run<S: Sink>(
    kafka: &KafkaConfig,
    stage: &str,
    settings: &RunnerSettings,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Result<(), KafkaError> {
    let tracker: Arc<Mutex<Tracker>> = Arc::default();
    let mut config = kafka.consumer_config(stage, &settings.group);
    config.set("statistics.interval.ms", "5000");
    let consumer: Arc<StreamConsumer<RunnerContext>> = config
        .create_with_context(RunnerContext {
            tracker: tracker.clone(),
            group: settings.group.clone(),
            stage: stage.to_string(),
            assigned: Mutex::default(),
        })
        .map(Arc::new)
        .map_err(KafkaError::Client)?;
    consumer
        .subscribe(&[&settings.topic])
        .map_err(KafkaError::Client)?;
    info!(
        group = settings.group,
        topic = settings.topic,
        "consumer started"
    );

    let m = &*crate::metrics::M;
    let received = m.received.with_label_values(&[stage]);
    let kafka_errors = m.errors.with_label_values(&[stage, "kafka"]);
    let consumed = m.consumed.with_label_values(&[stage]);
    let mut in_flight = FuturesUnordered::new();
    let mut batch: Vec<Record> = Vec::with_capacity(settings.max_batch);
    let wait = Duration::from_millis(settings.max_batch_wait_ms);
    let mut deadline = tokio::time::Instant::now() + wait;
    let mut failure = None;
    loop {
        let can_read = in_flight.len() < settings.max_in_flight_batches;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            // Completions first: keeps memory bounded and offsets moving.
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (result, offsets): Applied<S> = done;
                if let Err(e) = result {
                    failure = Some(e);
                    break;
                }
                consumed.inc_by(offsets.len() as u64);
                store_done(&consumer, &tracker, &settings.topic, &offsets);
            }
            _ = tokio::time::sleep_until(deadline), if !batch.is_empty() && can_read => {
                in_flight.push(dispatch(&sink, &tracker, std::mem::take(&mut batch)));
            }
            m = consumer.recv(), if can_read => {
                match m {
                    Ok(m) => {
                        if batch.is_empty() {
                            deadline = tokio::time::Instant::now() + wait;
                        }
                        received.inc();
                        batch.push(Record::from_message(&m));
                        if batch.len() >= settings.max_batch {
                            in_flight.push(dispatch(&sink, &tracker, std::mem::take(&mut batch)));
                        }
                    }
                    Err(error) => {
                        kafka_errors.inc();
                        warn!(%error, "Kafka consumer error; continuing");
                    }
                }
            }
        }
    }
    // Shutdown: finish what was handed to the sink (the stage's grace period bounds this),
    // store it, commit. What was read but not handed over is read again next time.
    while let Some((result, offsets)) = in_flight.next().await {
        if result.is_ok() {
            consumed.inc_by(offsets.len() as u64);
            store_done(&consumer, &tracker, &settings.topic, &offsets);
        }
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        debug!(%error, "final commit (nothing stored is fine)");
    }
    info!(
        group = settings.group,
        "consumer stopped; committed what is done"
    );
    match failure {
        Some(e) => Err(KafkaError::Sink(Box::new(e))),
        None => Ok(()),
    }
}

fn dispatch<S: Sink>(
    sink: &Arc<S>,
    tracker: &Arc<Mutex<Tracker>>,
    batch: Vec<Record>,
) -> impl Future<Output = Applied<S>> + use<S> {
    let offsets: Vec<(i32, i64)> = batch.iter().map(|r| (r.partition, r.offset)).collect();
    {
        let mut t = lock(tracker);
        for (p, o) in &offsets {
            t.started(*p, *o);
        }
    }
    let sink = sink.clone();
    async move { (sink.apply(batch).await, offsets) }
}

fn store_done<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    tracker: &Mutex<Tracker>,
    topic: &str,
    offsets: &[(i32, i64)],
) {
    let mut safe: HashMap<i32, i64> = HashMap::new();
    {
        let mut t = lock(tracker);
        for (p, o) in offsets {
            if let Some(s) = t.done(*p, *o) {
                safe.insert(*p, s);
            }
        }
    }
    if safe.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in safe {
        if tpl
            .add_partition_offset(topic, p, Offset::Offset(o))
            .is_err()
        {
            continue;
        }
    }
    if let Err(error) = consumer.store_offsets(&tpl) {
        // A partition revoked meanwhile cannot be stored: expected during rebalances.
        debug!(%error, "offsets not stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_past_an_unfinished_offset() {
        let mut t = Tracker::default();
        for o in 10..15 {
            t.started(0, o);
        }
        assert_eq!(t.done(0, 12), Some(10), "10 is still pending");
        assert_eq!(t.done(0, 10), Some(11));
        assert_eq!(t.done(0, 11), Some(13));
        assert_eq!(t.done(0, 14), Some(13));
        assert_eq!(t.done(0, 13), Some(15), "all done: next to read");
    }

    #[test]
    fn revoked_work_is_ignored() {
        let mut t = Tracker::default();
        t.started(3, 100);
        t.revoke(3);
        assert_eq!(t.done(3, 100), None);
    }
}
