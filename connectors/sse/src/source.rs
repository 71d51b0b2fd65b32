//! Reading `locations` for the streams: the live reader (every partition, from the end, no
//! consumer group offsets) and the per-client replay of a resume.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use locus_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use locus_kafka::rdkafka::message::{Headers, Message};
use locus_kafka::rdkafka::{Offset, TopicPartitionList};
use locus_kafka::{Backoff, KafkaConfig, RangeReader, StartAt, StopAt};
use locus_schemas::{Codec, CodecError, LocationFix, TENANT_HEADER};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Client, FixEvent, Hub};
use crate::metrics::{M, STAGE};
use crate::{PushError, cursor};

fn reader(cfg: &KafkaConfig, stage: &str) -> Result<StreamConsumer, PushError> {
    let mut c = cfg.consumer_config(stage, &format!("{}-{stage}", cfg.client_id));
    // Partitions are assigned, never subscribed: no group membership, nothing committed.
    c.set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest");
    c.create()
        .map_err(|e| PushError::Kafka(format!("cannot create the {stage} reader: {e}")))
}

/// Decodes a record into the event the streams send.
pub async fn to_event(
    codec: &Codec,
    partition: i32,
    offset: i64,
    value: &[u8],
) -> Result<FixEvent, CodecError> {
    let fix: LocationFix = codec.decode(value).await?;
    // Any producer may write to the topic: a fix the bridge would not have admitted is not sent.
    fix.check_consumed()
        .map_err(|e| CodecError::Shape(format!("not a fix the stages take: {e}")))?;
    let json = serde_json::to_vec(&fix).map_err(|e| CodecError::Shape(e.to_string()))?;
    Ok(FixEvent {
        partition,
        offset,
        tenant: fix.tenant.as_str().into(),
        user: fix.user_id.as_str().into(),
        lat: fix.lat,
        lon: fix.lon,
        received_at: fix.received_at,
        ts: fix.ts,
        json: Bytes::from(json),
    })
}

/// The `locus-tenant` header the bridge puts on every fix.
fn tenant_header<'a>(
    m: &'a locus_kafka::rdkafka::message::BorrowedMessage<'_>,
) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == TENANT_HEADER)
        .and_then(|h| h.value)
}

/// (low, high) watermarks of each partition.
async fn watermarks(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>, PushError> {
    let consumer = consumer.clone();
    let topic = topic.to_string();
    let partitions: Vec<i32> = partitions.into_iter().collect();
    tokio::task::spawn_blocking(move || {
        partitions
            .into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map(|(lo, hi)| (p, lo, hi))
                    .map_err(|e| PushError::Kafka(format!("watermarks of {topic}/{p}: {e}")))
            })
            .collect()
    })
    .await
    .map_err(|e| PushError::Kafka(e.to_string()))?
}

/// The live reader: starts at the end of every partition and routes each fix to the hub
/// until cancelled. Picks up partitions added to the topic (from their beginning).
pub async fn run_live(
    kafka: KafkaConfig,
    topic: String,
    hub: Arc<Hub>,
    codec: &Codec,
    cancel: CancellationToken,
) -> Result<(), PushError> {
    let consumer = Arc::new(reader(&kafka, "push")?);
    let timeout = Duration::from_millis(kafka.request_timeout_ms);
    // The log's id goes into every event id: asked once, from a reachable cluster, before
    // the first assignment. A broker that names no cluster id gives the topic's name alone;
    // "no answer in time" is not taken for "no id" (replicas would disagree): asked again.
    let mut tries = 0u32;
    let cluster = loop {
        let c = consumer.clone();
        let t = topic.clone();
        let asked = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), timeout)
                .map(|_| c.client().fetch_cluster_id(timeout))
        });
        let asked = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            a = asked => a,
        };
        tries += 1;
        match asked {
            Ok(Ok(Some(cluster))) => break cluster,
            // Reachable, yet no id three times in a row: a broker that has none.
            Ok(Ok(None)) if tries >= 3 => break String::new(),
            Ok(Ok(None)) => tracing::warn!("push reader: no cluster id from Kafka yet"),
            Ok(Err(e)) => tracing::warn!(error = %e, "push reader cannot reach Kafka yet"),
            Err(e) => tracing::warn!(error = %e, "push reader: asking for the cluster id failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    hub.set_log(cursor::log_id(&cluster, &topic));
    tracing::info!(cluster, topic, log = hub.log(), "push reader's log");
    let mut known = 0usize;
    let mut check = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = check.tick() => {
                if let Err(e) = add_partitions(&kafka, &topic, &consumer, &hub, &mut known, timeout).await {
                    tracing::warn!(error = %e, "push reader cannot read the topic's partitions yet");
                    if known == 0 {
                        // Not started yet: try again soon rather than at the next full period.
                        check.reset_after(Duration::from_secs(2));
                    }
                }
            }
            m = consumer.recv(), if known > 0 => match m {
                Ok(m) => {
                    let (p, o) = (m.partition(), m.offset());
                    STAGE.received(1);
                    // The bridge names the tenant in a header: a fix no stream here watches
                    // is passed over without decoding it.
                    if let Some(tenant) = tenant_header(&m)
                        && hub.skip_unwatched(tenant, p, o)
                    {
                        M.unwatched.inc();
                        continue;
                    }
                    let value = m.payload().unwrap_or_default();
                    // A registry outage is not the record's fault: wait it out on this record
                    // (every stream waits) rather than skip past fixes the streams should get.
                    let mut backoff = Backoff::default();
                    let decoded = loop {
                        match to_event(codec, p, o, value).await {
                            Err(CodecError::Registry(e)) => {
                                STAGE.error("registry");
                                tracing::warn!(error = e, retry_in = ?backoff.current(), "Schema Registry unavailable; the push reader waits");
                                tokio::select! {
                                    _ = cancel.cancelled() => return Ok(()),
                                    _ = backoff.wait() => {}
                                }
                            }
                            other => break other,
                        }
                    };
                    match decoded {
                        Ok(ev) => hub.route(Arc::new(ev)),
                        Err(e) => {
                            STAGE.dead_lettered("undecodable");
                            tracing::debug!(partition = p, offset = o, error = %e, "record is not a fix; skipped");
                            hub.advance(p, o + 1);
                        }
                    }
                }
                Err(e) => {
                    STAGE.error("kafka");
                    tracing::warn!(error = %e, "push reader: Kafka error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

async fn add_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    consumer: &Arc<StreamConsumer>,
    hub: &Hub,
    known: &mut usize,
    timeout: Duration,
) -> Result<(), PushError> {
    let n = locus_kafka::partition_count(kafka, topic)
        .await
        .map_err(|e| PushError::Kafka(e.to_string()))?;
    if n <= *known {
        return Ok(());
    }
    let fresh = (*known as i32)..(n as i32);
    let mut tpl = TopicPartitionList::new();
    let mut next = hub.positions();
    next.resize(n, 0);
    if *known == 0 {
        // First start: from the end of each partition.
        for (p, _lo, hi) in watermarks(consumer, topic, fresh, timeout).await? {
            next[p as usize] = hi;
            tpl.add_partition_offset(topic, p, Offset::Offset(hi))
                .map_err(|e| PushError::Kafka(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| PushError::Kafka(format!("cannot assign {topic}: {e}")))?;
    } else {
        // Partitions added while running hold only fixes written since: read them all.
        for p in fresh {
            next[p as usize] = 0;
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| PushError::Kafka(e.to_string()))?;
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| PushError::Kafka(format!("cannot add partitions of {topic}: {e}")))?;
    }
    hub.start_at(&next);
    tracing::info!(topic, partitions = n, "push reader assigned");
    *known = n;
    Ok(())
}

/// What a resume's replay sends to its stream, in order.
#[derive(Debug)]
pub enum ReplayItem {
    Fix(Arc<FixEvent>, String),
    /// The positions cannot be replayed (retention, too many records, unknown id).
    Gap(String),
    Done,
    Failed(String),
}

/// Replays `[from, until)` of each partition for one client, filtered like its live
/// stream, then `Done`. Each fix carries the id that is true once it is delivered.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    kafka: KafkaConfig,
    topic: String,
    codec: &Codec,
    client: Arc<Client>,
    from: Vec<i64>,
    until: Vec<i64>,
    max_records: u64,
    tx: mpsc::Sender<ReplayItem>,
) {
    let item = match replay_inner(
        &kafka,
        &topic,
        codec,
        &client,
        &from,
        &until,
        max_records,
        &tx,
    )
    .await
    {
        Ok(None) => ReplayItem::Done,
        Ok(Some(gap)) => ReplayItem::Gap(gap),
        Err(e) => ReplayItem::Failed(e.to_string()),
    };
    let _ = tx.send(item).await;
}

#[allow(clippy::too_many_arguments)]
async fn replay_inner(
    kafka: &KafkaConfig,
    topic: &str,
    codec: &Codec,
    client: &Client,
    from: &[i64],
    until: &[i64],
    max_records: u64,
    tx: &mpsc::Sender<ReplayItem>,
) -> Result<Option<String>, PushError> {
    let todo: Vec<i32> = (0..until.len())
        .filter(|&p| from[p] < until[p])
        .map(|p| p as i32)
        .collect();
    let total: i64 = todo
        .iter()
        .map(|&p| until[p as usize] - from[p as usize])
        .sum();
    if total as u64 > max_records {
        return Ok(Some(format!(
            "{total} records to replay, more than push.resume_max_records ({max_records})"
        )));
    }
    if todo.is_empty() {
        return Ok(None);
    }
    let starts = todo.iter().map(|&p| (p, from[p as usize])).collect();
    let stops = todo.iter().map(|&p| (p, until[p as usize])).collect();
    let mut reader = RangeReader::open(
        kafka,
        "push-replay",
        topic,
        StartAt::Offsets(starts),
        StopAt::Offsets(stops),
    )
    .await?;
    if let Some(r) = reader.ranges().iter().find(|r| r.lost() > 0) {
        return Ok(Some(format!(
            "partition {} no longer holds offset {} (retention starts at {})",
            r.partition, r.start, r.low
        )));
    }
    let mut next: Vec<i64> = from.iter().zip(until).map(|(f, u)| (*f).max(*u)).collect();
    for &p in &todo {
        next[p as usize] = from[p as usize];
    }
    client.raise_to_skip(&mut next);
    while let Some(batch) = reader.next_batch(256).await? {
        if tx.is_closed() {
            return Ok(None); // the client left: stop reading (and drop the reader)
        }
        for m in batch {
            let (p, o) = (m.partition, m.offset);
            let pi = p as usize;
            if pi >= until.len() || next[pi] >= until[pi] || o < next[pi] {
                continue;
            }
            let ev = to_event(codec, p, o, m.value.as_deref().unwrap_or_default()).await;
            next[pi] = (o + 1).min(until[pi]).max(next[pi]);
            if let Ok(ev) = ev
                && ev.tenant == client.tenant
                && client.filter.matches(&ev)
            {
                let id = cursor::encode(client.log, &next);
                if tx.send(ReplayItem::Fix(Arc::new(ev), id)).await.is_err() {
                    return Ok(None); // the stream is gone
                }
            }
        }
    }
    Ok(None)
}
