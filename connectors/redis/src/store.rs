//! The Redis layout and every command Locus sends.
//!
//! ```text
//! {prefix}:pos:{tenant}:{user}   hash: the user's newest fix
//! {prefix}:geo:{tenant}          GEO set of users (member = user id)
//! {prefix}:seen:{tenant}         sorted set: user → event time of the newest fix (ms)
//! {prefix}:tenants               set of tenants (for the sweeper)
//! ```
//!
//! A user's hash and last-seen entry are written together and removed together (by the
//! sweeper, once the user is not seen for `forget_after_s`), so memory stays bounded without
//! a per-update EXPIRE.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use locus_schemas::LocationFix;
use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::{CacheConfig, CacheError};

/// Moves users' state forward only, for a run of fixes of one tenant (one user each): a fix
/// is applied if its event time is newer than the stored one, atomically across the hashes,
/// the GEO set and the last-seen set. One call per run keeps Redis's per-call cost (the script
/// start, the reply) off the per-update path, and the run's GEO and last-seen writes are one
/// GEOADD and one ZADD: each fix costs an HGET and an HSET of its own.
/// KEYS: geo, seen, tenants, then one hash per fix. ARGV: tenant, then per fix
/// 11 values: user, ts, lat, lon, device, seq, speed, heading, accuracy,
/// battery, received_at. Returns how many fixes were applied.
pub const UPDATE_SCRIPT: &str = r#"
local geo, seen, n = {}, {}, 0
local call, num = redis.call, tonumber
for i = 4, #KEYS do
  local a = (i - 4) * 11
  local key, ts = KEYS[i], ARGV[a + 3]
  local cur = call('HGET', key, 'ts')
  if not cur or num(cur) < num(ts) then
    local user, lat, lon = ARGV[a + 2], ARGV[a + 4], ARGV[a + 5]
    call('HSET', key, 'ts', ts, 'lat', lat, 'lon', lon,
      'device_id', ARGV[a + 6], 'seq', ARGV[a + 7], 'speed_mps', ARGV[a + 8],
      'heading_deg', ARGV[a + 9], 'accuracy_m', ARGV[a + 10], 'battery_pct', ARGV[a + 11],
      'received_at', ARGV[a + 12])
    geo[3 * n + 1], geo[3 * n + 2], geo[3 * n + 3] = lon, lat, user
    seen[2 * n + 1], seen[2 * n + 2] = ts, user
    n = n + 1
  end
end
if n > 0 then
  call('GEOADD', KEYS[1], unpack(geo))
  call('ZADD', KEYS[2], unpack(seen))
  call('SADD', KEYS[3], ARGV[1])
end
return n
"#;

/// Fixes per script call at most: keeps one call's unpack() within Lua's stack limit and
/// its run time (Redis does nothing else meanwhile) around a few milliseconds.
pub const UPDATE_CHUNK: usize = 500;

/// Forgets users last seen before ARGV[1]: each candidate (ARGV[2..], its hash in KEYS[3..])
/// is checked again and, if still that old, removed from the GEO set (KEYS[1]), the last-seen
/// set (KEYS[2]) and its hash deleted, atomically (a user updated meanwhile stays). Returns
/// how many were removed.
const SWEEP: &str = r#"
local n = 0
for i = 3, #KEYS do
  local user = ARGV[i - 1]
  local seen = redis.call('ZSCORE', KEYS[2], user)
  if seen and tonumber(seen) < tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], user)
    redis.call('ZREM', KEYS[2], user)
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
"#;

/// Users per sweep call.
const SWEEP_CHUNK: usize = 500;

/// Online, stale or offline, from the age of the last fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Stale,
    Offline,
}

impl Presence {
    pub fn parse(s: &str) -> Option<Presence> {
        match s {
            "online" => Some(Presence::Online),
            "stale" => Some(Presence::Stale),
            "offline" => Some(Presence::Offline),
            _ => None,
        }
    }
}

/// A user's last position as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Position {
    pub user_id: String,
    pub device_id: String,
    pub seq: i64,
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub battery_pct: Option<i64>,
    pub received_at: i64,
    pub status: Presence,
    pub age_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

#[derive(Clone)]
pub struct CacheStore {
    conn: ConnectionManager,
    cfg: CacheConfig,
    sha: String,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("prefix", &self.cfg.key_prefix)
            .finish_non_exhaustive()
    }
}

fn redis_err(cfg: &CacheConfig, e: impl std::fmt::Display) -> CacheError {
    CacheError::Redis {
        url: cfg.redacted().redis_url,
        message: e.to_string(),
    }
}

impl CacheStore {
    pub async fn connect(cfg: &CacheConfig) -> Result<CacheStore, CacheError> {
        cfg.validate()?;
        let client = redis::Client::open(cfg.redis_url.as_str()).map_err(|e| redis_err(cfg, e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| redis_err(cfg, "no answer within 5 s"))?
        .map_err(|e| redis_err(cfg, e))?;
        let mut store = CacheStore {
            conn,
            cfg: cfg.clone(),
            sha: String::new(),
        };
        store.sha = store.load_script().await?;
        Ok(store)
    }

    async fn load_script(&self) -> Result<String, CacheError> {
        let mut c = self.conn.clone();
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(UPDATE_SCRIPT)
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    fn key(&self, kind: &str, tenant: &str) -> String {
        format!("{}:{kind}:{tenant}", self.cfg.key_prefix)
    }

    fn pos_key(&self, tenant: &str, user: &str) -> String {
        format!("{}:pos:{tenant}:{user}", self.cfg.key_prefix)
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| redis_err(&self.cfg, e))
    }

    /// Applies fixes in one pipeline; returns how many moved a user forward. Within the
    /// batch only each user's newest fix is sent (the others could not win anyway).
    pub async fn update(&self, fixes: &[LocationFix]) -> Result<usize, CacheError> {
        let Some(pipe) = self.update_pipeline(&self.sha, fixes) else {
            return Ok(0);
        };
        let mut c = self.conn.clone();
        let result: Result<Vec<i64>, redis::RedisError> = pipe.query_async(&mut c).await;
        let applied = match result {
            Ok(v) => v,
            // Redis restarted or was flushed: the script is gone. Load it and go again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let sha = self.load_script().await?;
                self.update_pipeline(&sha, fixes)
                    .unwrap_or_else(redis::pipe)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| redis_err(&self.cfg, e))?
            }
            Err(e) => return Err(redis_err(&self.cfg, e)),
        };
        Ok(applied.iter().sum::<i64>() as usize)
    }

    /// The script's SHA1, as loaded when the store connected.
    pub fn script_sha(&self) -> &str {
        &self.sha
    }

    /// The commands [`CacheStore::update`] sends for `fixes` (one script call per tenant and
    /// run of [`UPDATE_CHUNK`] users, each user's newest fix only), or `None` if there are
    /// none. Public so that the benchmark can send exactly these commands raw.
    pub fn update_pipeline(&self, sha: &str, fixes: &[LocationFix]) -> Option<redis::Pipeline> {
        let mut newest: HashMap<(&str, &str), &LocationFix> = HashMap::new();
        for f in fixes {
            let e = newest.entry((&f.tenant, &f.user_id)).or_insert(f);
            if f.ts > e.ts {
                *e = f;
            }
        }
        if newest.is_empty() {
            return None;
        }
        let mut by_tenant: HashMap<&str, Vec<&LocationFix>> = HashMap::new();
        for ((tenant, _), f) in newest {
            by_tenant.entry(tenant).or_default().push(f);
        }
        let tenants = format!("{}:tenants", self.cfg.key_prefix);
        let mut pipe = redis::pipe();
        for (tenant, fixes) in &by_tenant {
            for run in fixes.chunks(UPDATE_CHUNK) {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(sha)
                    .arg(3 + run.len())
                    .arg(self.key("geo", tenant))
                    .arg(self.key("seen", tenant))
                    .arg(&tenants);
                for f in run {
                    cmd.arg(self.pos_key(tenant, &f.user_id));
                }
                cmd.arg(*tenant);
                for f in run {
                    cmd.arg(&f.user_id)
                        .arg(f.ts)
                        .arg(f.lat)
                        .arg(f.lon)
                        .arg(&f.device_id)
                        .arg(f.seq)
                        .arg(opt(f.speed_mps))
                        .arg(opt(f.heading_deg))
                        .arg(opt(f.accuracy_m))
                        .arg(opt(f.battery_pct))
                        .arg(f.received_at);
                }
            }
        }
        Some(pipe)
    }

    fn presence(&self, ts: i64, now: i64) -> (Presence, f64) {
        let age_s = ((now - ts).max(0) as f64) / 1000.0;
        let p = if age_s < self.cfg.online_s as f64 {
            Presence::Online
        } else if age_s < self.cfg.offline_s as f64 {
            Presence::Stale
        } else {
            Presence::Offline
        };
        (p, age_s)
    }

    fn to_position(&self, user: &str, h: &HashMap<String, String>, now: i64) -> Option<Position> {
        let num = |k: &str| {
            h.get(k)
                .filter(|v| !v.is_empty())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let int = |k: &str| {
            h.get(k)
                .filter(|v| !v.is_empty())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let ts = int("ts")?;
        let (status, age_s) = self.presence(ts, now);
        Some(Position {
            user_id: user.to_string(),
            device_id: h.get("device_id").cloned().unwrap_or_default(),
            seq: int("seq").unwrap_or(0),
            ts,
            lat: num("lat")?,
            lon: num("lon")?,
            speed_mps: num("speed_mps"),
            heading_deg: num("heading_deg"),
            accuracy_m: num("accuracy_m"),
            battery_pct: int("battery_pct"),
            received_at: int("received_at").unwrap_or(0),
            status,
            age_s,
            distance_m: None,
        })
    }

    pub async fn position(&self, tenant: &str, user: &str) -> Result<Option<Position>, CacheError> {
        let mut c = self.conn.clone();
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.pos_key(tenant, user))
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))?;
        Ok(self.to_position(user, &h, now_ms()))
    }

    async fn positions_of(
        &self,
        tenant: &str,
        users: &[(String, Option<f64>)],
    ) -> Result<Vec<Position>, CacheError> {
        if users.is_empty() {
            return Ok(vec![]);
        }
        let mut pipe = redis::pipe();
        for (u, _) in users {
            pipe.cmd("HGETALL").arg(self.pos_key(tenant, u));
        }
        let mut c = self.conn.clone();
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))?;
        let now = now_ms();
        Ok(users
            .iter()
            .zip(hashes)
            .filter_map(|((u, d), h)| {
                let mut p = self.to_position(u, &h, now)?;
                p.distance_m = *d;
                Some(p)
            })
            .collect())
    }

    /// The positions of these users (those the cache has).
    pub async fn positions(
        &self,
        tenant: &str,
        users: &[String],
    ) -> Result<Vec<Position>, CacheError> {
        let users: Vec<(String, Option<f64>)> = users.iter().map(|u| (u.clone(), None)).collect();
        self.positions_of(tenant, &users).await
    }

    /// The `limit` users of the tenant seen most recently, newest first.
    pub async fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<Position>, CacheError> {
        let mut c = self.conn.clone();
        let found: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.key("seen", tenant))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))?;
        let users: Vec<(String, Option<f64>)> = found.into_iter().map(|u| (u, None)).collect();
        self.positions_of(tenant, &users).await
    }

    /// Users within `radius_m` of (lat, lon), nearest first.
    pub async fn nearby(
        &self,
        tenant: &str,
        lat: f64,
        lon: f64,
        radius_m: f64,
        limit: usize,
    ) -> Result<Vec<Position>, CacheError> {
        let mut c = self.conn.clone();
        let found: Vec<(String, f64)> = redis::cmd("GEOSEARCH")
            .arg(self.key("geo", tenant))
            .arg("FROMLONLAT")
            .arg(lon)
            .arg(lat)
            .arg("BYRADIUS")
            .arg(radius_m)
            .arg("m")
            .arg("ASC")
            .arg("COUNT")
            .arg(limit)
            .arg("WITHDIST")
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))?;
        let users: Vec<(String, Option<f64>)> =
            found.into_iter().map(|(u, d)| (u, Some(d))).collect();
        self.positions_of(tenant, &users).await
    }

    /// Users inside the box, optionally of one presence.
    pub async fn in_bbox(
        &self,
        tenant: &str,
        (min_lon, min_lat, max_lon, max_lat): (f64, f64, f64, f64),
        status: Option<Presence>,
        limit: usize,
    ) -> Result<Vec<Position>, CacheError> {
        // GEOSEARCH BYBOX takes a centre and a size in metres: search the enclosing box, then
        // keep what is inside the requested degrees exactly.
        let clat = (min_lat + max_lat) / 2.0;
        let clon = (min_lon + max_lon) / 2.0;
        let h = (max_lat - min_lat) * 111_320.0 * 1.01 + 10.0;
        let w = (max_lon - min_lon)
            * 111_320.0
            * min_lat
                .to_radians()
                .cos()
                .max(max_lat.to_radians().cos())
                .max(0.0)
            * 1.01
            + 10.0;
        let mut c = self.conn.clone();
        let found: Vec<String> = redis::cmd("GEOSEARCH")
            .arg(self.key("geo", tenant))
            .arg("FROMLONLAT")
            .arg(clon)
            .arg(clat)
            .arg("BYBOX")
            .arg(w.max(1.0))
            .arg(h.max(1.0))
            .arg("m")
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))?;
        let users: Vec<(String, Option<f64>)> = found.into_iter().map(|u| (u, None)).collect();
        let mut out: Vec<Position> = self
            .positions_of(tenant, &users)
            .await?
            .into_iter()
            .filter(|p| {
                p.lat >= min_lat && p.lat <= max_lat && p.lon >= min_lon && p.lon <= max_lon
            })
            .filter(|p| status.is_none_or(|s| p.status == s))
            .collect();
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        out.truncate(limit);
        Ok(out)
    }

    /// Forgets users not seen for `forget_after_s`: their hash, GEO member and last-seen
    /// entry, in every tenant. Returns how many were removed.
    pub async fn sweep(&self) -> Result<usize, CacheError> {
        let mut c = self.conn.clone();
        let tenants: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:tenants", self.cfg.key_prefix))
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.cfg, e))?;
        let cutoff = now_ms() - (self.cfg.forget_after_s as i64) * 1000;
        let mut removed = 0;
        for t in tenants {
            let (geo, seen) = (self.key("geo", &t), self.key("seen", &t));
            loop {
                let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&seen)
                    .arg("-inf")
                    .arg(format!("({cutoff}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(SWEEP_CHUNK)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| redis_err(&self.cfg, e))?;
                if old.is_empty() {
                    break;
                }
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SWEEP).arg(2 + old.len()).arg(&geo).arg(&seen);
                for u in &old {
                    cmd.arg(self.pos_key(&t, u));
                }
                cmd.arg(cutoff).arg(&old);
                let n: usize = cmd
                    .query_async(&mut c)
                    .await
                    .map_err(|e| redis_err(&self.cfg, e))?;
                removed += n;
                if old.len() < SWEEP_CHUNK {
                    break;
                }
            }
        }
        Ok(removed)
    }
}
