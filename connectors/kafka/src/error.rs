/// Errors of the Kafka connector.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid kafka config: {0}")]
    Config(String),
    #[error("cannot create the Kafka client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("Kafka at {brokers} did not answer a metadata request: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic '{0}' does not exist (create it with `locus topics apply`)")]
    MissingTopic(String),
    #[error("reading {topic} stalled: nothing arrived for {idle:?} (next offsets {positions:?})")]
    Stalled {
        topic: String,
        idle: std::time::Duration,
        positions: Vec<(i32, i64)>,
    },
    #[error("Kafka read failed: {0}")]
    Read(#[source] rdkafka::error::KafkaError),
    #[error("the sink failed: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("blocking task failed: {0}")]
    Join(String),
}
