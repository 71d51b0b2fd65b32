use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::{ScyllaConfig, ScyllaError};

/// Opens a session to the configured nodes (without selecting a keyspace: the schema may
/// not exist yet).
pub async fn connect(cfg: &ScyllaConfig) -> Result<Session, ScyllaError> {
    cfg.validate()?;
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .connection_timeout(cfg.connect_timeout())
        .fetch_schema_metadata(cfg.fetch_schema_metadata);
    if !cfg.username.is_empty() {
        builder = builder.user(&cfg.username, cfg.password.expose());
    }
    if let Some(tls) = cfg.tls()? {
        builder = builder.tls_context(Some(tls));
    }
    let fut = builder.build();
    match tokio::time::timeout(cfg.connect_timeout(), fut).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(ScyllaError::Connect {
            nodes: cfg.nodes.join(","),
            timeout: cfg.connect_timeout(),
            source: Box::new(e),
        }),
        Err(elapsed) => Err(ScyllaError::Connect {
            nodes: cfg.nodes.join(","),
            timeout: cfg.connect_timeout(),
            source: Box::new(elapsed),
        }),
    }
}
