//! Live push (`locus push`): every replica reads all partitions of `locations` from the end
//! and pushes each fix to the dashboards that may see it, over Server-Sent Events.
//!
//! - [`hub`]: fan-out to per-stream queues (conflation, per-user rate cap, bounded).
//! - [`source`]: the live Kafka reader and the per-client replay of a resume.
//! - [`stream`]: `GET /v1/stream` (JWT auth, filters, snapshot, resume, heartbeats).
//! - [`cursor`]: event ids that encode Kafka positions.
//! - [`dashboard`]: the built dashboard page, served at `/`.
//! - [`groups`]: named sets of users a token may name, kept in a compacted topic, and their API.
//! - [`Snapshots`]: where a stream's opening snapshot comes from (supplied by the pipeline).

pub mod auth;
mod config;
pub mod cursor;
mod dashboard;
mod error;
pub mod groups;
pub mod hub;
mod metrics;
mod snapshot;
pub mod source;
pub mod stream;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

pub use auth::{Access, Authenticator, Claims, mint_hs256};
pub use config::PushConfig;
pub use error::PushError;
pub use hub::Hub;
pub use metrics::init as init_metrics;
pub use snapshot::{SnapshotError, SnapshotPosition, SnapshotQuery, Snapshots};
pub use stream::PushApi;

/// The path of the event stream.
pub const STREAM_PATH: &str = "/v1/stream";

/// `GET /v1/stream`, and the dashboard at `/`. `presence_s`: the cache's online and offline
/// thresholds, s, so the dashboard colours users as the position API does.
pub fn router(api: Arc<PushApi>, presence_s: (u64, u64)) -> Router {
    let dash = dashboard::router(&api.config, presence_s);
    Router::new()
        .route(STREAM_PATH, get(stream::stream))
        .with_state(api)
        .merge(dash)
}
