//! Every metric the last-position cache emits.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, exponential_buckets};

pub struct Metrics {
    pub applied: IntCounter,
    pub ignored_older: IntCounter,
    pub batch_size: Histogram,
    pub latency: Histogram,
    pub retries: IntCounter,
    pub freshness: Histogram,
    pub swept: IntCounter,
    pub dlq: IntCounterVec,
}

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = prometheus::register(Box::new(c.clone()));
    c
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = prometheus::register(Box::new(h.clone()));
    h
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| {
    let dlq = IntCounterVec::new(
        Opts::new(
            "locus_cache_dlq_records_total",
            "Records sent to the DLQ, by reason",
        ),
        &["reason"],
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let _ = prometheus::register(Box::new(dlq.clone()));
    Metrics {
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
            exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
        ),
        latency: histogram(
            "locus_cache_write_latency_seconds",
            "Latency of one Redis pipeline",
            exponential_buckets(0.0002, 2.0, 16).unwrap_or_default(),
        ),
        retries: counter("locus_cache_write_retries_total", "Redis pipelines retried"),
        freshness: histogram(
            "locus_cache_freshness_seconds",
            "Apply time minus event time of each fix",
            exponential_buckets(0.01, 2.5, 16).unwrap_or_default(),
        ),
        swept: counter(
            "locus_cache_swept_users_total",
            "Users removed from the GEO sets by the sweeper",
        ),
        dlq,
    }
});
