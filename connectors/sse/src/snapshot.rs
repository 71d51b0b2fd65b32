//! Where a stream's opening snapshot comes from. The push stage does not know the store: the
//! pipeline supplies one (the last-position cache) through [`Snapshots`], so this connector
//! depends on Kafka and the schemas only.

use futures::future::BoxFuture;

/// What a snapshot asks for: the stream's own filter.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotQuery<'a> {
    /// These users (at most `limit`).
    Users(&'a [String]),
    /// Users inside `[min_lon, min_lat, max_lon, max_lat]`.
    BBox([f64; 4]),
    /// The most recently seen users.
    Recent,
}

/// One user's last position as the snapshot event carries it.
#[derive(Debug, Clone)]
pub struct SnapshotPosition {
    pub lat: f64,
    pub lon: f64,
    /// The position as sent in the `snapshot` event.
    pub json: serde_json::Value,
}

/// Why a source could not answer (its own error, kept whole).
pub type SnapshotError = Box<dyn std::error::Error + Send + Sync>;

/// A source of last positions.
pub trait Snapshots: Send + Sync + std::fmt::Debug + 'static {
    fn snapshot<'a>(
        &'a self,
        tenant: &'a str,
        query: SnapshotQuery<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SnapshotPosition>, SnapshotError>>;
}
