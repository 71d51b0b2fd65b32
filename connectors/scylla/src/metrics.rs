//! Every metric the history writer emits.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, exponential_buckets};

pub struct Metrics {
    pub rows: IntCounter,
    pub batch_rows: Histogram,
    pub write_latency: Histogram,
    pub retries: IntCounter,
    pub freshness: Histogram,
    pub dlq: IntCounterVec,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = prometheus::register(Box::new(h.clone()));
    h
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| {
    let rows = IntCounter::new(
        "locus_history_rows_written_total",
        "Fixes written to Cassandra/Scylla",
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let retries = IntCounter::new(
        "locus_history_write_retries_total",
        "CQL writes retried (timeouts, unavailable, connection loss)",
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let dlq = IntCounterVec::new(
        Opts::new(
            "locus_history_dlq_records_total",
            "Records sent to the DLQ, by reason",
        ),
        &["reason"],
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let _ = prometheus::register(Box::new(rows.clone()));
    let _ = prometheus::register(Box::new(retries.clone()));
    let _ = prometheus::register(Box::new(dlq.clone()));
    Metrics {
        rows,
        retries,
        dlq,
        batch_rows: histogram(
            "locus_history_batch_rows",
            "Rows per unlogged batch (one partition)",
            exponential_buckets(1.0, 2.0, 10).unwrap_or_default(),
        ),
        write_latency: histogram(
            "locus_history_write_latency_seconds",
            "Latency of one CQL batch write",
            exponential_buckets(0.0005, 2.0, 16).unwrap_or_default(),
        ),
        freshness: histogram(
            "locus_history_freshness_seconds",
            "Write time minus event time of each fix",
            exponential_buckets(0.01, 2.5, 16).unwrap_or_default(),
        ),
    }
});
