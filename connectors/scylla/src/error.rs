use std::time::Duration;

/// Errors of the Cassandra/Scylla connector.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    #[error("invalid scylla config: {0}")]
    Config(String),
    #[error("Cassandra/Scylla query failed: {0}")]
    Query(String),
    #[error("cannot connect to Cassandra/Scylla at {nodes} within {timeout:?}: {source}")]
    Connect {
        nodes: String,
        timeout: Duration,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
