//! Metrics of the shared consumer runner (labelled by stage and partition).

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    pub lag: IntGaugeVec,
    pub consumed: IntCounterVec,
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| {
    let lag = IntGaugeVec::new(
        Opts::new(
            "locus_consumer_lag_records",
            "Records between the consumer's position and the partition's end",
        ),
        &["stage", "partition"],
    )
    .unwrap_or_else(|e| unreachable!("metric lag: {e}"));
    let consumed = IntCounterVec::new(
        Opts::new(
            "locus_consumer_records_total",
            "Records read and applied by the sink, per stage",
        ),
        &["stage"],
    )
    .unwrap_or_else(|e| unreachable!("metric consumed: {e}"));
    let _ = prometheus::register(Box::new(lag.clone()));
    let _ = prometheus::register(Box::new(consumed.clone()));
    Metrics { lag, consumed }
});
