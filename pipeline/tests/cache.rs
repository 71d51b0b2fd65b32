//! The last-position cache end to end against the local stack's Kafka, registry and Redis.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use locus_schemas::LocationFix;

fn fix(user: &str, seq: i64, ts: i64, lat: f64, lon: f64) -> LocationFix {
    LocationFix {
        accuracy_m: Some(4.0),
        speed_mps: Some(2.0),
        battery_pct: Some(60),
        ..fix_at("acme", user, seq, ts, lat, lon)
    }
}

fn cache_env(prefix: &str, group: &str, url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LOCUS_CACHE__KEY_PREFIX", prefix.to_string()),
        ("LOCUS_CACHE__GROUP", group.to_string()),
        ("LOCUS_CACHE__REDIS_URL", url.to_string()),
    ]
}

/// `locus cache` for this scope under `prefix`, in a consumer group of its own, ready.
async fn start_cache(s: &Scope, prefix: &str) -> (Proc, u16) {
    let (c, port) = locus(
        s,
        "cache",
        &["cache"],
        &cache_env(prefix, &unique("g-"), &redis_url()),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    (c, port)
}

async fn get_json(port: u16, path: &str) -> (u16, serde_json::Value) {
    let r = get_data(port, path).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// (user → (seq, ts)) of every user's position, through the API.
async fn state(port: u16, users: &[String]) -> HashMap<String, (i64, i64)> {
    let mut out = HashMap::new();
    for u in users {
        let (status, v) = get_json(port, &format!("/v1/tenants/acme/users/{u}/position")).await;
        if status == 200 {
            out.insert(
                u.clone(),
                (v["seq"].as_i64().unwrap(), v["ts"].as_i64().unwrap()),
            );
        }
    }
    out
}

/// The user ids of a positions / nearby answer, in its order.
fn user_ids(v: &serde_json::Value) -> Vec<&str> {
    v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect()
}

/// Keys matching `pattern` in one Redis database.
async fn keys(url: &str, pattern: &str) -> Vec<String> {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// `locus cache rebuild` of the scope's topic into `url` under `prefix`.
fn rebuild(s: &Scope, prefix: &str, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_locus"))
        .args(["--config"])
        .arg(repo().join("dev/locus.dev.toml"))
        .args(["cache", "rebuild"])
        .env("LOCUS_KAFKA__BROKERS", &s.brokers)
        .env("LOCUS_REGISTRY__URL", registry_url())
        .env("LOCUS_TOPICS__LOCATIONS", &s.locations)
        .env("LOCUS_CACHE__KEY_PREFIX", prefix)
        .env("LOCUS_CACHE__REDIS_URL", url)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

async fn wait_applied(port: u16, n: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if metric(port, "locus_consumer_records_total").await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("fewer than {n} records applied within {timeout:?}");
}

/// User `u` of ten standing apart in Berlin, with one fix `now - 5 s`.
fn normal_user(u: usize, now: i64) -> LocationFix {
    fix(
        &format!("u{u}"),
        1,
        now - 5_000,
        52.0 + u as f64 * 0.01,
        13.0,
    )
}

/// The score of `member` in the sorted set `key` (a GEO set or last-seen), if it is there.
async fn zscore(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    member: &str,
) -> Option<f64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async(con)
        .await
        .unwrap()
}

/// 10 users x 30 fixes, shuffled; returns them and each user's newest (seq, ts).
fn shuffled_fixes() -> (Vec<LocationFix>, HashMap<String, (i64, i64)>) {
    let base = now_ms() - 600_000;
    let mut fixes = vec![];
    let mut newest = HashMap::new();
    for u in 0..10 {
        let user = format!("u{u}");
        for i in 0..30i64 {
            let ts = base + i * 1000;
            fixes.push(fix(
                &user,
                i,
                ts,
                52.0 + u as f64 * 0.01,
                13.0 + i as f64 * 0.001,
            ));
        }
        newest.insert(user, (29, base + 29_000));
    }
    // A deterministic shuffle: late fixes arrive after newer ones.
    let n = fixes.len();
    for i in 0..n {
        fixes.swap(i, (i * 7919 + 13) % n);
    }
    (fixes, newest)
}

#[tokio::test(flavor = "multi_thread")]
async fn newest_fix_wins_replay_changes_nothing_and_rebuild_restores() {
    let s = Scope::new("cache-state");
    s.create_topics().await;
    let prefix = unique("lc");
    let (fixes, newest) = shuffled_fixes();
    produce(&s, &fixes).await;
    let users: Vec<String> = newest.keys().cloned().collect();

    let (mut c1, port) = locus(
        &s,
        "cache",
        &["cache"],
        &cache_env(&prefix, &unique("g-"), &redis_url()),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    wait_applied(port, 300.0, Duration::from_secs(60)).await;
    assert_eq!(state(port, &users).await, newest, "each user's newest fix");
    assert!(
        metric(port, "locus_cache_updates_ignored_total").await > 0.0,
        "late fixes were ignored"
    );
    c1.term();

    // Replay: a new group reads everything again; nothing moves.
    let (mut c2, port2) = locus(
        &s,
        "cache2",
        &["cache"],
        &cache_env(&prefix, &unique("g-"), &redis_url()),
    );
    wait_ready(port2, Duration::from_secs(60)).await;
    wait_applied(port2, 300.0, Duration::from_secs(60)).await;
    assert_eq!(
        metric(port2, "locus_cache_updates_applied_total").await,
        0.0
    );
    assert_eq!(state(port2, &users).await, newest);

    // Redis loses everything of this prefix; `locus cache rebuild` restores the same state.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let cached = keys(&redis_url(), &format!("{prefix}:*")).await;
    assert!(!cached.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&cached)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(state(port2, &users).await.is_empty());
    let out = rebuild(&s, &prefix, &redis_url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("300 / 300"),
        "progress shown"
    );
    assert_eq!(state(port2, &users).await, newest, "rebuilt");
    c2.term();
}

#[tokio::test(flavor = "multi_thread")]
async fn nearby_bbox_presence_and_bad_parameters() {
    let s = Scope::new("cache-geo");
    s.create_topics().await;
    let prefix = unique("lg");
    let now = now_ms();
    // Around Berlin Alexanderplatz (52.5219, 13.4132): near (fresh), mid (stale: 1 h old),
    // far (offline: 3 h old), and one in Potsdam. Online for 30 min, stale until 2 h: the
    // fresh ones stay online however slowly a loaded machine gets to the checks.
    let fixes = vec![
        fix("near", 1, now - 5_000, 52.5219, 13.4132),
        fix("mid", 1, now - 3_600_000, 52.5219, 13.4280), // ~1.0 km east
        fix("far", 1, now - 10_800_000, 52.5400, 13.4132), // ~2.0 km north
        fix("potsdam", 1, now - 5_000, 52.3906, 13.0645),
    ];
    produce(&s, &fixes).await;
    let mut env = cache_env(&prefix, &unique("g-"), &redis_url());
    env.push(("LOCUS_CACHE__ONLINE_S", "1800".into()));
    env.push(("LOCUS_CACHE__OFFLINE_S", "7200".into()));
    let (_c, port) = locus(&s, "cache", &["cache"], &env);
    wait_ready(port, Duration::from_secs(60)).await;
    wait_applied(port, 4.0, Duration::from_secs(60)).await;

    // Every data route needs a token of its tenant (and one limited to some users may not
    // ask for everyone).
    let url =
        format!("http://127.0.0.1:{port}/v1/tenants/acme/nearby?lat=52.5&lon=13.4&radius_m=1");
    let c = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(c.get(&url).send().await.unwrap()), 401);
    for (t, want) in [
        (token("other", None, 60), 403),
        (token("acme", Some(&["near"]), 60), 403),
        (token("acme", None, -3600), 401),
        (token("acme", None, 60), 200),
    ] {
        assert_eq!(
            status(c.get(&url).bearer_auth(&t).send().await.unwrap()),
            want
        );
    }
    let with_query_token = format!("{url}&access_token={}", token("acme", None, 60));
    assert_eq!(status(c.get(&with_query_token).send().await.unwrap()), 200);

    let (status, v) = get_json(
        port,
        "/v1/tenants/acme/nearby?lat=52.5219&lon=13.4132&radius_m=2500&limit=10",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let names = user_ids(&v);
    assert_eq!(
        names,
        vec!["near", "mid", "far"],
        "nearest first, Potsdam out of range"
    );
    let d: Vec<f64> = v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["distance_m"].as_f64().unwrap())
        .collect();
    assert!(d[0] < 5.0, "{d:?}");
    assert!((d[1] - 1001.6).abs() < 5.0, "haversine 1001.6 m: {d:?}");
    assert!((d[2] - 2013.2).abs() < 5.0, "haversine 2013.2 m: {d:?}");
    let statuses: Vec<&str> = v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["online", "stale", "offline"]);

    let (_, v) = get_json(
        port,
        "/v1/tenants/acme/nearby?lat=52.5219&lon=13.4132&radius_m=1500&limit=1",
    )
    .await;
    assert_eq!(v["count"], 1);

    let (status, v) = get_json(
        port,
        "/v1/tenants/acme/positions?bbox=13.40,52.51,13.43,52.53",
    )
    .await;
    assert_eq!(status, 200);
    let names = user_ids(&v);
    assert_eq!(names, vec!["mid", "near"]);
    let (_, v) = get_json(
        port,
        "/v1/tenants/acme/positions?bbox=13.0,52.3,13.5,52.6&status=online",
    )
    .await;
    let names = user_ids(&v);
    assert_eq!(names, vec!["near", "potsdam"]);
    let (_, v) = get_json(port, "/v1/tenants/other/positions?bbox=13.0,52.3,13.5,52.6").await;
    assert_eq!(v["count"], 0, "tenants are apart");

    let (status, v) = get_json(port, "/v1/tenants/acme/users/far/position").await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "offline");
    let (status, _) = get_json(port, "/v1/tenants/acme/users/nobody/position").await;
    assert_eq!(status, 404);

    for q in [
        "nearby?lon=13.4&radius_m=100",
        "nearby?lat=95&lon=13.4",
        "nearby?lat=52&lon=13.4&radius_m=-5",
        "nearby?lat=52&lon=13.4&radius_m=999999999",
        "nearby?lat=52&lon=13.4&limit=0",
        "nearby?lat=abc&lon=13.4",
        "nearby?lat=52&lon=13.4&colour=red",
        "positions",
        "positions?bbox=1,2,3",
        "positions?bbox=13.5,52.3,13.0,52.6",
        "positions?bbox=13.0,52.3,13.5,52.6&status=asleep",
    ] {
        let (status, v) = get_json(port, &format!("/v1/tenants/acme/{q}")).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{q}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_for_30s_loses_nothing() {
    redis_down_for_30s(None).await;
}

/// One of two shards down: the batches touching it are retried whole (the other shard applies
/// them again, harmlessly) and reading waits; nothing is lost on either.
#[tokio::test(flavor = "multi_thread")]
async fn one_of_two_shards_down_for_30s_loses_nothing() {
    redis_down_for_30s(Some(redis_url().replace("/0", "/4"))).await;
}

/// The cache on a private Redis (after `other_shard`, if given), stopped for 30 s while fixes
/// keep coming: once it returns every user ends at its newest fix.
async fn redis_down_for_30s(other_shard: Option<String>) {
    let s = Scope::new("cache-outage");
    s.create_topics().await;
    let mut redis = Private::redis();
    let private = format!("redis://{}/0", redis.addr());
    let url = match &other_shard {
        Some(other) => format!("{other},{private}"),
        None => private,
    };
    let prefix = unique("lo");
    let (_c, port) = locus(
        &s,
        "cache",
        &["cache"],
        &cache_env(&prefix, &unique("g-"), &url),
    );
    wait_ready(port, Duration::from_secs(60)).await;

    let base = now_ms() - 3_600_000;
    let scope = s.clone();
    let feeder = tokio::spawn(async move {
        for round in 0..40i64 {
            let fixes: Vec<LocationFix> = (0..20)
                .map(|u| {
                    fix(
                        &format!("u{u}"),
                        round,
                        base + round * 1000,
                        48.0,
                        11.0 + round as f64 * 0.001,
                    )
                })
                .collect();
            produce(&scope, &fixes).await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    redis.resume();
    feeder.await.unwrap();
    wait_applied(port, 800.0, Duration::from_secs(90)).await;
    let users: Vec<String> = (0..20).map(|u| format!("u{u}")).collect();
    let st = state(port, &users).await;
    assert_eq!(st.len(), 20);
    for (u, (seq, ts)) in st {
        assert_eq!((seq, ts), (39, base + 39_000), "{u} ends at its newest fix");
    }
    assert!(
        metric(port, "locus_stage_retries_total{stage=\"cache\"}").await > 0.0,
        "the outage was felt"
    );
    for shard in url.split(',') {
        let held = keys(shard, &format!("{prefix}:pos:*")).await;
        assert!(!held.is_empty(), "{shard} holds some of the users");
    }
}

/// The sweeper forgets users not seen for `forget_after_s` entirely (hash, GEO member,
/// last-seen entry) and keeps everyone else; a batch spanning two tenants lands in both.
#[tokio::test(flavor = "multi_thread")]
async fn sweeper_forgets_old_users_whole() {
    let prefix = unique("sweep");
    let cfg = locus_redis::CacheConfig {
        redis_url: redis_url(),
        key_prefix: prefix.clone(),
        online_s: 1,
        offline_s: 2,
        forget_after_s: 60,
        ..Default::default()
    };
    let store = locus_redis::CacheStore::connect(&cfg).await.unwrap();
    let now = now_ms();
    let mut other = fix("carol", 1, now, 48.0, 2.0);
    other.tenant = "globex".into();
    let fixes = vec![
        fix("old", 1, now - 120_000, 48.0, 2.0),
        fix("fresh", 1, now - 1_000, 48.1, 2.1),
        other,
    ];
    assert_eq!(store.update(&fixes).await.unwrap(), 3);
    assert_eq!(
        store.update(&fixes).await.unwrap(),
        0,
        "a replay applies nothing"
    );
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let probe = con.clone();
    let exists = move |key: String| {
        let mut con = probe.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut con)
                .await
                .unwrap()
        }
    };
    assert_eq!(exists(format!("{prefix}:pos:acme:old")).await, 1);
    assert_eq!(exists(format!("{prefix}:pos:globex:carol")).await, 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:pos:acme:fresh"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "no per-update expiry: the sweeper bounds memory");

    assert_eq!(
        store.sweep().await.unwrap(),
        1,
        "only 'old' is past forget_after_s"
    );
    assert_eq!(exists(format!("{prefix}:pos:acme:old")).await, 0);
    assert_eq!(exists(format!("{prefix}:pos:acme:fresh")).await, 1);
    for set in ["seen", "geo"] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}:{set}:acme"))
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(members, vec!["fresh".to_string()], "{set}");
    }
    assert!(store.position("acme", "old").await.unwrap().is_none());
    assert!(store.position("globex", "carol").await.unwrap().is_some());
    assert_eq!(store.sweep().await.unwrap(), 0, "nothing left to forget");
}

/// Users spread over two shards (two databases of the stack's Redis stand in for two servers:
/// the store cannot tell them apart) are written once each, and the queries merge and rank
/// them as one server would; the shards are marked, and a changed shard list is refused.
#[tokio::test(flavor = "multi_thread")]
async fn two_shards_spread_users_and_answer_as_one() {
    let s = Scope::new("cache-shards");
    s.create_topics().await;
    let prefix = unique("ls");
    let db = |n: u32| redis_url().replace("/0", &format!("/{n}"));
    let (a, b) = (db(2), db(3));
    let now = now_ms();
    // 12 users on a line eastwards from Alexanderplatz, 0.001475° of longitude apart: 99.9 m
    // at this latitude (111,320 m × cos 52.5219° × 0.001475).
    let users: Vec<String> = (0..12).map(|k| format!("w{k:02}")).collect();
    let fixes: Vec<LocationFix> = users
        .iter()
        .enumerate()
        .map(|(k, u)| fix(u, 7, now - 1_000, 52.5219, 13.4132 + k as f64 * 0.001475))
        .collect();
    produce(&s, &fixes).await;
    let (mut c, port) = locus(
        &s,
        "cache",
        &["cache"],
        &cache_env(&prefix, &unique("g-"), &format!("{a},{b}")),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    wait_applied(port, 12.0, Duration::from_secs(60)).await;

    // Each user on exactly one shard, both shards used, each marked with its place.
    let mut on_shard = vec![];
    for (url, mark) in [(&a, "0/2"), (&b, "1/2")] {
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let found: String = redis::cmd("GET")
            .arg(format!("{prefix}:shard"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(found, mark);
        on_shard.push(keys(url, &format!("{prefix}:pos:acme:*")).await.len());
    }
    assert!(
        on_shard.iter().all(|n| *n > 0),
        "both shards hold users: {on_shard:?}"
    );
    assert_eq!(
        on_shard.iter().sum::<usize>(),
        12,
        "each user once: {on_shard:?}"
    );

    // Nearest five, from both shards, ranked as one: w00 .. w04, ~99.9 m apart.
    let (status, v) = get_json(
        port,
        "/v1/tenants/acme/nearby?lat=52.5219&lon=13.4132&radius_m=5000&limit=5",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let got: Vec<(String, f64)> = v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["user_id"].as_str().unwrap().to_string(),
                p["distance_m"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        users[..5].iter().map(String::as_str).collect::<Vec<_>>()
    );
    for (k, (_, d)) in got.iter().enumerate() {
        assert!((d - 99.9 * k as f64).abs() < 2.0, "w{k:02} at {d} m");
    }
    // The box holds w03 .. w08 (13.4176 .. 13.4250).
    let (_, v) = get_json(
        port,
        "/v1/tenants/acme/positions?bbox=13.417,52.52,13.426,52.53",
    )
    .await;
    let names = user_ids(&v);
    assert_eq!(
        names,
        users[3..9].iter().map(String::as_str).collect::<Vec<_>>()
    );
    for u in &users {
        let (status, v) = get_json(port, &format!("/v1/tenants/acme/users/{u}/position")).await;
        assert_eq!((status, v["seq"].as_i64()), (200, Some(7)), "{u}");
    }
    c.term();

    // The same servers listed the other way round: refused, nothing written.
    let out = rebuild(&s, &prefix, &format!("{b},{a}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the shard list changed"), "{err}");
}

/// A fix Redis GEO cannot index (latitude beyond ±85.05112878°) in the middle of a batch
/// neither stalls the cache nor leaves the batch half-applied: every other user is complete
/// in hash, GEO and last-seen; the polar user's position answers (history keeps it too) but
/// it is out of the GEO set, also when it moved there from an indexable place. (Before, the
/// script failed after its HSETs and the batch was retried forever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_polar_fix_in_a_batch_stalls_nothing() {
    let s = Scope::new("cache-polar");
    s.create_topics().await;
    let prefix = unique("lp");
    let now = now_ms();
    // The mover is first applied in Berlin (a batch of its own), then moves to -88°.
    let first = vec![fix("mover", 1, now - 60_000, 52.5, 13.4)];
    produce(&s, &first).await;
    let (_c, port) = start_cache(&s, &prefix).await;
    wait_applied(port, 1.0, Duration::from_secs(60)).await;
    assert_eq!(state(port, &["mover".to_string()]).await["mover"].0, 1);

    // Ten normal users, with the two polar fixes in the middle of the batch.
    let normal = |u: usize| normal_user(u, now);
    let mut fixes: Vec<LocationFix> = (0..5).map(normal).collect();
    fixes.push(fix("pole", 1, now - 5_000, 89.9, 10.0));
    fixes.push(fix("mover", 2, now - 4_000, -88.0, 20.0));
    fixes.extend((5..10).map(normal));
    produce(&s, &fixes).await;
    wait_applied(port, (1 + fixes.len()) as f64, Duration::from_secs(60)).await;

    let users: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    let positions = state(port, &users).await;
    assert_eq!(positions.len(), 10, "every normal user has its position");
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let geo = format!("{prefix}:geo:acme");
    let seen = format!("{prefix}:seen:acme");
    for u in &users {
        let in_geo = zscore(&mut con, &geo, u).await;
        let in_seen = zscore(&mut con, &seen, u).await;
        assert!(in_geo.is_some() && in_seen.is_some(), "{u} is complete");
    }
    for (u, seq, lat) in [("pole", 1, 89.9), ("mover", 2, -88.0)] {
        let (status, v) = get_json(port, &format!("/v1/tenants/acme/users/{u}/position")).await;
        assert_eq!(status, 200, "{u}: {v}");
        assert_eq!(v["seq"], seq, "{u}: {v}");
        assert_eq!(v["lat"].as_f64(), Some(lat), "{u}: {v}");
        let in_geo = zscore(&mut con, &geo, u).await;
        assert_eq!(in_geo, None, "{u} is not in the GEO set");
    }
    let (status, v) = get_json(
        port,
        "/v1/tenants/acme/nearby?lat=52.5&lon=13.4&radius_m=1000&limit=10",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        !user_ids(&v).contains(&"mover"),
        "nearby never answers with the mover's old place: {v}"
    );
}

/// Any producer may write to `locations`: a fix the bridge would never admit (a longitude that
/// GEOADD refuses, an id over 1,024 bytes, an event time days ahead that would freeze its
/// user's position), written there by another, is dead-lettered with its reason, and the fixes
/// around it are applied whole (before, GEOADD failed the script after its HSETs, leaving the
/// run's users without GEO and last-seen entries).
#[tokio::test(flavor = "multi_thread")]
async fn a_fix_no_bridge_would_admit_is_dead_lettered_not_retried() {
    let s = Scope::new("cache-foreign");
    s.create_topics().await;
    let prefix = unique("lf");
    let now = now_ms();
    let normal = |u: usize| normal_user(u, now);
    let mut fixes: Vec<LocationFix> = (0..5).map(normal).collect();
    fixes.push(fix("far-east", 1, now - 5_000, 10.0, 500.0));
    fixes.push(fix(&"x".repeat(2_000), 1, now - 5_000, 10.0, 10.0));
    fixes.push(fix(
        "time-traveller",
        1,
        now + 10 * 24 * 3_600_000,
        10.0,
        10.0,
    ));
    fixes.extend((5..10).map(normal));
    produce(&s, &fixes).await;
    let (_c, port) = start_cache(&s, &prefix).await;

    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(60), |r| {
        r.len() >= 3
    });
    assert_eq!(dlq.len(), 3, "every foreign fix is dead-lettered");
    for r in &dlq {
        assert_eq!(r.headers["locus-reason"], "invalid_fix", "{:?}", r.headers);
    }
    let users: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(port, &users).await.len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        state(port, &users).await.len(),
        10,
        "every normal user has its position"
    );
    for u in ["far-east", "time-traveller"] {
        let (status, v) = get_json(port, &format!("/v1/tenants/acme/users/{u}/position")).await;
        assert_eq!(status, 404, "{u}: {v}");
    }
    // Each good user is whole: in the GEO set (nearby answers it) and in last-seen.
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for u in &users {
        for set in ["geo", "seen"] {
            let score = zscore(&mut con, &format!("{prefix}:{set}:acme"), u).await;
            assert!(score.is_some(), "{u} is in the {set} set");
        }
    }

    // The stage goes on: a fix produced afterwards is applied too.
    produce(&s, &[fix("late", 1, now - 1_000, 48.1, 11.5)]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(port, &["late".to_string()]).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state(port, &["late".to_string()]).await["late"].0, 1);
}

/// The partitions `locus_consumer_lag_records` of one process reports.
async fn lag_partitions(port: u16) -> std::collections::BTreeSet<String> {
    metrics_text(port)
        .await
        .lines()
        .filter(|l| l.starts_with("locus_consumer_lag_records{"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("partition=\"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// After a second replica joins, each replica reports lag only for the partitions it holds:
/// a revoked partition's series is removed, so summing lag over pods (as KEDA and the alerts
/// do) counts every partition once.
#[tokio::test(flavor = "multi_thread")]
async fn lag_is_reported_once_per_partition_across_replicas() {
    let s = Scope::new("cache-lag");
    s.create_topics().await;
    let prefix = unique("ll");
    let group = unique("g-");
    let now = now_ms();
    let fixes: Vec<LocationFix> = (0..40)
        .map(|i| fix(&format!("u{i}"), 1, now - 5_000, 52.0, 13.0))
        .collect();
    produce(&s, &fixes).await;
    let env = cache_env(&prefix, &group, &redis_url());
    let (_a, port_a) = locus(&s, "cache-a", &["cache"], &env);
    wait_ready(port_a, Duration::from_secs(60)).await;
    let all: std::collections::BTreeSet<String> = (0..4).map(|p| p.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lag_partitions(port_a).await != all {
        assert!(
            Instant::now() < deadline,
            "replica A never reported lag for all partitions"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (_b, port_b) = locus(&s, "cache-b", &["cache"], &env);
    wait_ready(port_b, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (a, b) = (lag_partitions(port_a).await, lag_partitions(port_b).await);
        let both: std::collections::BTreeSet<String> = a.union(&b).cloned().collect();
        if !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && both == all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the rebalance the replicas report A {a:?}, B {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A replica killed with SIGKILL (no LeaveGroup) hands its partitions to the one left once
/// its session expires, and every fix produced afterwards is applied. (On the local broker
/// before its group-leader patch, the survivor's rejoin never completed when the dead
/// replica had been the group's leader: the group stalled.)
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_with_sigkill_hands_its_partitions_over() {
    let s = Scope::new("cache-kill");
    s.create_topics().await;
    let prefix = unique("lk");
    let group = unique("g-");
    let mut env = cache_env(&prefix, &group, &redis_url());
    // A short session, so that the dead replica's expiry comes within the test.
    env.push((
        "LOCUS_KAFKA__PROPERTIES__SESSION.TIMEOUT.MS",
        "\"6000\"".into(),
    ));
    env.push((
        "LOCUS_KAFKA__PROPERTIES__HEARTBEAT.INTERVAL.MS",
        "\"1000\"".into(),
    ));
    let all: std::collections::BTreeSet<String> = (0..4).map(|p| p.to_string()).collect();
    // B first: it forms the group and leads it.
    let (mut b, port_b) = locus(&s, "cache-b", &["cache"], &env);
    wait_ready(port_b, Duration::from_secs(60)).await;
    let (_a, port_a) = locus(&s, "cache-a", &["cache"], &env);
    wait_ready(port_a, Duration::from_secs(60)).await;
    let now = now_ms();
    produce(
        &s,
        &(0..40)
            .map(|i| fix(&format!("u{i}"), 1, now - 5_000, 52.0, 13.0))
            .collect::<Vec<_>>(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (a, b) = (lag_partitions(port_a).await, lag_partitions(port_b).await);
        if !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.union(&b).count() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "never shared: A {a:?}, B {b:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.kill9();
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lag_partitions(port_a).await != all {
        assert!(
            Instant::now() < deadline,
            "A never took B's partitions: {:?}",
            lag_partitions(port_a).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "A holds every partition {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let now = now_ms();
    produce(
        &s,
        &(0..40)
            .map(|i| fix(&format!("u{i}"), 2, now - 1_000, 52.0, 13.0))
            .collect::<Vec<_>>(),
    )
    .await;
    let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = state(port_a, &users).await;
        if got.len() == 40 && got.values().all(|(seq, _)| *seq == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "not every fix applied: {got:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Boxes that cross the equator, and the whole world, return every user inside; a box
/// holding more users than the limit answers `limit` of them with bounded work.
#[tokio::test(flavor = "multi_thread")]
async fn bbox_across_the_equator_and_the_whole_world() {
    let s = Scope::new("cache-bbox");
    s.create_topics().await;
    let prefix = unique("lb");
    let now = now_ms();
    // On the equator near the box's east and west edges, and just inside its corners.
    let inside = [
        ("east", 0.0, 9.99),
        ("west", 0.0, -9.99),
        ("ne", 9.99, 9.99),
        ("sw", -9.99, -9.99),
    ];
    let mut fixes: Vec<LocationFix> = inside
        .iter()
        .map(|(u, lat, lon)| fix(u, 1, now - 5_000, *lat, *lon))
        .collect();
    fixes.push(fix("outside", 1, now - 5_000, 0.0, 10.5));
    fixes.push(fix("far", 1, now - 5_000, 70.0, 179.9));
    produce(&s, &fixes).await;
    let (_c, port) = start_cache(&s, &prefix).await;
    wait_applied(port, fixes.len() as f64, Duration::from_secs(60)).await;

    let (status, v) = get_json(port, "/v1/tenants/acme/positions?bbox=-10,-10,10,10").await;
    assert_eq!(status, 200, "{v}");
    let mut got = user_ids(&v);
    got.sort();
    assert_eq!(got, vec!["east", "ne", "sw", "west"], "{v}");

    let (status, v) = get_json(
        port,
        "/v1/tenants/acme/positions?bbox=-180,-85,180,85&limit=100",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(user_ids(&v).len(), 6, "the whole world: {v}");

    let (status, v) = get_json(
        port,
        "/v1/tenants/acme/positions?bbox=-180,-85,180,85&limit=2",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(user_ids(&v).len(), 2, "at most limit: {v}");
}

/// With `http.admin_listen`, `/metrics`, `/healthz` and `/readyz` move to their own port and
/// the public port serves only the data routes.
#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_on_the_admin_port_only() {
    let s = Scope::new("cache-admin");
    s.create_topics().await;
    let admin = free_port();
    let mut env = cache_env(&unique("la"), &unique("g-"), &redis_url());
    env.push(("LOCUS_HTTP__ADMIN_LISTEN", format!("127.0.0.1:{admin}")));
    let (_c, port) = locus(&s, "cache", &["cache"], &env);
    wait_ready(admin, Duration::from_secs(60)).await;
    let get = |p: u16, path: &str| {
        let url = format!("http://127.0.0.1:{p}{path}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(admin, path).await, 200, "{path} on the admin port");
        assert_eq!(get(port, path).await, 404, "{path} not on the public port");
    }
    let r = get_data(port, "/v1/tenants/acme/users/nobody/position").await;
    assert_eq!(
        r.status().as_u16(),
        404,
        "the data routes stay on the public port"
    );
    assert_eq!(
        get(port, "/v1/tenants/acme/users/nobody/position").await,
        401
    );
}
