//! Kafka records → Redis, through the shared at-least-once runner.

use std::time::{Duration, Instant};

use locus_kafka::{Backoff, DECODE_REASONS, DeadLetter, Record, Sink, StageMetrics};
use locus_schemas::{Codec, CodecError, LocationFix};
use tracing::warn;

use crate::CacheStore;
use crate::metrics::M;

/// The cache stage's core metrics (every series at zero from the start).
pub fn stage_metrics() -> StageMetrics {
    StageMetrics::new(
        "cache",
        DECODE_REASONS,
        &["redis_write", "registry", "kafka"],
    )
}

/// Applies each batch before the runner stores its offsets.
#[derive(Debug)]
pub struct CacheSink {
    store: CacheStore,
    codec: Codec,
    dead_letter: DeadLetter,
    stage: StageMetrics,
}

impl CacheSink {
    /// `dead_letter`: where undecodable records go (`DeadLetter::skip()` for rebuilds and
    /// replays: the live group already dead-letters them).
    pub fn new(store: CacheStore, codec: Codec, dead_letter: DeadLetter) -> CacheSink {
        CacheSink {
            store,
            codec,
            dead_letter,
            stage: stage_metrics(),
        }
    }

    /// Applies decoded fixes, retrying with backoff until Redis takes them.
    pub async fn apply_fixes(&self, fixes: &[LocationFix]) {
        if fixes.is_empty() {
            return;
        }
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.store.update(fixes).await {
                Ok(applied) => {
                    M.latency.observe(started.elapsed().as_secs_f64());
                    M.batch_size.observe(fixes.len() as f64);
                    M.applied.inc_by(applied as u64);
                    M.ignored_older.inc_by((fixes.len() - applied) as u64);
                    self.stage.applied(fixes.len() as u64);
                    self.stage.fresh(fixes.iter().map(|f| f.ts));
                    return;
                }
                Err(e) => {
                    self.stage.retry();
                    self.stage.error("redis_write");
                    warn!(error = %e, retry_in = ?backoff.current(), "Redis update failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Decodes a batch, dead-lettering records that are not fixes. A registry outage fails
    /// the whole batch (not the records' fault: nothing may be committed past them).
    pub async fn decode_batch(&self, batch: &[Record]) -> Result<Vec<LocationFix>, CodecError> {
        self.dead_letter
            .decode_fixes(&self.codec, batch, &self.stage)
            .await
    }
}

impl Sink for CacheSink {
    type Error = CodecError;

    async fn apply(&self, batch: Vec<Record>) -> Result<(), CodecError> {
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
