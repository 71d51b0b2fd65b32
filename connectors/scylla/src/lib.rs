//! Cassandra/ScyllaDB connector for Locus: sessions, the history writer (`locus history`:
//! Kafka → the history table, at-least-once, idempotent by event time) and the track query API.

mod api;
mod config;
mod error;
mod metrics;
mod session;
mod sink;
mod store;

pub use api::{TrackApi, router};
pub use config::{BatchGrouping, HistoryConfig, ScyllaConfig};
pub use error::ScyllaError;
pub use locus_schemas::Secret;
pub use metrics::init as init_metrics;
pub use session::connect;
pub use sink::HistorySink;
pub use store::{Cursor, HistoryStore, migrate, token_of};
