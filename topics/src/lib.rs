//! Declarative Kafka topics: `topics.yaml` is the truth, [`plan`] compares it with the live
//! cluster and [`apply`] makes the cluster match — creating topics, adding partitions and
//! setting configs, and refusing (clearly) what Kafka cannot do, like removing partitions.

mod error;
mod incremental;
mod plan;
mod render;
mod spec;

pub use error::TopicsError;
pub use plan::{Change, Plan, apply, live_config, plan};
pub use render::{STRIMZI_HEADER, render_strimzi, strimzi_name};
pub use spec::{TopicSpec, TopicsFile};

/// The `topics.yaml` shipped with Locus.
pub const DEFAULT_TOPICS_YAML: &str = include_str!("../topics.yaml");
