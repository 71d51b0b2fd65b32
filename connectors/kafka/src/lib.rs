//! Kafka plumbing shared by every Locus stage: connection settings, the producer, the
//! at-least-once consumer runner, the bounded range reader (rebuild, resume, replay),
//! dead-lettering, retry backoff and health checks.

mod backoff;
mod config;
mod consumer;
mod dead_letter;
mod error;
mod health;
pub mod metrics;
mod producer;
mod reader;

pub use backoff::Backoff;
pub use config::{KafkaConfig, ProducerSettings};
pub use consumer::{Record, RunnerSettings, Sink, run as run_consumer};
pub use dead_letter::{DECODE_REASONS, DeadLetter, INVALID_FIX, clip};
pub use error::KafkaError;
pub use health::{check_reachable, partition_count, partitions_of};
pub use metrics::StageMetrics;
pub use producer::{Delivered, DeliveryError, Pending, Producer};
pub use reader::{PartitionRange, Progress, RangeReader, Split, StartAt, StopAt};

/// Re-exported so stages use the same rdkafka as this crate.
pub use rdkafka;
