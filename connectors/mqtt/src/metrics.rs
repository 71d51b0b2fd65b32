//! Every metric the bridge emits (names follow `locus_<stage>_<noun>_<unit>`).

use std::sync::LazyLock;

use locus_kafka::metrics::{buckets, counter, counter_vec, gauge, histogram};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

pub struct Metrics {
    pub received: IntCounter,
    pub produced: IntCounter,
    pub acked: IntCounter,
    pub dlq: IntCounterVec,
    pub dlq_dropped: IntCounter,
    pub produce_retries: IntCounter,
    pub in_flight: IntGauge,
    pub overflow: IntGauge,
    pub read_pauses: IntCounter,
    pub produce_latency: Histogram,
    pub freshness: Histogram,
    pub mqtt_connected: IntGauge,
    pub mqtt_errors: IntCounter,
    pub registry_retries: IntCounter,
    pub stale_acks: IntCounter,
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| {
    let dlq = counter_vec(
        "locus_bridge_dlq_messages_total",
        "Messages (or batch elements) sent to the DLQ, by reason",
        &["reason"],
    );
    Metrics {
        received: counter(
            "locus_bridge_messages_received_total",
            "MQTT messages received",
        ),
        produced: counter(
            "locus_bridge_fixes_produced_total",
            "Fixes acknowledged by Kafka on the locations topic",
        ),
        acked: counter(
            "locus_bridge_messages_acked_total",
            "MQTT messages acknowledged (PUBACK) after delivery",
        ),
        dlq,
        produce_retries: counter(
            "locus_bridge_produce_retries_total",
            "Records sent again because Kafka did not take them (broker down, leader moving, ...)",
        ),
        in_flight: gauge(
            "locus_bridge_in_flight_messages",
            "MQTT messages received and not yet acknowledged",
        ),
        overflow: gauge(
            "locus_bridge_overflow_messages",
            "Messages the broker sent beyond the receive maximum, held until the pipeline has room",
        ),
        read_pauses: counter(
            "locus_bridge_read_pauses_total",
            "Times the bridge stopped reading from the broker because it held bridge.max_held_messages",
        ),
        produce_latency: histogram(
            "locus_bridge_produce_latency_seconds",
            "From receiving an MQTT message to Kafka acknowledging all its records",
            buckets(0.0005, 2.0, 16),
        ),
        freshness: histogram(
            "locus_bridge_freshness_seconds",
            "Receive time minus event time of each valid fix",
            buckets(0.01, 2.5, 16),
        ),
        mqtt_connected: gauge(
            "locus_bridge_mqtt_connected",
            "1 while connected to the MQTT broker",
        ),
        mqtt_errors: counter(
            "locus_bridge_mqtt_connection_errors_total",
            "MQTT connection errors (each followed by a reconnect)",
        ),
        registry_retries: counter(
            "locus_bridge_registry_retries_total",
            "Avro encodes retried because the Schema Registry did not answer",
        ),
        stale_acks: counter(
            "locus_bridge_stale_acks_dropped_total",
            "PUBACKs not sent because the broker started a new session since the message came \
             (its packet ids name new messages; the old message is sent again)",
        ),
        dlq_dropped: counter(
            "locus_bridge_dlq_dropped_total",
            "Rejected messages acknowledged without a DLQ record because Kafka refused even \
             the record without the message's bytes",
        ),
    }
});

/// Registers every metric now, so `/metrics` lists them from the start.
pub fn init() {
    LazyLock::force(&M);
}
