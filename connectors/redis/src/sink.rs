//! Kafka records → Redis, through the shared at-least-once runner.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use locus_kafka::{Producer, Record, Sink};
use locus_schemas::{Codec, LocationFix};
use tracing::warn;

use crate::CacheStore;
use crate::metrics::M;

/// Applies each batch before the runner stores its offsets.
#[derive(Debug)]
pub struct CacheSink {
    store: CacheStore,
    codec: Codec,
    dlq: Option<(Producer, String)>,
}

impl CacheSink {
    /// `dlq`: where undecodable records go (`None`: skip them with a warning, for rebuilds —
    /// the live group already dead-letters them).
    pub fn new(store: CacheStore, codec: Codec, dlq: Option<(Producer, String)>) -> CacheSink {
        CacheSink { store, codec, dlq }
    }

    /// Applies decoded fixes, retrying with backoff until Redis takes them.
    pub async fn apply_fixes(&self, fixes: &[LocationFix]) {
        if fixes.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.store.update(fixes).await {
                Ok(applied) => {
                    M.latency.observe(started.elapsed().as_secs_f64());
                    M.batch_size.observe(fixes.len() as f64);
                    M.applied.inc_by(applied as u64);
                    M.ignored_older.inc_by((fixes.len() - applied) as u64);
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    for f in fixes {
                        M.freshness.observe(((now - f.ts).max(0) as f64) / 1000.0);
                    }
                    return;
                }
                Err(e) => {
                    M.retries.inc();
                    warn!(error = %e, retry_in = ?backoff, "Redis update failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn dead_letter(&self, r: &Record, reason: &str, error: &str) {
        M.dlq.with_label_values(&[reason]).inc();
        let Some((producer, topic)) = &self.dlq else {
            warn!(
                reason,
                error,
                partition = r.partition,
                offset = r.offset,
                "undecodable record skipped"
            );
            return;
        };
        let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
        let headers: [(&str, &[u8]); 5] = [
            ("locus-reason", reason.as_bytes()),
            ("locus-error", error.as_bytes()),
            ("locus-source-topic", r.topic.as_bytes()),
            ("locus-source-partition", partition.as_bytes()),
            ("locus-source-offset", offset.as_bytes()),
        ];
        let (key, value) = (
            r.key.clone().unwrap_or_default(),
            r.value.clone().unwrap_or_default(),
        );
        let mut backoff = Duration::from_millis(100);
        loop {
            let sent = match producer.send(topic, &key, &value, &headers).await {
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

    pub async fn decode_batch(&self, batch: &[Record]) -> Result<Vec<LocationFix>, String> {
        let mut fixes = Vec::with_capacity(batch.len());
        for r in batch {
            match r.value.as_deref() {
                None => {
                    self.dead_letter(r, "empty_value", "record has no value")
                        .await
                }
                Some(v) => match self.codec.decode(v).await {
                    Ok(f) => fixes.push(f),
                    Err(e @ locus_schemas::CodecError::Registry(_)) => return Err(e.to_string()),
                    Err(e) => self.dead_letter(r, e.reason(), &e.to_string()).await,
                },
            }
        }
        Ok(fixes)
    }
}

impl Sink for CacheSink {
    async fn apply(&self, batch: Vec<Record>) -> Result<(), String> {
        let fixes = self.decode_batch(&batch).await?;
        self.apply_fixes(&fixes).await;
        Ok(())
    }
}

/// Runs the GEO sweeper every `every` until `cancel`.
pub async fn sweep_loop(
    store: CacheStore,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match store.sweep().await {
            Ok(n) if n > 0 => {
                M.swept.inc_by(n as u64);
                tracing::info!(
                    users = n,
                    "swept users not seen for a while from the GEO sets"
                );
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "sweep failed; next time"),
        }
    }
}
