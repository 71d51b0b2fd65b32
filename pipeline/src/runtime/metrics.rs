use std::sync::LazyLock;

use locus_kafka::metrics::{counter, counter_vec};
use prometheus::{Encoder, IntCounter, IntCounterVec, TextEncoder};

/// The HTTP server's own metrics (every process).
pub struct HttpMetrics {
    pub refused: IntCounterVec,
    pub stalled: IntCounter,
}

pub static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics {
    refused: counter_vec(
        "locus_http_connections_closed_total",
        "Connections the server closed before a response: pending_heads (http.max_pending_heads \
         reached at accept), head_timeout (no complete request head within http.header_timeout_ms)",
        &["reason"],
    ),
    stalled: counter(
        "locus_http_streams_stalled_total",
        "Streaming responses closed because the client took nothing for http.stall_timeout_ms",
    ),
});

/// Registers the HTTP metrics with every label value at zero.
pub fn init() {
    for r in ["pending_heads", "head_timeout"] {
        HTTP.refused.with_label_values(&[r]);
    }
    LazyLock::force(&HTTP);
}

/// Every metric of the process (the default registry, where each connector's `metrics.rs`
/// registers), in the Prometheus text format.
pub fn render() -> String {
    let families = prometheus::gather();
    let mut out = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(%error, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}
