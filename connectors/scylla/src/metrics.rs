//! The history writer's own metrics; the core stage set (received, applied, dead-lettered,
//! errors, retries, freshness, lag) is `locus_kafka::StageMetrics` with stage="history".

use std::sync::LazyLock;

use locus_kafka::metrics::{buckets, counter, histogram};
use prometheus::{Histogram, IntCounter};

pub struct Metrics {
    pub rows: IntCounter,
    pub batch_rows: Histogram,
    pub write_latency: Histogram,
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    rows: counter(
        "locus_history_rows_written_total",
        "Fixes written to Cassandra/Scylla",
    ),
    batch_rows: histogram(
        "locus_history_batch_rows",
        "Rows per CQL write (one insert, or an unlogged batch of one partition or one replica set)",
        buckets(1.0, 2.0, 10),
    ),
    write_latency: histogram(
        "locus_history_write_latency_seconds",
        "Latency of one CQL batch write",
        buckets(0.0005, 2.0, 16),
    ),
});

/// Registers every metric now, so `/metrics` lists them from the start.
pub fn init() {
    LazyLock::force(&M);
    crate::sink::stage_metrics();
}
