//! What every `locus` process has: logging, metrics, health endpoints, graceful shutdown.

pub mod auth;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod streaming;
pub mod telemetry;
