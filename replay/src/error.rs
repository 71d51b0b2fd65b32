/// Errors of a replay: which step failed, and what caused it.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Refused before anything was read: the arguments cannot describe a readable window.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Kafka(#[from] locus_kafka::KafkaError),
    #[error("Kafka: {0}")]
    Client(#[from] locus_kafka::rdkafka::error::KafkaError),
    #[error(transparent)]
    Codec(#[from] locus_schemas::CodecError),
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(
        "the window holds more than {max} fixes (replay.max_fixes): narrow it by time, tenant, users or bbox"
    )]
    TooLarge { max: usize },
    /// A bug: a worker thread of the export failed.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("interrupted before the end of the window (an export file is not left behind)")]
    Interrupted,
}
