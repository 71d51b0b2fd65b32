//! Every metric the live push emits.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, exponential_buckets,
};

pub struct Metrics {
    pub connections: IntGauge,
    pub requests: IntCounterVec,
    pub events: IntCounterVec,
    pub conflated: IntCounter,
    pub resumes: IntCounter,
    pub gaps: IntCounterVec,
    pub closed: IntCounterVec,
    pub latency: Histogram,
    pub routed: IntCounter,
    pub skipped: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    let _ = prometheus::register(Box::new(c.clone()));
    c
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}")))
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        IntCounterVec::new(Opts::new(name, help), &[label])
            .unwrap_or_else(|e| unreachable!("metric {name}: {e}")),
    )
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connections: register(
        IntGauge::new("locus_push_connections", "Open SSE streams")
            .unwrap_or_else(|e| unreachable!("{e}")),
    ),
    requests: counter_vec(
        "locus_push_requests_total",
        "Stream requests by outcome (accepted, unauthorized, forbidden, bad_request, full, not_ready)",
        "outcome",
    ),
    events: counter_vec(
        "locus_push_events_sent_total",
        "Events written to streams, by kind (fix, replay, snapshot, gap, expired, overflow)",
        "kind",
    ),
    conflated: counter(
        "locus_push_events_conflated_total",
        "Fixes replaced in a stream's queue by a newer fix of the same user before being sent",
    ),
    resumes: counter(
        "locus_push_resumes_total",
        "Streams that resumed from a Last-Event-ID",
    ),
    gaps: counter_vec(
        "locus_push_gaps_total",
        "Resumes that could not replay and got a gap event and a fresh snapshot, by reason",
        "reason",
    ),
    closed: counter_vec(
        "locus_push_streams_closed_total",
        "Streams closed by the server, by reason (expired, overflow, replay_failed, shutdown)",
        "reason",
    ),
    latency: register(
        Histogram::with_opts(
            HistogramOpts::new(
                "locus_push_publish_to_send_seconds",
                "From the bridge receiving a fix to a stream writing it",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16).unwrap_or_default()),
        )
        .unwrap_or_else(|e| unreachable!("{e}")),
    ),
    routed: counter(
        "locus_push_records_routed_total",
        "Fixes read from Kafka and offered to the streams",
    ),
    skipped: counter_vec(
        "locus_push_records_skipped_total",
        "Records read from Kafka that are not fixes (undecodable), by reason",
        "reason",
    ),
});
