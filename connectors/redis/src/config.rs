use serde::{Deserialize, Serialize};

use crate::CacheError;

/// `[cache]`: the last-position cache (`locus cache`) and its queries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Redis URL (`redis://host:port/db`, `rediss://` for TLS; credentials in the URL are
    /// redacted by `config check`). Several URLs separated by commas spread the users over as
    /// many Redis servers (shards), each user on one of them by a hash of (tenant, user).
    #[serde(default = "default_url")]
    pub redis_url: String,
    /// Prefix of every key Locus writes.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Kafka consumer group.
    #[serde(default = "default_group")]
    pub group: String,
    /// Most records per consumer batch / Redis pipeline, and how long a batch waits to fill.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// Consumer batches applied concurrently.
    #[serde(default = "default_max_in_flight_batches")]
    pub max_in_flight_batches: usize,
    /// A user is `online` while its last fix is younger than this, s ...
    #[serde(default = "default_online_s")]
    pub online_s: u64,
    /// ... `stale` while younger than this, and `offline` after, s.
    #[serde(default = "default_offline_s")]
    pub offline_s: u64,
    /// Users not seen for this long are forgotten by the sweeper (hash, GEO member and
    /// last-seen entry), s.
    #[serde(default = "default_forget_after_s")]
    pub forget_after_s: u64,
    /// How often the sweeper runs, s.
    #[serde(default = "default_sweep_interval_s")]
    pub sweep_interval_s: u64,
    /// Most results of a nearby or bbox query.
    #[serde(default = "default_query_max_results")]
    pub query_max_results: usize,
    /// Largest nearby radius, m.
    #[serde(default = "default_query_max_radius_m")]
    pub query_max_radius_m: f64,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379/0".into()
}
fn default_prefix() -> String {
    "locus".into()
}
fn default_group() -> String {
    "last-position".into()
}
fn default_max_batch() -> usize {
    2000
}
fn default_max_batch_wait_ms() -> u64 {
    20
}
fn default_max_in_flight_batches() -> usize {
    2
}
fn default_online_s() -> u64 {
    60
}
fn default_offline_s() -> u64 {
    600
}
fn default_forget_after_s() -> u64 {
    7 * 86_400
}
fn default_sweep_interval_s() -> u64 {
    60
}
fn default_query_max_results() -> usize {
    1000
}
fn default_query_max_radius_m() -> f64 {
    100_000.0
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: default_url(),
            key_prefix: default_prefix(),
            group: default_group(),
            max_batch: default_max_batch(),
            max_batch_wait_ms: default_max_batch_wait_ms(),
            max_in_flight_batches: default_max_in_flight_batches(),
            online_s: default_online_s(),
            offline_s: default_offline_s(),
            forget_after_s: default_forget_after_s(),
            sweep_interval_s: default_sweep_interval_s(),
            query_max_results: default_query_max_results(),
            query_max_radius_m: default_query_max_radius_m(),
        }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), CacheError> {
        let bad = |m: &str| Err(CacheError::Config(m.to_string()));
        for url in self.shard_urls() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad(
                    "cache.redis_url must be one URL, or several separated by commas, each starting with redis:// or rediss://",
                );
            }
        }
        let mut urls = self.shard_urls();
        urls.sort_unstable();
        if urls.windows(2).any(|w| w[0] == w[1]) {
            return bad("cache.redis_url lists the same shard twice");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains([' ', '{', '}']) {
            return bad("cache.key_prefix must be non-empty, without spaces or braces");
        }
        if self.group.is_empty() || self.max_batch == 0 || self.max_in_flight_batches == 0 {
            return bad("cache.group, max_batch and max_in_flight_batches must be set and > 0");
        }
        if self.online_s == 0
            || self.offline_s <= self.online_s
            || self.forget_after_s < self.offline_s
        {
            return bad("cache thresholds must satisfy 0 < online_s < offline_s <= forget_after_s");
        }
        if self.sweep_interval_s == 0
            || self.query_max_results == 0
            || self.query_max_radius_m <= 0.0
        {
            return bad(
                "cache.sweep_interval_s, query_max_results and query_max_radius_m must be > 0",
            );
        }
        Ok(())
    }

    /// The shards' URLs, in order (one unless `redis_url` lists several).
    pub fn shard_urls(&self) -> Vec<&str> {
        self.redis_url.split(',').map(str::trim).collect()
    }

    /// The URLs with any password replaced, for printing.
    pub fn redacted(&self) -> CacheConfig {
        let mut c = self.clone();
        c.redis_url = self
            .shard_urls()
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
        c
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`, and a `pass` / `password`
/// query parameter (`redis+unix:///run/redis.sock?pass=…`) → `pass=***`. The user info ends
/// at the last `@`, so a password holding `@` is hidden whole.
pub fn redact_url(url: &str) -> String {
    // The user info ends at the last `@` (a password may hold `@`, `?` or `/`); what follows
    // is host, path and query.
    let with_host = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    let (body, query) = match with_host.split_once('?') {
        Some((b, q)) => (b.to_string(), Some(q.to_string())),
        None => (with_host, None),
    };
    let mut out = body;
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> CacheConfig {
        CacheConfig {
            redis_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn shards_are_listed_with_commas_and_each_is_checked() {
        let c = with_url("redis://a:6379/0, rediss://b:6380/1");
        assert_eq!(
            c.shard_urls(),
            vec!["redis://a:6379/0", "rediss://b:6380/1"]
        );
        assert!(c.validate().is_ok());
        for bad in [
            "redis://a:6379/0,http://b:6379/0",
            "redis://a:6379/0,",
            "redis://a:6379/0,redis://a:6379/0",
        ] {
            let e = with_url(bad).validate().unwrap_err().to_string();
            assert!(e.contains("cache.redis_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_form_of_url_password_is_redacted() {
        for (url, want) in [
            ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://u:pa?ss@host:6379", "redis://u:***@host:6379"),
            (
                "redis://user:s3cr@t@host:6379",
                "redis://user:***@host:6379",
            ),
            (
                "redis+unix:///run/redis.sock?db=0&pass=hunter2",
                "redis+unix:///run/redis.sock?db=0&pass=***",
            ),
            (
                "unix:///run/redis.sock?password=hunter2",
                "unix:///run/redis.sock?password=***",
            ),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
        assert_eq!(redact_url("redis://host:6379/0"), "redis://host:6379/0");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=2"),
            "redis+unix:///run/redis.sock?db=2"
        );
    }

    #[test]
    fn every_shards_password_is_redacted() {
        let c = with_url("redis://:s3cret@a:6379/0,redis://u:pw@b:6379/0,redis://c:6379/0");
        assert_eq!(
            c.redacted().redis_url,
            "redis://:***@a:6379/0,redis://u:***@b:6379/0,redis://c:6379/0"
        );
    }
}
