//! Cassandra/ScyllaDB connector for Locus.
//!
//! Today: the connection settings and session set-up shared by every stage that talks to
//! Cassandra or ScyllaDB. The history writer and its queries build on it.

mod config;
mod error;
mod session;

pub use config::ScyllaConfig;
pub use error::ScyllaError;
pub use locus_schemas::Secret;
pub use session::connect;
