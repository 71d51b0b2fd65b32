//! The live push end to end against the local stack's Kafka, registry and Redis (and, for the
//! dashboard, Mosquitto and Debian's Chromium).

mod common;
#[path = "common/sse.rs"]
mod sse;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use locus_schemas::LocationFix;
use sse::{Event, SseClient};

fn fix(tenant: &str, user: &str, seq: i64, lat: f64, lon: f64) -> LocationFix {
    fix_at(tenant, user, seq, now_ms(), lat, lon)
}

/// Environment for a push (and cache) process of this scope: its own Redis key prefix.
fn env(s: &Scope, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut e = vec![
        ("LOCUS_CACHE__KEY_PREFIX", s.prefix.clone()),
        ("LOCUS_CACHE__GROUP", format!("{}-cache", s.prefix)),
        ("LOCUS_CACHE__REDIS_URL", redis_url()),
        (
            "LOCUS_PUSH__DASHBOARD_DIR",
            repo()
                .join("connectors/sse/dashboard/dist")
                .display()
                .to_string(),
        ),
    ];
    e.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    e
}

async fn stream(port: u16, query: &str, last_id: Option<&str>) -> SseClient {
    let mut h = vec![];
    if let Some(id) = last_id {
        h.push(("Last-Event-ID", id));
    }
    SseClient::open(port, &format!("/v1/stream?{query}"), &h, None).await
}

/// The next event that is not a heartbeat.
async fn next_event(c: &mut SseClient, wait: Duration) -> Option<Event> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next(left).await {
            Some(e) if e.kind == ":" => continue,
            other => return other,
        }
    }
}

/// A stream of all of `tenant`'s users, past its snapshot.
async fn live_stream(port: u16, tenant: &str) -> SseClient {
    let mut c = stream(
        port,
        &format!("access_token={}", token(tenant, None, 600)),
        None,
    )
    .await;
    assert_eq!(
        next_event(&mut c, Duration::from_secs(10))
            .await
            .unwrap()
            .kind,
        "snapshot"
    );
    c
}

async fn wait_cached(port: u16, tenant: &str, user: &str, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get_data(port, &format!("/v1/tenants/{tenant}/users/{user}/position")).await;
        if r.status() == 200 {
            let v: serde_json::Value = r.json().await.unwrap();
            if v["seq"] == seq {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{user} not cached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_auth_filters_snapshot_then_live_heartbeat_and_expiry() {
    let s = Scope::new("push-auth");
    s.create_topics().await;
    let t = "acme";
    let (_cache, cache_port) = locus(&s, "cache", &["cache"], &env(&s, &[]));
    wait_ready(cache_port, Duration::from_secs(60)).await;
    produce(
        &s,
        &[fix(t, "u1", 1, 52.50, 13.40), fix(t, "u2", 1, 48.85, 2.35)],
    )
    .await;
    wait_cached(cache_port, t, "u1", 1).await;
    wait_cached(cache_port, t, "u2", 1).await;

    let (_push, port) = locus(
        &s,
        "push",
        &["push"],
        &env(
            &s,
            &[
                ("LOCUS_PUSH__HEARTBEAT_S", "1"),
                ("LOCUS_PUSH__USER_RATE_PER_S", "0"),
            ],
        ),
    );
    wait_ready(port, Duration::from_secs(60)).await;

    // --- auth: each refusal with its status and a reason
    let good = token(t, None, 3600);
    let only_u1 = token(t, Some(&["u1"]), 3600);
    let forged = locus_sse::mint_hs256(
        "some-other-secret-some-other-secret",
        &locus_sse::Claims {
            tenant: t.into(),
            users: None,
            exp: (now_ms() / 1000 + 3600) as u64,
            sub: None,
            ..Default::default()
        },
    )
    .unwrap();
    // (query, headers, expected status, what the error says)
    type Case<'a> = (String, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("".into(), vec![], 401, "token is required"),
        ("access_token=garbage".into(), vec![], 401, "bad token"),
        (
            format!("access_token={forged}"),
            vec![],
            401,
            "InvalidSignature",
        ),
        (
            format!("access_token={}", token(t, None, -3600)),
            vec![],
            401,
            "Expired",
        ),
        (
            format!("access_token={good}&tenant=globex"),
            vec![],
            403,
            "not 'globex'",
        ),
        (
            format!("access_token={only_u1}&users=u1,u2"),
            vec![],
            403,
            "'u2'",
        ),
        (
            format!("access_token={good}&bbox=1,2,3"),
            vec![],
            400,
            "bbox",
        ),
        (
            format!("access_token={good}&bbox=10,50,0,40"),
            vec![],
            400,
            "min <= max",
        ),
        (
            format!("access_token={good}&user=u1"),
            vec![],
            400,
            "unknown field `user`",
        ),
        (
            "".into(),
            vec![("Authorization", "Bearer nope".to_string())],
            401,
            "bad token",
        ),
    ];
    for (q, headers, status, why) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut c = SseClient::open(port, &format!("/v1/stream?{q}"), &h, None).await;
        let body = c.body().await;
        assert_eq!(c.status, status, "{q}: {body}");
        assert!(body.contains(why), "{q}: {body} should say {why}");
        if status == 401 {
            assert_eq!(c.header("www-authenticate"), Some("Bearer"));
        }
    }
    // the header works as well as the query parameter
    let auth = format!("Bearer {good}");
    let mut c = SseClient::open(port, "/v1/stream", &[("Authorization", &auth)], None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    let first = next_event(&mut c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.kind, "snapshot");
    drop(c);

    // --- a token scoped to u1: snapshot of u1 only, then only u1's live fixes
    let mut scoped = stream(port, &format!("access_token={only_u1}"), None).await;
    let snap = next_event(&mut scoped, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(snap.kind, "snapshot");
    let users: Vec<String> = snap.json()["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users, vec!["u1"]);
    assert!(
        snap.id.is_some(),
        "the snapshot carries the position to resume from"
    );

    // --- a bbox around Paris: snapshot u2 only; live only fixes inside
    let mut paris = stream(port, &format!("access_token={good}&bbox=2,48,3,49"), None).await;
    let snap = next_event(&mut paris, Duration::from_secs(10))
        .await
        .unwrap();
    let users: Vec<String> = snap.json()["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users, vec!["u2"]);

    // --- everything: snapshot of both, then live in order
    let mut all = stream(port, &format!("access_token={good}"), None).await;
    let snap = next_event(&mut all, Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap.kind, "snapshot");
    assert_eq!(snap.json()["positions"].as_array().unwrap().len(), 2);
    assert_eq!(snap.json()["complete"], true);

    produce(
        &s,
        &[
            fix(t, "u2", 2, 52.0, 13.0),  // moved out of the Paris box
            fix(t, "u1", 2, 48.86, 2.34), // moved into it
            fix("globex", "u9", 1, 48.86, 2.34),
        ],
    )
    .await;
    let e = next_event(&mut scoped, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(
        (e.kind.as_str(), e.json()["user_id"].as_str()),
        ("fix", Some("u1"))
    );
    assert_eq!(e.json()["seq"], 2);
    let e = next_event(&mut paris, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(e.json()["user_id"], "u1", "only the fix inside the box");
    let mut got = BTreeSet::new();
    while got.len() < 2 {
        let e = next_event(&mut all, Duration::from_secs(15)).await.unwrap();
        assert_eq!(e.kind, "fix");
        assert_eq!(e.json()["tenant"], t, "never another tenant's fix");
        got.insert(e.json()["user_id"].as_str().unwrap().to_string());
    }
    // nothing else: the scoped stream saw no u2, the box no u2
    assert!(
        next_event(&mut scoped, Duration::from_millis(1500))
            .await
            .is_none(),
        "scoped stream got more than u1"
    );
    assert!(
        next_event(&mut paris, Duration::from_millis(200))
            .await
            .is_none()
    );

    // --- heartbeat comments on an idle stream (heartbeat_s = 1)
    let hb = all.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(hb.kind, ":", "an idle stream gets heartbeat comments");

    // --- a token that expires closes its stream with an `expired` event
    let short = token(t, None, 2);
    let mut c = stream(port, &format!("access_token={short}"), None).await;
    assert_eq!(c.status, 200);
    let started = Instant::now();
    let mut last = None;
    while let Some(e) = c.next(Duration::from_secs(10)).await {
        last = Some(e);
    }
    assert!(c.ended(), "the server ends the stream");
    assert_eq!(last.map(|e| e.kind), Some("expired".to_string()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(metric(port, "locus_push_requests_total{outcome=\"unauthorized\"}").await >= 5.0);
    // globex's fix: no stream watches that tenant, so it was passed over undecoded.
    assert!(metric(port, "locus_push_unwatched_records_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_resume_with_last_event_id_is_exact_and_a_lost_position_gives_a_gap() {
    let s = Scope::new("push-resume");
    s.create_topics().await;
    let t = "resume";
    let (_push, port) = locus(
        &s,
        "push",
        &["push"],
        &env(&s, &[("LOCUS_PUSH__USER_RATE_PER_S", "0")]),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    let tok = token(t, None, 3600);

    let mut a = stream(port, &format!("access_token={tok}"), None).await;
    let snap = next_event(&mut a, Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap.kind, "snapshot");
    let start_id = snap.id.clone().unwrap();

    // 20 users x 30 fixes, published in rounds while the client comes and goes
    let users = 20;
    let rounds = 30;
    let p = FixProducer::new(&s);
    let publisher = tokio::spawn(async move {
        for seq in 1..=rounds {
            let batch: Vec<LocationFix> = (0..users)
                .map(|u| {
                    fix(
                        t,
                        &format!("u{u}"),
                        seq,
                        50.0 + seq as f64 * 1e-4,
                        10.0 + u as f64 * 1e-3,
                    )
                })
                .collect();
            p.send(&batch).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });

    let mut seen: Vec<(String, i64)> = vec![];
    let mut last_id = start_id.clone();
    while seen.len() < 200 {
        let e = next_event(&mut a, Duration::from_secs(20))
            .await
            .expect("fixes flow");
        assert_eq!(e.kind, "fix");
        seen.push((
            e.json()["user_id"].as_str().unwrap().into(),
            e.json()["seq"].as_i64().unwrap(),
        ));
        last_id = e.id.clone().expect("every fix has an id");
    }
    drop(a); // the connection is cut mid-stream
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut b = stream(port, &format!("access_token={tok}"), Some(&last_id)).await;
    assert_eq!(b.status, 200);
    let total = (users * rounds) as usize;
    while seen.len() < total {
        let Some(e) = next_event(&mut b, Duration::from_secs(20)).await else {
            break;
        };
        assert_eq!(
            e.kind, "fix",
            "a resume starts with the missed fixes, no snapshot"
        );
        seen.push((
            e.json()["user_id"].as_str().unwrap().into(),
            e.json()["seq"].as_i64().unwrap(),
        ));
    }
    publisher.await.unwrap();
    assert!(
        next_event(&mut b, Duration::from_secs(2)).await.is_none(),
        "nothing beyond the published sequence"
    );
    let mut counts: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for k in &seen {
        *counts.entry(k.clone()).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if counts.len() != total {
        let mut missing: Vec<(String, i64)> = vec![];
        for u in 0..users {
            for q in 1..=rounds {
                if !counts.contains_key(&(format!("u{u}"), q)) {
                    missing.push((format!("u{u}"), q));
                }
            }
        }
        println!("missing: {missing:?}");
        println!("A+B seen order tail: {:?}", &seen[190..230.min(seen.len())]);
    }
    assert!(
        dups.is_empty(),
        "duplicates across the two connections: {dups:?}"
    );
    assert_eq!(
        counts.len(),
        total,
        "union of both connections = every published fix"
    );
    // per user, in publish order (one user = one partition)
    for u in 0..users {
        let seqs: Vec<i64> = seen
            .iter()
            .filter(|(x, _)| *x == format!("u{u}"))
            .map(|(_, q)| *q)
            .collect();
        assert_eq!(seqs, (1..=rounds).collect::<Vec<_>>(), "u{u} in order");
    }
    assert!(metric(port, "locus_push_resumes_total").await >= 1.0);

    // An id this replica cannot replay (too many records behind) → gap + fresh snapshot.
    let (_push2, port2) = locus(
        &s,
        "push-small",
        &["push"],
        &env(&s, &[("LOCUS_PUSH__RESUME_MAX_RECORDS", "10")]),
    );
    wait_ready(port2, Duration::from_secs(60)).await;
    // A resume from `id` → a gap whose reason says `says`, then a fresh snapshot.
    let gap_then_snapshot = async |id: &str, says: &str| {
        let mut g = stream(port2, &format!("access_token={tok}"), Some(id)).await;
        let gap = next_event(&mut g, Duration::from_secs(10)).await.unwrap();
        assert_eq!(gap.kind, "gap");
        let reason = gap.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(reason.contains(says), "{reason:?} does not say {says:?}");
        assert_eq!(
            next_event(&mut g, Duration::from_secs(10))
                .await
                .unwrap()
                .kind,
            "snapshot"
        );
    };
    gap_then_snapshot(&start_id, "resume_max_records").await;
    // an id that is not ours → gap + snapshot as well
    gap_then_snapshot("not-an-id", "").await;
    // an id ahead of the log (another topic or cluster, a recreated topic) → gap + snapshot:
    // resuming from it would silently skip live fixes
    let (log, positions) = locus_sse::cursor::decode(&last_id).unwrap();
    let log = log.expect("ids name their log");
    let mut ahead = positions.clone();
    ahead[0] += 1_000_000;
    gap_then_snapshot(&locus_sse::cursor::encode(log, &ahead), "ahead of the log").await;
    // an id of another log (another cluster or topic) with positions this log also has →
    // gap + snapshot: the same offsets here are other fixes
    let other = locus_sse::cursor::encode(log.wrapping_add(1), &positions);
    gap_then_snapshot(&other, "another topic or cluster").await;
    assert!(metric(port2, "locus_push_gaps_total{reason=\"other_log\"}").await >= 1.0);
    assert!(metric(port2, "locus_push_gaps_total").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_a_slow_client_gets_conflated_fixes_and_the_others_are_unaffected() {
    let s = Scope::new("push-slow");
    s.create_topics().await;
    let t = "slow";
    let (_push, port) = locus(
        &s,
        "push",
        &["push"],
        &env(
            &s,
            &[
                ("LOCUS_PUSH__USER_RATE_PER_S", "0"),
                ("LOCUS_PUSH__MAX_CONNECTIONS", "3"),
                // Slow, not stalled: it reads again once publishing is over.
                ("LOCUS_HTTP__STALL_TIMEOUT_MS", "120000"),
            ],
        ),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    let tok = token(t, None, 3600);
    let q = format!("access_token={tok}");

    let mut fast = stream(port, &q, None).await;
    assert_eq!(
        next_event(&mut fast, Duration::from_secs(10))
            .await
            .unwrap()
            .kind,
        "snapshot"
    );
    // the slow client: a tiny receive buffer, and it does not read while fixes flow
    let mut slow = SseClient::open(port, &format!("/v1/stream?{q}"), &[], Some(2048)).await;
    assert_eq!(slow.status, 200);

    // the process limit: a third stream fits, a fourth gets 503 with Retry-After
    let third = stream(port, &q, None).await;
    assert_eq!(third.status, 200);
    let mut fourth = stream(port, &q, None).await;
    assert_eq!(fourth.status, 503);
    assert_eq!(fourth.header("retry-after"), Some("5"));
    assert!(fourth.body().await.contains("maximum of 3"));
    drop(third);

    // 20 users x 500 fixes in rounds (one fix per user per round), with a padded payload
    // (~1 KiB events: 10 MB, more than the socket buffers hold for the slow client)
    let users = 20;
    let per_user = 500;
    let p = FixProducer::new(&s);
    let publisher = tokio::spawn(async move {
        for seq in 1..=per_user {
            let round: Vec<LocationFix> = (0..users)
                .map(|u| {
                    let mut f = fix(t, &format!("u{u}"), seq, 40.0 + seq as f64 * 1e-5, 20.0);
                    f.activity = Some("walking ".repeat(100));
                    f
                })
                .collect();
            p.send(&round).await;
        }
    });

    // Both clients must end with every user's newest fix, in order per user; the fast one
    // reads as fixes come, the slow one only once publishing is over.
    async fn drain(
        c: &mut SseClient,
        users: usize,
        last: i64,
        wait: Duration,
    ) -> (usize, BTreeMap<String, i64>) {
        let mut latest: BTreeMap<String, i64> = BTreeMap::new();
        let mut n = 0;
        while latest.len() < users || latest.values().any(|&s| s < last) {
            let Some(e) = next_event(c, wait).await else {
                panic!("stream stalled after {n} events: {latest:?}");
            };
            if e.kind != "fix" {
                continue;
            }
            n += 1;
            let u = e.json()["user_id"].as_str().unwrap().to_string();
            let seq = e.json()["seq"].as_i64().unwrap();
            let prev = latest.insert(u.clone(), seq);
            assert!(
                prev.is_none_or(|p| p < seq),
                "{u} went back from {prev:?} to {seq}"
            );
        }
        (n, latest)
    }
    let (fast_n, _) = drain(&mut fast, users, per_user, Duration::from_secs(30)).await;
    publisher.await.unwrap();
    let (slow_n, _) = drain(&mut slow, users, per_user, Duration::from_secs(10)).await;
    let total = (users as i64 * per_user) as usize;
    println!("published {total}; fast client got {fast_n} events, slow client {slow_n}");
    // The fast client reached every user's newest fix while the slow one was not reading
    // (drain would have stalled otherwise); how many events it got depends on how fast this
    // machine lets it read, so only the slow client's count is bounded: what its socket
    // buffers held, plus the in-order queue (4096), plus one fix per user.
    assert!(
        slow_n < total * 9 / 10,
        "the slow client was conflated ({slow_n} of {total})"
    );
    assert!(
        fast_n > slow_n,
        "the fast client got more ({fast_n} vs {slow_n})"
    );
    assert!(metric(port, "locus_push_events_conflated_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_dashboard_in_a_real_browser() {
    let dash = repo().join("connectors/sse/dashboard");
    assert!(
        dash.join("dist/index.html").is_file()
            && dash.join("node_modules/playwright-core").is_dir(),
        "the dashboard is not built: run `make dashboard`"
    );
    let s = Scope::new("push-browser");
    s.create_topics().await;
    let (_bridge, bport) = s.bridge("b1", &[]);
    let (_cache, cport) = locus(&s, "cache", &["cache"], &env(&s, &[]));
    let (_push, port) = locus(&s, "push", &["push"], &env(&s, &[]));
    for p in [bport, cport, port] {
        wait_ready(p, Duration::from_secs(60)).await;
    }
    let tenant = "fleet";
    // A hostile producer with access to Kafka writes a fix whose user id is markup (the
    // bridge refuses such ids): it must never reach the dashboard (browser.mjs also checks
    // that the dashboard shows such an id as text when a stream carries one).
    let evil = "<img src=x onerror=window.__pwned=1>";
    produce(&s, &[fix(tenant, evil, 1, 52.51, 13.39)]).await;
    // The cache (whose positions make the dashboard's snapshot) has read it and refused it
    // before the browser looks; the live path is `push_sends_no_fix_the_bridge_would_not_admit`.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(cport, "locus_stage_dead_lettered_records_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the cache did not dead-letter the markup id"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A track to play back: 30 fixes a minute apart, ending 5 minutes ago.
    let now = now_ms();
    let track: Vec<LocationFix> = (0..30)
        .map(|i| {
            let mut f = fix(tenant, "replayer", i, 52.50 + i as f64 * 1e-3, 13.38);
            f.ts = now - 35 * 60_000 + i * 60_000;
            f
        })
        .collect();
    produce(&s, &track).await;
    let shot = repo().join("target/test-artifacts/dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let out = tokio::process::Command::new("node")
        .arg("tests/browser.mjs")
        .current_dir(&dash)
        .env(
            "DASHBOARD_URL",
            format!(
                "http://127.0.0.1:{port}/#token={}",
                token(tenant, None, 600)
            ),
        )
        .env("MQTT_PORT", mqtt_port().to_string())
        .env("MQTT_TOPIC", s.topic(tenant, "walker-1"))
        .env("USER_ID", "walker-1")
        .env("EVIL_USER", evil)
        .env("REPLAY_USER", "replayer")
        .env("REPLAY_POINTS", "30")
        // On a whole minute, as a user picking a time would (the form without seconds),
        // to a time with seconds.
        .env(
            "REPLAY_FROM",
            ((now - 40 * 60_000) / 60_000 * 60_000).to_string(),
        )
        .env("REPLAY_TO", (now - 60_000).to_string())
        .env("REPLAY_LAST_LAT", track[29].lat.to_string())
        .env("SCREENSHOT", &shot)
        .output()
        .await
        .expect("run node");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{log}");
    assert!(out.status.success(), "browser test failed:\n{log}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot"
    );
}

/// Reads from `c` until `done(bytes so far)` or the server closes; returns what was read.
async fn read_until(
    c: &mut tokio::net::TcpStream,
    done: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = vec![];
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return (got, true);
        }
        got.extend_from_slice(&chunk[..n]);
        if done(&got) {
            return (got, false);
        }
    }
}

/// The stream's connections as plain HTTP/1.1 sees them: the lean streaming path answers
/// `/v1/stream` (chunked, `connection: close`, refusals with a length), a request line that
/// arrives in pieces still finds its route, a client that hangs up frees its slot, and every
/// other route keeps hyper's keep-alive.
#[tokio::test(flavor = "multi_thread")]
async fn push_stream_connections_are_plain_http() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let s = Scope::new("push-http");
    s.create_topics().await;
    let (_push, port) = locus(&s, "push", &["push"], &env(&s, &[]));
    wait_ready(port, Duration::from_secs(60)).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_lowercase();

    // A refusal: a complete response with its length, then the server closes.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"GET /v1/stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until(&mut c, |_| false).await;
    let got = text(&got);
    assert!(got.starts_with("http/1.1 401 unauthorized\r\n"), "{got}");
    assert!(got.contains("content-length: ") && got.contains("connection: close"));
    assert!(got.contains("token is required"), "{got}");
    assert!(closed);

    // A stream whose request line comes in three writes: chunked events follow.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET /v1/stream?access_token={} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
        token("acme", None, 3600)
    );
    for part in [&request[..7], &request[7..30], &request[30..]] {
        c.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (got, closed) = read_until(&mut c, |b| text(b).contains("event: snapshot")).await;
    let got = text(&got);
    assert!(!closed, "{got}");
    assert!(got.starts_with("http/1.1 200 ok\r\n"), "{got}");
    assert!(got.contains("content-type: text/event-stream"), "{got}");
    assert!(got.contains("transfer-encoding: chunked"), "{got}");
    let body = &got[got.find("\r\n\r\n").unwrap() + 4..];
    let size_line = body.split("\r\n").next().unwrap();
    assert!(
        usize::from_str_radix(size_line, 16).is_ok_and(|n| n > 0),
        "a chunk size first: {body}"
    );
    assert!(body.contains("retry: "), "{body}");
    assert_eq!(metric(port, "locus_push_connections").await, 1.0);
    // The client hangs up: the server notices without a write and frees the slot.
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(port, "locus_push_connections").await != 0.0 {
        assert!(Instant::now() < deadline, "the stream's slot was not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // HTTP/1.0 has no chunked encoding: the events follow the head as they are.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET /v1/stream?access_token={} HTTP/1.0\r\n\r\n",
        token("acme", None, 3600)
    );
    c.write_all(request.as_bytes()).await.unwrap();
    let (got, _) = read_until(&mut c, |b| text(b).contains("event: snapshot")).await;
    let got = text(&got);
    assert!(!got.contains("transfer-encoding"), "{got}");
    assert!(
        got[got.find("\r\n\r\n").unwrap() + 4..].starts_with("retry: "),
        "{got}"
    );
    drop(c);

    // A head too large for the streaming path: 431.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let big = format!(
        "GET /v1/stream HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = c.write_all(big.as_bytes()).await;
    let (got, _) = read_until(&mut c, |b| b.ends_with(b"\r\n\r\n")).await;
    assert!(text(&got).starts_with("http/1.1 431"), "{}", text(&got));

    // Other routes: hyper, keep-alive, even when the first bytes were read for routing.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"GET /hea").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"lthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until(&mut c, |b| text(b).contains("\"ok\"")).await;
    assert!(!closed && text(&got).starts_with("http/1.1 200 ok\r\n"));
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_until(&mut c, |b| text(b).contains("\"ok\"")).await;
    assert!(
        text(&got).starts_with("http/1.1 200 ok\r\n"),
        "a second request on the same connection: {}",
        text(&got)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn push_one_tenant_cannot_take_every_slot() {
    let s = Scope::new("push-tenant-cap");
    s.create_topics().await;
    let (_push, port) = locus(
        &s,
        "push",
        &["push"],
        &env(&s, &[("LOCUS_PUSH__MAX_CONNECTIONS_PER_TENANT", "2")]),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    let open = async |tenant: &str| {
        let tok = token(tenant, None, 600);
        stream(port, &format!("access_token={tok}"), None).await
    };
    let a1 = open("a").await;
    let a2 = open("a").await;
    assert_eq!((a1.status, a2.status), (200, 200));
    let mut a3 = open("a").await;
    assert_eq!(a3.status, 429);
    assert_eq!(a3.header("retry-after"), Some("5"));
    assert!(a3.body().await.contains("max_connections_per_tenant"));
    // another tenant still gets in
    let b1 = open("b").await;
    assert_eq!(b1.status, 200);
    // a stream of tenant a closes: its slot is free again
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = open("a").await;
        if c.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(port, "locus_push_requests_total{outcome=\"tenant_full\"}").await >= 1.0);
    drop((a2, b1));
}

/// A client that stops reading (its receive window fills and stays at zero) is closed after
/// `http.stall_timeout_ms` and its slot is free again; before, it held the slot for as long
/// as its TCP connection lived.
#[tokio::test(flavor = "multi_thread")]
async fn push_a_client_that_stops_reading_is_closed_and_frees_its_slot() {
    let s = Scope::new("push-stall");
    s.create_topics().await;
    let t = "stall";
    let (_push, port) = locus(
        &s,
        "push",
        &["push"],
        &env(
            &s,
            &[
                ("LOCUS_PUSH__USER_RATE_PER_S", "0"),
                ("LOCUS_PUSH__MAX_CONNECTIONS", "1"),
                ("LOCUS_HTTP__STALL_TIMEOUT_MS", "2000"),
            ],
        ),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    let q = format!("access_token={}", token(t, None, 3600));
    // A tiny receive buffer, and never a read after the head.
    let stalled = SseClient::open(port, &format!("/v1/stream?{q}"), &[], Some(2048)).await;
    assert_eq!(stalled.status, 200);
    assert_eq!(
        stream(port, &q, None).await.status,
        503,
        "the one slot is taken"
    );
    // ~1 KiB events for 1,000 users: far more than the socket buffers hold.
    let fixes: Vec<LocationFix> = (0..1000)
        .map(|u| {
            let mut f = fix(t, &format!("u{u}"), 1, 40.0, 20.0);
            f.activity = Some("walking ".repeat(100));
            f
        })
        .collect();
    FixProducer::new(&s).send(&fixes).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(port, "locus_http_streams_stalled_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled stream was not closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its slot is free: a new stream gets in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        let c = stream(port, &q, None).await;
        if c.status == 200 {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was not freed ({})",
            c.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metric(port, "locus_push_connections").await, 1.0);
    drop((stalled, fresh));
}

/// Replays are cancelled when their client leaves: 100 resumes from the start of a 10,000-fix
/// log, each abandoned after its first replayed fix, leave no replay running and no reader
/// threads behind. (This passed before the resume also stopped waiting for a reader once its
/// client left: each of these had its reader already.)
#[tokio::test(flavor = "multi_thread")]
async fn push_100_abandoned_resumes_leave_nothing_behind() {
    let s = Scope::new("push-abandon");
    s.create_topics().await;
    let t = "abandon";
    let (push, port) = locus(&s, "push", &["push"], &env(&s, &[]));
    wait_ready(port, Duration::from_secs(60)).await;
    let p = FixProducer::new(&s);
    for round in 0..10 {
        let fixes: Vec<LocationFix> = (0..1000)
            .map(|u| fix(t, &format!("u{u}"), round, 40.0, 20.0))
            .collect();
        p.send(&fixes).await;
    }
    let q = format!("access_token={}", token(t, None, 3600));
    // The log's id, from a first stream's snapshot; a resume from offset 0 of every partition.
    let mut first = stream(port, &q, None).await;
    let snapshot = next_event(&mut first, Duration::from_secs(10))
        .await
        .unwrap();
    let (log, positions) = locus_sse::cursor::decode(snapshot.id.as_deref().unwrap()).unwrap();
    drop(first);
    let from_start = locus_sse::cursor::encode(log.unwrap(), &vec![0; positions.len()]);
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", push.child.id()))
            .unwrap()
            .count()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = threads();
    let mut most_running = 0.0f64;
    for _ in 0..100 {
        let mut c = stream(port, &q, Some(&from_start)).await;
        assert_eq!(c.status, 200);
        // Its first event (a replayed fix), then gone.
        // Each resume opens a reader of its own (metadata, watermarks, a fetch), which the
        // local broker can be slow to answer while other tests load it.
        let e = next_event(&mut c, Duration::from_secs(30)).await.unwrap();
        assert_eq!(e.kind, "fix", "{e:?}");
        drop(c);
        most_running = most_running.max(metric(port, "locus_push_resumes_running").await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = metric(port, "locus_push_resumes_running").await;
        let connections = metric(port, "locus_push_connections").await;
        let now = threads();
        if running == 0.0 && connections == 0.0 && now <= before + 2 {
            println!(
                "threads {before} before, {now} after; at most {most_running} replays at once"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {running} replays, {connections} streams, {now} threads ({before} before)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(metric(port, "locus_push_resumes_total").await, 100.0);
}

/// A record the live reader cannot decode because the registry fails is retried, not
/// skipped: the registry answers 500 to the push process's first three schema lookups, and
/// every fix still reaches the stream.
#[tokio::test(flavor = "multi_thread")]
async fn push_waits_out_a_registry_failure_and_skips_no_fix() {
    let s = Scope::new("push-registry");
    s.create_topics().await;
    let t = "reg";
    let registry = FailingRegistry::start("/schemas/ids/", 3).await;
    let mut e = env(&s, &[]);
    e.push(("LOCUS_REGISTRY__URL", registry.url.clone()));
    let (_push, port) = locus(&s, "push", &["push"], &e);
    wait_ready(port, Duration::from_secs(60)).await;
    let mut c = live_stream(port, t).await;
    let fixes: Vec<LocationFix> = (0..5)
        .map(|u| fix(t, &format!("u{u}"), 1, 40.0, 20.0))
        .collect();
    FixProducer::new(&s).send(&fixes).await;
    let mut got = BTreeSet::new();
    while got.len() < 5 {
        let Some(e) = next_event(&mut c, Duration::from_secs(30)).await else {
            panic!("only {got:?} arrived");
        };
        if e.kind == "fix" {
            got.insert(e.json()["user_id"].as_str().unwrap().to_string());
        }
    }
    assert!(registry.seen() >= 4, "{} lookups", registry.seen());
    assert!(
        metric(
            port,
            "locus_stage_errors_total{kind=\"registry\",stage=\"push\"}"
        )
        .await
            >= 3.0
    );
}

/// Any producer may write to `locations`: a fix the bridge would never admit (a longitude of
/// 500°), written there by another, is not sent to any dashboard; the fixes around it are.
#[tokio::test(flavor = "multi_thread")]
async fn push_sends_no_fix_the_bridge_would_not_admit() {
    let s = Scope::new("push-foreign");
    s.create_topics().await;
    let t = "foreign";
    let (_push, port) = locus(&s, "push", &["push"], &env(&s, &[]));
    wait_ready(port, Duration::from_secs(60)).await;
    let mut c = live_stream(port, t).await;
    let fixes = vec![
        fix(t, "u1", 1, 40.0, 20.0),
        fix(t, "far-east", 1, 40.0, 500.0),
        fix(t, "u3", 1, 40.1, 20.1),
    ];
    FixProducer::new(&s).send(&fixes).await;
    // Both good fixes, then a while longer: the foreign one would have come by then.
    let mut users = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settle: Option<Instant> = None;
    while settle.is_none_or(|at| Instant::now() < at) && Instant::now() < deadline {
        if let Some(e) = next_event(&mut c, Duration::from_millis(500)).await
            && e.kind == "fix"
        {
            users.insert(e.json()["user_id"].as_str().unwrap().to_string());
        }
        if settle.is_none() && users.contains("u1") && users.contains("u3") {
            settle = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    assert_eq!(
        users,
        BTreeSet::from(["u1".to_string(), "u3".to_string()]),
        "the good fixes are sent, the foreign one is not"
    );
    assert_eq!(
        metric(
            port,
            "locus_stage_dead_lettered_records_total{reason=\"undecodable\",stage=\"push\"}"
        )
        .await,
        1.0
    );
}
