use locus_schemas::Secret;
use serde::{Deserialize, Serialize};

use crate::PushError;

/// `[push]`: the live push stage (`locus push`): Kafka → SSE, and the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// HS256 secret that signs dashboard tokens (empty: HS256 not accepted).
    #[serde(default)]
    pub jwt_hs256_secret: Secret,
    /// PEM files of RSA (RS256) or EC P-256 (ES256) public keys that may sign tokens.
    #[serde(default)]
    pub jwt_public_key_files: Vec<String>,
    /// Required `iss` claim (empty: not checked).
    #[serde(default)]
    pub jwt_issuer: String,
    /// Required `aud` claim (empty: not checked).
    #[serde(default)]
    pub jwt_audience: String,
    /// Clock skew allowed on `exp` / `nbf`, s.
    #[serde(default = "default_leeway_s")]
    pub jwt_leeway_s: u64,
    /// Most users in one group (`PUT /v1/tenants/{t}/groups/{g}`); a larger one is a 413.
    #[serde(default = "default_groups_max_users")]
    pub groups_max_users: usize,
    /// Most concurrent streams per process; beyond it 503 with `Retry-After`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most concurrent streams of one tenant per process (0: no cap besides
    /// `max_connections`); beyond it 429 with `Retry-After`, so one tenant cannot take every
    /// slot.
    #[serde(default)]
    pub max_connections_per_tenant: usize,
    /// Events per second per user per stream (0: no cap). Fixes in between supersede each
    /// other: the stream gets the latest when the user's next slot comes.
    #[serde(default = "default_user_rate_per_s")]
    pub user_rate_per_s: f64,
    /// Most users with an undelivered fix per stream; a stream that falls further behind is
    /// closed (the client resumes with `Last-Event-ID`).
    #[serde(default = "default_max_pending_users")]
    pub max_pending_users: usize,
    /// Seconds between heartbeat comments on an idle stream.
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    /// Reconnect delay the browser is told (`retry:`), ms.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Most positions in a `snapshot` event.
    #[serde(default = "default_snapshot_max")]
    pub snapshot_max: usize,
    /// A resume that would replay more records than this gets a `gap` and a fresh snapshot.
    #[serde(default = "default_resume_max_records")]
    pub resume_max_records: u64,
    /// Resumes replaying from Kafka at the same time (each uses its own reader).
    #[serde(default = "default_max_concurrent_resumes")]
    pub max_concurrent_resumes: usize,
    /// Directory of the built dashboard (`make dashboard`); served at `/`.
    #[serde(default = "default_dashboard_dir")]
    pub dashboard_dir: String,
    /// Base-map tile URL template for the dashboard (`https://.../{z}/{x}/{y}.png`); empty:
    /// no base map, the dashboard draws without network access.
    #[serde(default)]
    pub tile_url: String,
    /// Attribution shown with the tiles.
    #[serde(default)]
    pub tile_attribution: String,
}

fn default_leeway_s() -> u64 {
    30
}
fn default_groups_max_users() -> usize {
    20_000
}
fn default_max_connections() -> usize {
    25_000
}
fn default_user_rate_per_s() -> f64 {
    1.0
}
fn default_max_pending_users() -> usize {
    50_000
}
fn default_heartbeat_s() -> u64 {
    15
}
fn default_retry_ms() -> u64 {
    2000
}
fn default_snapshot_max() -> usize {
    10_000
}
fn default_resume_max_records() -> u64 {
    200_000
}
fn default_max_concurrent_resumes() -> usize {
    8
}
fn default_dashboard_dir() -> String {
    "connectors/sse/dashboard/dist".into()
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            jwt_hs256_secret: Secret::default(),
            jwt_public_key_files: vec![],
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_leeway_s: default_leeway_s(),
            groups_max_users: default_groups_max_users(),
            max_connections: default_max_connections(),
            max_connections_per_tenant: 0,
            user_rate_per_s: default_user_rate_per_s(),
            max_pending_users: default_max_pending_users(),
            heartbeat_s: default_heartbeat_s(),
            retry_ms: default_retry_ms(),
            snapshot_max: default_snapshot_max(),
            resume_max_records: default_resume_max_records(),
            max_concurrent_resumes: default_max_concurrent_resumes(),
            dashboard_dir: default_dashboard_dir(),
            tile_url: String::new(),
            tile_attribution: String::new(),
        }
    }
}

impl PushConfig {
    pub fn validate(&self) -> Result<(), PushError> {
        let bad = |m: String| Err(PushError::Config(m));
        if !self.jwt_hs256_secret.expose().is_empty() && self.jwt_hs256_secret.expose().len() < 32 {
            return bad("push.jwt_hs256_secret must be at least 32 bytes".into());
        }
        if self.max_connections == 0 {
            return bad("push.max_connections must be at least 1".into());
        }
        if !self.user_rate_per_s.is_finite() || self.user_rate_per_s < 0.0 {
            return bad(format!(
                "push.user_rate_per_s must be 0 (no cap) or positive, got {}",
                self.user_rate_per_s
            ));
        }
        if self.max_pending_users == 0 || self.heartbeat_s == 0 || self.snapshot_max == 0 {
            return bad(
                "push.max_pending_users, push.heartbeat_s and push.snapshot_max must be at least 1"
                    .into(),
            );
        }
        if self.max_concurrent_resumes == 0 {
            return bad("push.max_concurrent_resumes must be at least 1".into());
        }
        let url = &self.tile_url;
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return bad(format!(
                "push.tile_url must be an http(s) URL template, got '{}'",
                self.tile_url
            ));
        }
        Ok(())
    }
}
