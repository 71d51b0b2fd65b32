//! Kafka plumbing shared by every Locus stage: connection settings, the producer and the
//! at-least-once consumer runner (added with the stages that use them), and health checks.

mod config;
mod consumer;
mod error;
mod health;
mod metrics;
mod producer;

pub use config::{KafkaConfig, ProducerSettings};
pub use consumer::{Record, RunnerSettings, Sink, run as run_consumer};
pub use error::KafkaError;
pub use health::{check_reachable, partition_count};
pub use producer::{Delivered, DeliveryError, Pending, Producer};

/// Re-exported so stages use the same rdkafka as this crate.
pub use rdkafka;
