/// Errors that stop the bridge from starting (bad input never does: it goes to the DLQ).
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid bridge config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] locus_kafka::KafkaError),
    #[error(transparent)]
    Codec(#[from] locus_schemas::CodecError),
    #[error("cannot open the local MQTT relay socket: {0}")]
    Relay(std::io::Error),
    #[error("MQTT: {0}")]
    Mqtt(String),
}
