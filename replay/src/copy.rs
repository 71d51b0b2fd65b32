//! `locus replay topic`: copy a window into another topic — keys, headers and Avro values
//! byte-identical — as fast as possible or at the original spacing divided by a speed.
//! Records are sent in their partition's order, partitions merged by record timestamp, so
//! each user's fixes keep their order and the mix over time is the original one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use locus_kafka::{Backoff, Producer, Record};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{Kept, ReplayError};

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub copied: u64,
    pub bytes: u64,
    /// Span of the source records' timestamps, s.
    pub source_span_s: f64,
    /// How long sending took, s.
    pub seconds: f64,
}

/// Orders kept records per partition by offset, partitions merged by timestamp.
pub fn merge_by_time(kept: Vec<Kept>) -> Vec<Record> {
    let mut per: std::collections::BTreeMap<i32, Vec<Record>> = Default::default();
    for k in kept {
        per.entry(k.record.partition).or_default().push(k.record);
    }
    let mut lists: Vec<std::vec::IntoIter<Record>> = per
        .into_values()
        .map(|mut v| {
            v.sort_unstable_by_key(|r| r.offset);
            v.into_iter()
        })
        .collect();
    let mut heads: Vec<Option<Record>> = lists.iter_mut().map(Iterator::next).collect();
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = heads
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .map(|r| Reverse((r.timestamp_ms.unwrap_or(0), i)))
        })
        .collect();
    let mut out = Vec::new();
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(r) = heads[i].take() {
            out.push(r);
        }
        heads[i] = lists[i].next();
        if let Some(r) = &heads[i] {
            heap.push(Reverse((r.timestamp_ms.unwrap_or(0), i)));
        }
    }
    out
}

/// How long after the first record one `ms` later in the source is sent at `speed`
/// (saturating: a speed too small for the span is refused by the caller).
pub fn pace(ms: i64, speed: f64) -> Duration {
    Duration::try_from_secs_f64(ms as f64 / 1000.0 / speed).unwrap_or(Duration::MAX)
}

/// Sends `records` to `into`; with `speed`, record `i` goes out at
/// `(ts_i − ts_0) / speed` after the first.
pub async fn send(
    producer: &Producer,
    into: &str,
    records: &[Record],
    speed: Option<f64>,
    cancel: &CancellationToken,
    mut progress: impl FnMut(u64, u64),
) -> Result<CopyReport, ReplayError> {
    let started = Instant::now();
    let t0 = records.first().and_then(|r| r.timestamp_ms).unwrap_or(0);
    let t_last = records.last().and_then(|r| r.timestamp_ms).unwrap_or(t0);
    let mut report = CopyReport {
        source_span_s: (t_last - t0).max(0) as f64 / 1000.0,
        ..Default::default()
    };
    let mut in_flight = FuturesUnordered::new();
    let mut last = Instant::now();
    for r in records {
        if cancel.is_cancelled() {
            return Err(ReplayError::Interrupted);
        }
        if let Some(speed) = speed {
            let after = pace((r.timestamp_ms.unwrap_or(t0) - t0).max(0), speed);
            let Some(due) = started.checked_add(after) else {
                return Err(ReplayError::Invalid(
                    "--speed is too small for this window".into(),
                ));
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(ReplayError::Interrupted),
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let key = r.key.as_deref().unwrap_or_default();
        let value = r.value.as_deref().unwrap_or_default();
        let mut backoff = Backoff::default();
        let pending = loop {
            match producer.send(into, key, value, &headers).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot enqueue a copy; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ReplayError::Interrupted),
                        _ = backoff.wait() => {}
                    }
                }
            }
        };
        in_flight.push(pending.delivered());
        while in_flight.len() >= 10_000 {
            if let Some(Err(e)) = in_flight.next().await {
                return Err(ReplayError::Invalid(format!(
                    "Kafka refused a copied record: {e}"
                )));
            }
        }
        report.copied += 1;
        report.bytes += r.size() as u64;
        if last.elapsed() >= Duration::from_millis(500) {
            progress(report.copied, records.len() as u64);
            last = Instant::now();
        }
    }
    loop {
        let done = tokio::select! {
            _ = cancel.cancelled() => return Err(ReplayError::Interrupted),
            d = in_flight.next() => d,
        };
        let Some(done) = done else { break };
        if let Err(e) = done {
            return Err(ReplayError::Invalid(format!(
                "Kafka refused a copied record: {e}"
            )));
        }
    }
    progress(report.copied, records.len() as u64);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
