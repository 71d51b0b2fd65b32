//! Metrics: the helpers every connector registers its metrics with, and the core set every
//! consuming stage exports under the same names and labels (docs/METRICS.md lists them all).
//!
//! The core set, labelled by `stage` (history, cache, push):
//! received records, applied (or sent) records, dead-lettered records by reason, errors by
//! kind, retries, consumer lag per partition, and freshness — now minus event time at the
//! moment the effect is visible (row written, cache updated, event sent).

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    exponential_buckets,
};

/// Registers `c` in the default registry; a failure (a name registered twice, a bad name) is
/// logged loudly: the metric still counts, it is just not exported.
pub fn register<T: Collector + Clone + 'static>(c: T) -> T {
    if let Err(error) = prometheus::register(Box::new(c.clone())) {
        let names: Vec<String> = c.desc().iter().map(|d| d.fq_name.clone()).collect();
        tracing::error!(%error, metric = ?names, "metric not registered: it will not be exported");
    }
    c
}

fn built<T>(name: &str, r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"))
}

pub fn counter(name: &str, help: &str) -> IntCounter {
    register(built(name, IntCounter::new(name, help)))
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(built(
        name,
        IntCounterVec::new(Opts::new(name, help), labels),
    ))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(built(name, IntGauge::new(name, help)))
}

pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(built(name, IntGaugeVec::new(Opts::new(name, help), labels)))
}

pub fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(built(
        name,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
    ))
}

pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(built(
        name,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
    ))
}

/// Buckets of `n` from `start`, each `factor` times the last.
pub fn buckets(start: f64, factor: f64, n: usize) -> Vec<f64> {
    exponential_buckets(start, factor, n).unwrap_or_default()
}

/// The shared runner's metrics and the core stage set.
pub(crate) struct Metrics {
    pub lag: IntGaugeVec,
    pub consumed: IntCounterVec,
    pub received: IntCounterVec,
    applied: IntCounterVec,
    dead_lettered: IntCounterVec,
    pub errors: IntCounterVec,
    retries: IntCounterVec,
    freshness: HistogramVec,
}

pub(crate) static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    lag: gauge_vec(
        "locus_consumer_lag_records",
        "Records between the consumer's position and the partition's end",
        &["stage", "partition"],
    ),
    consumed: counter_vec(
        "locus_consumer_records_total",
        "Records read and applied by the sink, whose offsets the runner stored",
        &["stage"],
    ),
    received: counter_vec(
        "locus_stage_received_records_total",
        "Records the stage read from Kafka",
        &["stage"],
    ),
    applied: counter_vec(
        "locus_stage_applied_records_total",
        "Fixes whose effect is visible: row written (history), position updated or found older \
         (cache), event sent (push)",
        &["stage"],
    ),
    dead_lettered: counter_vec(
        "locus_stage_dead_lettered_records_total",
        "Records the stage could not apply, sent to the DLQ (or, for push and re-reads, skipped), \
         by reason",
        &["stage", "reason"],
    ),
    errors: counter_vec(
        "locus_stage_errors_total",
        "Failures of the stage's store or dependencies, by kind (each retried or stopping the stage)",
        &["stage", "kind"],
    ),
    retries: counter_vec(
        "locus_stage_retries_total",
        "Writes the stage retried",
        &["stage"],
    ),
    freshness: histogram_vec(
        "locus_stage_freshness_seconds",
        "Now minus event time when the fix's effect became visible",
        &["stage"],
        buckets(0.01, 2.5, 16),
    ),
});

/// The core metrics of one consuming stage. Creating it makes every series of the stage exist
/// (at zero) from the start, for the reasons and kinds it names.
#[derive(Debug, Clone, Copy)]
pub struct StageMetrics {
    stage: &'static str,
}

impl StageMetrics {
    pub fn new(stage: &'static str, reasons: &[&str], kinds: &[&str]) -> StageMetrics {
        let m = &*M;
        m.received.with_label_values(&[stage]);
        m.applied.with_label_values(&[stage]);
        m.retries.with_label_values(&[stage]);
        m.freshness.with_label_values(&[stage]);
        for r in reasons {
            m.dead_lettered.with_label_values(&[stage, r]);
        }
        for k in kinds {
            m.errors.with_label_values(&[stage, k]);
        }
        StageMetrics { stage }
    }

    pub fn received(&self, n: u64) {
        M.received.with_label_values(&[self.stage]).inc_by(n);
    }

    pub fn applied(&self, n: u64) {
        M.applied.with_label_values(&[self.stage]).inc_by(n);
    }

    pub fn dead_lettered(&self, reason: &str) {
        M.dead_lettered
            .with_label_values(&[self.stage, reason])
            .inc();
    }

    pub fn error(&self, kind: &str) {
        M.errors.with_label_values(&[self.stage, kind]).inc();
    }

    pub fn retry(&self) {
        M.retries.with_label_values(&[self.stage]).inc();
    }

    /// Observes now minus each event time (ms): call when the effect became visible.
    pub fn fresh(&self, event_times_ms: impl IntoIterator<Item = i64>) {
        let now = now_ms();
        let h = M.freshness.with_label_values(&[self.stage]);
        for ts in event_times_ms {
            h.observe(((now - ts).max(0) as f64) / 1000.0);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
