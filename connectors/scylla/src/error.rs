use std::time::Duration;

/// Errors of the Cassandra/Scylla connector.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    #[error("invalid scylla config: {0}")]
    Config(String),
    /// A statement failed: what was being done, and the driver's error.
    #[error("Cassandra/Scylla, {what}: {source}")]
    Query {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The nodes refused a statement for itself or its values (invalid, too large), not for
    /// the cluster's state: sent again unchanged it fails again.
    #[error("Cassandra/Scylla refused {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot connect to Cassandra/Scylla at {nodes} within {timeout:?}: {source}")]
    Connect {
        nodes: String,
        timeout: Duration,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ScyllaError {
    /// For `map_err`: a failed statement, saying what it was doing.
    pub(crate) fn query<E>(what: impl Into<String>) -> impl FnOnce(E) -> ScyllaError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let what = what.into();
        move |e| ScyllaError::Query {
            what,
            source: Box::new(e),
        }
    }
}
