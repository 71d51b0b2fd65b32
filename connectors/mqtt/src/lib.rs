//! The MQTT → Kafka bridge: where devices' fixes enter Locus.
//!
//! A shared subscription (`$share/<group>/<filter>`) on a persistent MQTT v5 session feeds
//! a bounded pipeline: parse and validate each message, produce every valid fix to the
//! locations topic (Avro, key = user id) and every rejected message to the DLQ with the
//! reason, and send the MQTT PUBACK only after Kafka acknowledged every record the message
//! produced. See README.md for the guarantee and the metrics.

mod config;
mod error;
mod metrics;
mod payload;
mod relay;
mod source;

pub use config::BridgeConfig;
pub use error::BridgeError;
pub use metrics::init as init_metrics;
pub use payload::{Rejection, TopicTemplate, parse_payload};
pub use source::{Bridge, BridgeHealth};
