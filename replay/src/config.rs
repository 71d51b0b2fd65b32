//! `[replay]`: reading retained windows of `locations` (`locus replay`, the HTTP replay).

use serde::{Deserialize, Serialize};

/// `[replay]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// How late a fix may reach Kafka after its event time and still belong to its window,
    /// ms: a window `[from, to)` is read up to records produced at `to + lateness`. At most
    /// the bridge's `max_age_ms` (older fixes are refused at the bridge anyway).
    #[serde(default = "default_lateness_ms")]
    pub lateness_ms: i64,
    /// Most fixes one export or topic copy holds (it sorts them in memory); a larger window
    /// is refused with a hint to narrow it.
    #[serde(default = "default_max_fixes")]
    pub max_fixes: usize,
    /// Rows per Parquet row group.
    #[serde(default = "default_parquet_row_group_rows")]
    pub parquet_row_group_rows: usize,
    /// HTTP replays streaming at once per process; beyond it 503 with `Retry-After`.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Most fixes one HTTP replay streams.
    #[serde(default = "default_http_max_fixes")]
    pub http_max_fixes: usize,
    /// Longest window one HTTP replay may ask for, and longest it may take to play, ms: a
    /// dashboard cannot make the server read days of every tenant's traffic, nor hold a slot
    /// for days with a tiny speed.
    #[serde(default = "default_http_max_span_ms")]
    pub http_max_span_ms: i64,
}

fn default_lateness_ms() -> i64 {
    6 * 3600 * 1000
}
fn default_max_fixes() -> usize {
    10_000_000
}
fn default_parquet_row_group_rows() -> usize {
    128 * 1024
}
fn default_max_concurrent() -> usize {
    4
}
fn default_http_max_fixes() -> usize {
    200_000
}
fn default_http_max_span_ms() -> i64 {
    24 * 3600 * 1000
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            lateness_ms: default_lateness_ms(),
            max_fixes: default_max_fixes(),
            parquet_row_group_rows: default_parquet_row_group_rows(),
            max_concurrent: default_max_concurrent(),
            http_max_fixes: default_http_max_fixes(),
            http_max_span_ms: default_http_max_span_ms(),
        }
    }
}

impl ReplayConfig {
    pub fn validate(&self, max_age_ms: i64) -> Result<(), String> {
        if self.lateness_ms < 0 || self.lateness_ms > max_age_ms {
            return Err(format!(
                "replay.lateness_ms must be in [0, bridge.max_age_ms = {max_age_ms}], got {}",
                self.lateness_ms
            ));
        }
        if self.max_fixes == 0
            || self.parquet_row_group_rows == 0
            || self.max_concurrent == 0
            || self.http_max_span_ms <= 0
        {
            return Err(
                "replay.max_fixes, parquet_row_group_rows, max_concurrent and http_max_span_ms \
                 must be > 0"
                    .into(),
            );
        }
        if self.max_fixes > crate::table::MAX_ROWS {
            return Err(format!(
                "replay.max_fixes must be at most {}, got {}",
                crate::table::MAX_ROWS,
                self.max_fixes
            ));
        }
        Ok(())
    }
}
