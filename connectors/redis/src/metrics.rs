//! The cache's own metrics; the core stage set (received, applied, dead-lettered, errors,
//! retries, freshness, lag) is `locus_kafka::StageMetrics` with stage="cache".

use std::sync::LazyLock;

use locus_kafka::metrics::{buckets, counter, histogram};
use prometheus::{Histogram, IntCounter};

pub struct Metrics {
    pub applied: IntCounter,
    pub ignored_older: IntCounter,
    pub batch_size: Histogram,
    pub latency: Histogram,
    pub swept: IntCounter,
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    applied: counter(
        "locus_cache_updates_applied_total",
        "Fixes that moved a user forward",
    ),
    ignored_older: counter(
        "locus_cache_updates_ignored_total",
        "Fixes not applied because the user already had a newer one (late, replayed or superseded in the batch)",
    ),
    batch_size: histogram(
        "locus_cache_batch_fixes",
        "Fixes per Redis pipeline",
        buckets(1.0, 2.0, 14),
    ),
    latency: histogram(
        "locus_cache_write_latency_seconds",
        "Latency of one Redis pipeline",
        buckets(0.0002, 2.0, 16),
    ),
    swept: counter(
        "locus_cache_swept_users_total",
        "Users removed from the GEO sets by the sweeper",
    ),
});

/// Registers every metric now, so `/metrics` lists them from the start.
pub fn init() {
    LazyLock::force(&M);
    crate::sink::stage_metrics();
}
