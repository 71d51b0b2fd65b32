/// Errors of the last-position cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache config: {0}")]
    Config(String),
    #[error("Redis at {url}: {message}")]
    Redis { url: String, message: String },
    #[error(transparent)]
    Kafka(#[from] locus_kafka::KafkaError),
    #[error(transparent)]
    Codec(#[from] locus_schemas::CodecError),
}
