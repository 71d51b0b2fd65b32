use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::{KafkaConfig, KafkaError};

fn admin(cfg: &KafkaConfig, stage: &str) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    cfg.client_config(stage)
        .create()
        .map_err(KafkaError::Client)
}

/// Asks the cluster for metadata: Ok when a broker answers within the request timeout.
pub async fn check_reachable(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let admin = admin(&cfg, "health")?;
        admin
            .inner()
            .fetch_metadata(None, Duration::from_millis(cfg.request_timeout_ms))
            .map(|_| ())
            .map_err(|source| KafkaError::Unreachable {
                brokers: cfg.brokers.clone(),
                source,
            })
    })
    .await
    .map_err(|e| KafkaError::Join(e.to_string()))?
}

/// Number of partitions of `topic`, or `MissingTopic`.
pub async fn partition_count(cfg: &KafkaConfig, topic: &str) -> Result<usize, KafkaError> {
    let cfg = cfg.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let admin = admin(&cfg, "health")?;
        let md = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_millis(cfg.request_timeout_ms))
            .map_err(|source| KafkaError::Unreachable {
                brokers: cfg.brokers.clone(),
                source,
            })?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len())
            }
            _ => Err(KafkaError::MissingTopic(topic)),
        }
    })
    .await
    .map_err(|e| KafkaError::Join(e.to_string()))?
}

/// The partition ids of `topic` in a metadata answer (empty if the topic is missing or
/// answered with an error).
pub fn partitions_of(md: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default()
}
