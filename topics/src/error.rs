/// Errors of the topic reconciler.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid topics file: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Kafka(#[from] locus_kafka::KafkaError),
    #[error("Kafka refused {operation}: {message}")]
    Admin { operation: String, message: String },
    #[error("the plan contains changes Kafka cannot make:\n  {}", .0.join("\n  "))]
    Refused(Vec<String>),
}
