//! The live push's own metrics; the core stage set (received, applied = fix events sent,
//! dead-lettered = records that are not fixes, errors, freshness at send) is
//! `locus_kafka::StageMetrics` with stage="push" ([`STAGE`]).

use std::sync::LazyLock;

use locus_kafka::StageMetrics;
use locus_kafka::metrics::{buckets, counter, counter_vec, gauge, histogram};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

pub struct Metrics {
    pub connections: IntGauge,
    pub requests: IntCounterVec,
    pub events: IntCounterVec,
    pub conflated: IntCounter,
    pub unwatched: IntCounter,
    pub resumes: IntCounter,
    pub resumes_running: IntGauge,
    pub gaps: IntCounterVec,
    pub closed: IntCounterVec,
    pub latency: Histogram,
    pub groups: IntGauge,
    pub groups_loaded: IntGauge,
    pub groups_skipped: IntCounter,
    pub group_writes: IntCounterVec,
}

pub static STAGE: LazyLock<StageMetrics> =
    LazyLock::new(|| StageMetrics::new("push", &["undecodable"], &["registry", "kafka"]));

pub static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connections: gauge("locus_push_connections", "Open SSE streams"),
    requests: counter_vec(
        "locus_push_requests_total",
        "Stream requests by outcome (accepted, unauthorized, forbidden, bad_request, full, tenant_full, not_ready)",
        &["outcome"],
    ),
    events: counter_vec(
        "locus_push_events_sent_total",
        "Events written to streams, by kind (fix, replay, snapshot, gap, expired, overflow)",
        &["kind"],
    ),
    conflated: counter(
        "locus_push_events_conflated_total",
        "Fixes replaced in a stream's queue by a newer fix of the same user before being sent",
    ),
    unwatched: counter(
        "locus_push_unwatched_records_total",
        "Records passed over without decoding: their tenant (the locus-tenant header) has no stream here",
    ),
    resumes: counter(
        "locus_push_resumes_total",
        "Streams that resumed from a Last-Event-ID",
    ),
    resumes_running: gauge(
        "locus_push_resumes_running",
        "Resumes replaying from Kafka now (each with a reader of its own)",
    ),
    gaps: counter_vec(
        "locus_push_gaps_total",
        "Resumes that could not replay and got a gap event and a fresh snapshot, by reason",
        &["reason"],
    ),
    closed: counter_vec(
        "locus_push_streams_closed_total",
        "Streams closed by the server, by reason (expired, overflow, replay_failed, shutdown)",
        &["reason"],
    ),
    latency: histogram(
        "locus_push_publish_to_send_seconds",
        "From the bridge receiving a fix to a stream writing it",
        buckets(0.001, 2.0, 16),
    ),
    groups: gauge(
        "locus_groups",
        "Groups this process knows (every tenant's), as read from the groups topic",
    ),
    groups_loaded: gauge(
        "locus_groups_loaded",
        "1 once this process has read the groups topic up to where it ended at start (tokens naming groups get 503 before)",
    ),
    groups_skipped: counter(
        "locus_groups_records_skipped_total",
        "Records of the groups topic that are not a group (bad key or value), skipped",
    ),
    group_writes: counter_vec(
        "locus_groups_writes_total",
        "Group changes through the API, by kind (put, delete)",
        &["kind"],
    ),
});

/// Registers every metric now, with every known label value at zero, so `/metrics` lists
/// them from the start.
pub fn init() {
    LazyLock::force(&STAGE);
    let m = &*M;
    for o in [
        "accepted",
        "unauthorized",
        "forbidden",
        "bad_request",
        "full",
        "not_ready",
    ] {
        m.requests.with_label_values(&[o]);
    }
    for k in ["fix", "replay", "snapshot", "gap", "expired", "overflow"] {
        m.events.with_label_values(&[k]);
    }
    for r in [
        "too_far_behind",
        "retention",
        "unknown_id",
        "ahead_of_log",
        "other_log",
    ] {
        m.gaps.with_label_values(&[r]);
    }
    for r in ["expired", "overflow", "replay_failed", "shutdown"] {
        m.closed.with_label_values(&[r]);
    }
    for k in ["put", "delete"] {
        m.group_writes.with_label_values(&[k]);
    }
}
