use prometheus::{Encoder, TextEncoder};

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
