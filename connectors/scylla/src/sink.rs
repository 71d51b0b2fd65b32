//! The history writer: Kafka records → rows, through the shared at-least-once runner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use locus_kafka::{Producer, Record, Sink};
use locus_schemas::{Codec, LocationFix};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::HistoryStore;
use crate::metrics::M;

/// Writes each batch of records durably before the runner stores their offsets.
#[derive(Debug)]
pub struct HistorySink {
    store: HistoryStore,
    codec: Codec,
    producer: Producer,
    dlq: String,
    permits: Arc<Semaphore>,
    rows_per_batch: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl HistorySink {
    pub fn new(
        store: HistoryStore,
        codec: Codec,
        producer: Producer,
        dlq: &str,
        concurrency: usize,
        rows_per_batch: usize,
    ) -> HistorySink {
        HistorySink {
            store,
            codec,
            producer,
            dlq: dlq.to_string(),
            permits: Arc::new(Semaphore::new(concurrency)),
            rows_per_batch,
        }
    }

    /// One partition's rows, retried with backoff until written: the runner reads no further
    /// meanwhile (back-pressure), and nothing is skipped.
    async fn write(&self, rows: Vec<&LocationFix>) {
        let _permit = self.permits.acquire().await;
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.store.write_partition(&rows).await {
                Ok(()) => {
                    M.write_latency.observe(started.elapsed().as_secs_f64());
                    M.batch_rows.observe(rows.len() as f64);
                    M.rows.inc_by(rows.len() as u64);
                    let now = now_ms();
                    for r in &rows {
                        M.freshness.observe(((now - r.ts).max(0) as f64) / 1000.0);
                    }
                    return;
                }
                Err(error) => {
                    M.retries.inc();
                    warn!(error, retry_in = ?backoff, rows = rows.len(), "Cassandra write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn dead_letter(&self, r: &Record, reason: &str, error: &str) {
        M.dlq.with_label_values(&[reason]).inc();
        let partition = r.partition.to_string();
        let offset = r.offset.to_string();
        let headers: [(&str, &[u8]); 5] = [
            ("locus-reason", reason.as_bytes()),
            ("locus-error", error.as_bytes()),
            ("locus-source-topic", r.topic.as_bytes()),
            ("locus-source-partition", partition.as_bytes()),
            ("locus-source-offset", offset.as_bytes()),
        ];
        let key = r.key.clone().unwrap_or_default();
        let value = r.value.clone().unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            let sent = match self.producer.send(&self.dlq, &key, &value, &headers).await {
                Ok(p) => p.delivered().await.map(|_| ()),
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "DLQ write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Sink for HistorySink {
    async fn apply(&self, batch: Vec<Record>) -> Result<(), String> {
        let mut fixes: Vec<LocationFix> = Vec::with_capacity(batch.len());
        for r in &batch {
            match r.value.as_deref() {
                None => {
                    self.dead_letter(r, "empty_value", "record has no value")
                        .await
                }
                Some(v) => match self.codec.decode(v).await {
                    Ok(f) => fixes.push(f),
                    Err(e @ locus_schemas::CodecError::Registry(_)) => {
                        // Not the record's fault: fail the batch, so nothing is stored and the
                        // stage stops loudly rather than dead-lettering good data.
                        return Err(e.to_string());
                    }
                    Err(e) => self.dead_letter(r, e.reason(), &e.to_string()).await,
                },
            }
        }
        let mut partitions: HashMap<(&str, &str, i32), Vec<&LocationFix>> = HashMap::new();
        for f in &fixes {
            partitions
                .entry((&f.tenant, &f.user_id, self.store.bucket_of(f.ts)))
                .or_default()
                .push(f);
        }
        let mut writes = FuturesUnordered::new();
        for rows in partitions.into_values() {
            for chunk in rows.chunks(self.rows_per_batch) {
                writes.push(self.write(chunk.to_vec()));
            }
        }
        while writes.next().await.is_some() {}
        Ok(())
    }
}
