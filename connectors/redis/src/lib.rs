//! The last-position cache: Kafka → Redis, and "where is everyone now" queries.
//!
//! Per user a hash with the latest fix; per tenant a GEO set (spatial queries) and a last-seen
//! sorted set (presence, sweeping). One Lua script per update moves state only forward in event
//! time, so a late or replayed fix never moves a user back. Redis is a cache: `rebuild` refills
//! it from the topic.

mod api;
mod config;
mod error;
mod metrics;
mod rebuild;
mod sink;
mod store;

pub use api::{PositionsApi, router};
pub use config::CacheConfig;
pub use error::CacheError;
pub use metrics::init as init_metrics;
pub use rebuild::rebuild;
pub use sink::{CacheSink, sweep_loop};
pub use store::{CacheStore, Position, Presence, UPDATE_CHUNK, UPDATE_SCRIPT};
