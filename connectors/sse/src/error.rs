/// Errors of the push stage: which part failed and why.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("invalid push config: {0}")]
    Config(String),
    /// The live reader or a resume could not read `locations` (what was being done, and the
    /// client's message).
    #[error("Kafka: {0}")]
    Kafka(String),
    /// A bounded read (a resume) failed.
    #[error("reading for a resume: {0}")]
    Read(#[from] locus_kafka::KafkaError),
}
