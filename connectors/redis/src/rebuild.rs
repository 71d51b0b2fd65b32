//! `locus cache rebuild`: refill Redis from the topic's retained window, without a consumer
//! group (so the live `last-position` group is not disturbed). The forward-only update makes
//! this safe to run while the live group keeps writing.

use std::time::{Duration, Instant};

use locus_kafka::{Backoff, KafkaConfig, Progress, RangeReader, StartAt, StopAt};

use crate::{CacheError, CacheSink};

/// Reads `topic` from the beginning up to the end as of the start, applying every fix.
/// Waits out registry and Redis outages. Calls `progress` about once a second. Returns the
/// records read.
pub async fn rebuild(
    kafka: &KafkaConfig,
    topic: &str,
    sink: &CacheSink,
    progress: impl Fn(&Progress),
) -> Result<u64, CacheError> {
    let mut reader = RangeReader::open(
        kafka,
        "cache-rebuild",
        topic,
        StartAt::Beginning,
        StopAt::End,
    )
    .await?;
    let mut last_report = Instant::now();
    while let Some(batch) = reader.next_batch(2000).await? {
        let mut backoff = Backoff::default();
        let fixes = loop {
            match sink.decode_batch(&batch).await {
                Ok(fixes) => break fixes,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff.current(), "Schema Registry unavailable; retrying");
                    backoff.wait().await;
                }
            }
        };
        sink.apply_fixes(&fixes).await;
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(&reader.progress());
            last_report = Instant::now();
        }
    }
    let done = reader.progress();
    progress(&done);
    Ok(done.records)
}
