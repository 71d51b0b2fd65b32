//! The Redis layout and every command Locus sends.
//!
//! ```text
//! {prefix}:pos:{tenant}:{user}   hash: the user's newest fix
//! {prefix}:geo:{tenant}          GEO set of users (member = user id)
//! {prefix}:seen:{tenant}         sorted set: user → event time of the newest fix (ms)
//! {prefix}:tenants               set of tenants (for the sweeper)
//! {prefix}:shard                 "i/n": this server is shard i of n (checked at connect)
//! ```
//!
//! A user's hash and last-seen entry are written together and removed together (by the
//! sweeper, once the user is not seen for `forget_after_s`), so memory stays bounded without
//! a per-update EXPIRE.
//!
//! With several Redis servers (`cache.redis_url` lists them), each user lives on one of them,
//! picked by a hash of (tenant, user), and each server holds the whole layout above for its
//! users: an update stays one atomic script call on one server, a position is one lookup, and
//! the bbox, nearby and recent queries ask every server and merge.

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
///
/// A fix beyond the latitudes Redis GEO can index (±85.05112878°, the Web Mercator limit) is
/// applied to the hash and the last-seen set but kept out of the GEO set (and its user taken
/// out of it, so nearby and bbox never answer with an older position): `position` has it,
/// `nearby` and bbox queries do not. GEOADD is therefore never given a value it refuses, so
/// the script cannot fail half-way.
pub const UPDATE_SCRIPT: &str = include_str!("lua/update.lua");

/// What one bbox search found.
struct BboxPass {
    positions: Vec<Position>,
    truncated: bool,
}

/// Fixes per script call at most: keeps one call's unpack() within Lua's stack limit and
/// its run time (Redis does nothing else meanwhile) around a few milliseconds.
pub const UPDATE_CHUNK: usize = 500;

/// Forgets users last seen before ARGV[1]: each candidate (ARGV[2..], its hash in KEYS[3..])
/// is checked again and, if still that old, removed from the GEO set (KEYS[1]), the last-seen
/// set (KEYS[2]) and its hash deleted, atomically (a user updated meanwhile stays). Returns
/// how many were removed.
const SWEEP: &str = include_str!("lua/sweep.lua");

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

/// One Redis server of the cache.
#[derive(Clone)]
struct Shard {
    conn: ConnectionManager,
    /// Its URL, password redacted, for errors.
    url: String,
}

fn redis_error(url: &str, e: impl std::fmt::Display) -> CacheError {
    CacheError::Redis {
        url: url.to_string(),
        message: e.to_string(),
    }
}

impl Shard {
    async fn connect(url: &str) -> Result<Shard, CacheError> {
        let redacted = crate::config::redact_url(url);
        let err = |e: &dyn std::fmt::Display| redis_error(&redacted, e);
        let client = redis::Client::open(url).map_err(|e| err(&e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| err(&"no answer within 5 s"))?
        .map_err(|e| err(&e))?;
        Ok(Shard {
            conn,
            url: redacted,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> CacheError {
        redis_error(&self.url, e)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CacheError> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))
    }

    /// Sends update script calls; returns how many fixes they applied.
    async fn apply(&self, pipe: redis::Pipeline) -> Result<usize, CacheError> {
        let result: Result<Vec<i64>, redis::RedisError> =
            pipe.query_async(&mut self.conn.clone()).await;
        let applied = match result {
            Ok(v) => v,
            // Redis restarted or was flushed: the script is gone. Load it (same text, same
            // SHA1) and go again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                load_script(self).await?;
                self.query_pipe(&pipe).await?
            }
            Err(e) => return Err(self.err(e)),
        };
        Ok(applied.iter().sum::<i64>() as usize)
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))
    }
}

#[derive(Clone)]
pub struct CacheStore {
    shards: Vec<Shard>,
    cfg: CacheConfig,
    sha: String,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("prefix", &self.cfg.key_prefix)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// FNV-1a, 64 bits: a user's shard must not change between releases or platforms, so not
/// std's randomly seeded hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h = (h ^ 0xff).wrapping_mul(PRIME);
        }
        for b in part.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }
    h
}

async fn load_script(shard: &Shard) -> Result<String, CacheError> {
    shard
        .query(redis::cmd("SCRIPT").arg("LOAD").arg(UPDATE_SCRIPT))
        .await
}

impl CacheStore {
    pub async fn connect(cfg: &CacheConfig) -> Result<CacheStore, CacheError> {
        cfg.validate()?;
        let urls = cfg.shard_urls();
        let mut shards = Vec::with_capacity(urls.len());
        for url in urls {
            shards.push(Shard::connect(url).await?);
        }
        let mut store = CacheStore {
            shards,
            cfg: cfg.clone(),
            sha: String::new(),
        };
        for (i, shard) in store.shards.iter().enumerate() {
            store.check_shard(i, shard).await?;
            store.sha = load_script(shard).await?;
        }
        Ok(store)
    }

    /// Marks each server with its place ("i/n") the first time, and refuses a server marked
    /// otherwise: with a different shard list, users would be looked for on servers that do
    /// not hold them, and old copies would linger on the others.
    async fn check_shard(&self, i: usize, shard: &Shard) -> Result<(), CacheError> {
        let key = format!("{}:shard", self.cfg.key_prefix);
        let me = format!("{i}/{}", self.shards.len());
        let (found,): (String,) = shard
            .query_pipe(
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&me)
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(&key),
            )
            .await?;
        if found != me {
            return Err(CacheError::Config(format!(
                "{} is cache shard {me} in cache.redis_url but holds the users of shard {found} \
                 (key {key}): the shard list changed. Flush the cache's keys on every shard, \
                 then run `locus cache rebuild`",
                shard.url
            )));
        }
        Ok(())
    }

    /// How many Redis servers the users are spread over.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard (index into `cache.redis_url`'s list) holding a user.
    pub fn shard_of(&self, tenant: &str, user: &str) -> usize {
        (fnv1a(&[tenant, user]) % self.shards.len() as u64) as usize
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

    /// Every shard answers.
    pub async fn ping(&self) -> Result<(), CacheError> {
        self.ask_all::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    /// Applies fixes, one pipeline per shard (sent concurrently); returns how many moved a
    /// user forward. Within the batch only each user's newest fix is sent (the others could
    /// not win anyway). Fails if any shard fails: the caller retries the whole batch, which
    /// the forward-only script makes harmless for the shards that had applied it.
    pub async fn update(&self, fixes: &[LocationFix]) -> Result<usize, CacheError> {
        let sent = self
            .update_pipelines(&self.sha, fixes)
            .into_iter()
            .map(|(i, pipe)| self.shards[i].apply(pipe));
        let applied = futures::future::try_join_all(sent).await?;
        Ok(applied.into_iter().sum())
    }

    /// The script's SHA1, as loaded when the store connected.
    pub fn script_sha(&self) -> &str {
        &self.sha
    }

    /// The commands [`CacheStore::update`] sends for `fixes`, per shard (its index, and one
    /// script call per tenant and run of [`UPDATE_CHUNK`] users, each user's newest fix
    /// only); shards without fixes are left out. Public so that the benchmark can send exactly
    /// these commands raw.
    pub fn update_pipelines(
        &self,
        sha: &str,
        fixes: &[LocationFix],
    ) -> Vec<(usize, redis::Pipeline)> {
        let mut newest: HashMap<(&str, &str), &LocationFix> = HashMap::new();
        for f in fixes {
            let e = newest.entry((&f.tenant, &f.user_id)).or_insert(f);
            if f.ts > e.ts {
                *e = f;
            }
        }
        let mut by_shard: Vec<HashMap<&str, Vec<&LocationFix>>> =
            vec![HashMap::new(); self.shards.len()];
        for ((tenant, user), f) in newest {
            by_shard[self.shard_of(tenant, user)]
                .entry(tenant)
                .or_default()
                .push(f);
        }
        let tenants = format!("{}:tenants", self.cfg.key_prefix);
        let mut out = vec![];
        for (i, by_tenant) in by_shard.iter().enumerate() {
            if by_tenant.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (tenant, fixes) in by_tenant {
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
            out.push((i, pipe));
        }
        out
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
        let shard = &self.shards[self.shard_of(tenant, user)];
        let h: HashMap<String, String> = shard
            .query(redis::cmd("HGETALL").arg(self.pos_key(tenant, user)))
            .await?;
        Ok(self.to_position(user, &h, now_ms()))
    }

    /// The positions of these users, in this order, each fetched from its shard.
    async fn positions_of(
        &self,
        tenant: &str,
        users: &[(String, Option<f64>)],
    ) -> Result<Vec<Position>, CacheError> {
        if users.is_empty() {
            return Ok(vec![]);
        }
        let mut asked: Vec<Vec<usize>> = vec![vec![]; self.shards.len()];
        for (k, (u, _)) in users.iter().enumerate() {
            asked[self.shard_of(tenant, u)].push(k);
        }
        let fetched =
            futures::future::try_join_all(asked.iter().enumerate().map(|(i, ks)| async move {
                if ks.is_empty() {
                    return Ok(vec![]);
                }
                let mut pipe = redis::pipe();
                for &k in ks {
                    pipe.cmd("HGETALL").arg(self.pos_key(tenant, &users[k].0));
                }
                self.shards[i]
                    .query_pipe::<Vec<HashMap<String, String>>>(&pipe)
                    .await
            }))
            .await?;
        let mut hashes: Vec<Option<HashMap<String, String>>> = vec![None; users.len()];
        for (ks, hs) in asked.iter().zip(fetched) {
            for (&k, h) in ks.iter().zip(hs) {
                hashes[k] = Some(h);
            }
        }
        let now = now_ms();
        Ok(users
            .iter()
            .zip(hashes)
            .filter_map(|((u, d), h)| {
                let mut p = self.to_position(u, &h?, now)?;
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

    /// The same command on every shard, answers in shard order.
    async fn ask_all<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<Vec<T>, CacheError> {
        futures::future::try_join_all(self.shards.iter().map(|s| s.query::<T>(cmd))).await
    }

    /// The `limit` users of the tenant seen most recently, newest first.
    pub async fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<Position>, CacheError> {
        let per_shard: Vec<Vec<(String, f64)>> = self
            .ask_all(
                redis::cmd("ZREVRANGE")
                    .arg(self.key("seen", tenant))
                    .arg(0)
                    .arg(limit.saturating_sub(1))
                    .arg("WITHSCORES"),
            )
            .await?;
        let mut found: Vec<(String, f64)> = per_shard.into_iter().flatten().collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        found.truncate(limit);
        let users: Vec<(String, Option<f64>)> = found.into_iter().map(|(u, _)| (u, None)).collect();
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
        let per_shard: Vec<Vec<(String, f64)>> = self
            .ask_all(
                redis::cmd("GEOSEARCH")
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
                    .arg("WITHDIST"),
            )
            .await?;
        // Each shard's nearest `limit`; the nearest `limit` overall are among them.
        let mut found: Vec<(String, f64)> = per_shard.into_iter().flatten().collect();
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        found.truncate(limit);
        let users: Vec<(String, Option<f64>)> =
            found.into_iter().map(|(u, d)| (u, Some(d))).collect();
        self.positions_of(tenant, &users).await
    }

    /// Users inside the box, optionally of one presence, at most `limit` (by user id). First
    /// each shard returns at most `2 × limit + 64` members, those nearest the box's centre:
    /// when they hold `limit` matches that is the answer (a crowded box answers with users
    /// near its centre, at a cost set by `limit`); otherwise the whole box is searched, so no
    /// match is missed.
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
        // The box is widest (in metres) at the latitude nearest the equator it spans: the
        // equator itself when it crosses it.
        let widest = if min_lat <= 0.0 && max_lat >= 0.0 {
            1.0
        } else {
            min_lat.to_radians().cos().max(max_lat.to_radians().cos())
        };
        let w = (max_lon - min_lon) * 111_320.0 * widest.max(0.0) * 1.01 + 10.0;
        let cap = limit.saturating_mul(2).saturating_add(64);
        let mut out = self
            .bbox_pass(
                tenant,
                (clon, clat, w, h),
                (min_lon, min_lat, max_lon, max_lat),
                status,
                Some(cap),
            )
            .await?;
        if out.positions.len() < limit && out.truncated {
            // The nearest `cap` per shard did not hold `limit` matches (a status filter, or
            // the search box's corners at high latitudes): look at the whole box.
            out = self
                .bbox_pass(
                    tenant,
                    (clon, clat, w, h),
                    (min_lon, min_lat, max_lon, max_lat),
                    status,
                    None,
                )
                .await?;
        }
        let mut out = out.positions;
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        out.truncate(limit);
        Ok(out)
    }

    /// One GEOSEARCH over every shard (`count`: at most that many members per shard, nearest
    /// the centre first), kept to the exact box and status. `truncated`: some shard had more.
    async fn bbox_pass(
        &self,
        tenant: &str,
        (clon, clat, w, h): (f64, f64, f64, f64),
        (min_lon, min_lat, max_lon, max_lat): (f64, f64, f64, f64),
        status: Option<Presence>,
        count: Option<usize>,
    ) -> Result<BboxPass, CacheError> {
        let mut cmd = redis::cmd("GEOSEARCH");
        cmd.arg(self.key("geo", tenant))
            .arg("FROMLONLAT")
            .arg(clon)
            .arg(clat)
            .arg("BYBOX")
            .arg(w.max(1.0))
            .arg(h.max(1.0))
            .arg("m");
        if let Some(n) = count {
            cmd.arg("ASC").arg("COUNT").arg(n);
        }
        let per_shard: Vec<Vec<String>> = self.ask_all(&cmd).await?;
        let truncated = count.is_some_and(|n| per_shard.iter().any(|s| s.len() >= n));
        let users: Vec<(String, Option<f64>)> =
            per_shard.into_iter().flatten().map(|u| (u, None)).collect();
        let positions = self
            .positions_of(tenant, &users)
            .await?
            .into_iter()
            .filter(|p| {
                p.lat >= min_lat && p.lat <= max_lat && p.lon >= min_lon && p.lon <= max_lon
            })
            .filter(|p| status.is_none_or(|s| p.status == s))
            .collect();
        Ok(BboxPass {
            positions,
            truncated,
        })
    }

    /// Forgets users not seen for `forget_after_s`: their hash, GEO member and last-seen
    /// entry, in every tenant of every shard. Returns how many were removed.
    pub async fn sweep(&self) -> Result<usize, CacheError> {
        let cutoff = now_ms() - (self.cfg.forget_after_s as i64) * 1000;
        let mut removed = 0;
        for shard in &self.shards {
            removed += self.sweep_shard(shard, cutoff).await?;
        }
        Ok(removed)
    }

    async fn sweep_shard(&self, shard: &Shard, cutoff: i64) -> Result<usize, CacheError> {
        let tenants: Vec<String> = shard
            .query(redis::cmd("SMEMBERS").arg(format!("{}:tenants", self.cfg.key_prefix)))
            .await?;
        let mut removed = 0;
        for t in tenants {
            let (geo, seen) = (self.key("geo", &t), self.key("seen", &t));
            loop {
                let old: Vec<String> = shard
                    .query(
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(&seen)
                            .arg("-inf")
                            .arg(format!("({cutoff}"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(SWEEP_CHUNK),
                    )
                    .await?;
                if old.is_empty() {
                    break;
                }
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SWEEP).arg(2 + old.len()).arg(&geo).arg(&seen);
                for u in &old {
                    cmd.arg(self.pos_key(&t, u));
                }
                cmd.arg(cutoff).arg(&old);
                removed += shard.query::<usize>(&cmd).await?;
                if old.len() < SWEEP_CHUNK {
                    break;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn the_shard_hash_is_fnv1a_64() {
        // Reference values of FNV-1a 64 (the users' placement depends on them: changing the
        // hash moves users between shards).
        assert_eq!(fnv1a(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&["foobar"]), 0x8594_4171_f739_67e8);
        // Parts are separated, so ("ab", "c") and ("a", "bc") differ.
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }
}
