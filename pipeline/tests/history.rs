//! The history writer end to end against the local stack's Kafka, registry and Cassandra (via
//! the CQL adapter): exactly the expected rows, idempotent replays, event-time order, no loss
//! across a Cassandra outage or a SIGKILL, and the track query API.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use locus_kafka::Producer;
use locus_schemas::LocationFix;
use locus_scylla::ScyllaConfig;

const HOUR: i64 = 3_600_000;

fn fix(user: &str, seq: i64, ts: i64) -> LocationFix {
    LocationFix {
        speed_mps: Some(1.0),
        heading_deg: Some(90.0),
        battery_pct: Some(50),
        activity: Some("walking, fast".into()),
        source: Some("gps".into()),
        received_at: ts + 100,
        ..fix_at(
            "acme",
            user,
            seq,
            ts,
            48.0 + seq as f64 * 1e-4,
            11.0 + seq as f64 * 1e-4,
        )
    }
}

fn history_env(s: &Scope, keyspace: &str, group: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LOCUS_SCYLLA__KEYSPACE", keyspace.to_string()),
        ("LOCUS_SCYLLA__NODES", format!("[\"{}\"]", cql_addr())),
        ("LOCUS_HISTORY__GROUP", group.to_string()),
        ("LOCUS_HISTORY__BUCKET_HOURS", "1".to_string()),
        ("LOCUS_KAFKA__BROKERS", s.brokers.clone()),
    ]
}

async fn count_rows(keyspace: &str) -> i64 {
    let session = locus_scylla::connect(&ScyllaConfig {
        nodes: vec![cql_addr()],
        fetch_schema_metadata: false,
        ..Default::default()
    })
    .await
    .unwrap();
    match session
        .query_unpaged(format!("SELECT COUNT(*) FROM {keyspace}.track"), ())
        .await
    {
        Ok(r) => {
            r.into_rows_result()
                .unwrap()
                .single_row::<(i64,)>()
                .unwrap()
                .0
        }
        Err(_) => 0, // table not created yet
    }
}

async fn wait_rows(keyspace: &str, n: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    let mut c = 0;
    while Instant::now() < deadline {
        c = count_rows(keyspace).await;
        if c >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c
}

async fn get(port: u16, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = get_data(port, path).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_rows_idempotent_replay_and_event_time_order() {
    let s = Scope::new("hist-exact");
    s.create_topics().await;
    let ks = unique("hx_");
    let base = now_ms() - 5 * HOUR;
    // 3 users x 40 fixes over 5 hours, produced in shuffled (non event-time) order.
    let mut fixes: Vec<LocationFix> = vec![];
    for u in 0..3 {
        for i in 0..40i64 {
            let ts = base + ((i * 7919) % 40) * (5 * HOUR / 40);
            fixes.push(fix(&format!("u{u}"), i, ts));
        }
    }
    produce(&s, &fixes).await;
    // A record that is not Avro: goes to the DLQ with its reason, the rest goes on.
    let p = Producer::new(&s.kafka(), "test").unwrap();
    p.send(&s.locations, b"u0", b"garbage", &[])
        .await
        .unwrap()
        .delivered()
        .await
        .unwrap();

    let (mut w, port) = locus(
        &s,
        "history",
        &["history"],
        &history_env(&s, &ks, &unique("g-")),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    assert_eq!(wait_rows(&ks, 120, Duration::from_secs(60)).await, 120);

    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(20), |r| {
        !r.is_empty()
    });
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["locus-reason"], "framing");
    assert_eq!(dlq[0].value, b"garbage");

    // Event-time order through the API, across the hourly buckets.
    let (status, body, _) = get(
        port,
        &format!(
            "/v1/tenants/acme/users/u1/track?from={}&to={}&limit=100",
            base - 1,
            base + 6 * HOUR
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ts: Vec<i64> = v["fixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(ts.len(), 40);
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "event-time order");
    assert!(v["next_cursor"].is_null());
    w.term();

    // Offsets reset: the same records consumed again by a new group → the same rows.
    let (_w2, port2) = locus(
        &s,
        "history2",
        &["history"],
        &history_env(&s, &ks, &unique("g-")),
    );
    wait_ready(port2, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port2, "locus_consumer_records_total").await < 121.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(metric(port2, "locus_consumer_records_total").await >= 121.0);
    assert_eq!(count_rows(&ks).await, 120, "a replay writes no new rows");
    let (_, body2, _) = get(
        port2,
        &format!(
            "/v1/tenants/acme/users/u1/track?from={}&to={}&limit=100",
            base - 1,
            base + 6 * HOUR
        ),
    )
    .await;
    let v2: serde_json::Value = serde_json::from_str(&body2).unwrap();
    assert_eq!(v["fixes"], v2["fixes"], "identical rows after the replay");
}

/// Any producer may write to `locations`: a fix the bridge would never admit, written there by
/// another, is dead-lettered with its reason rather than retried for ever against a Cassandra
/// that refuses it (a 70,000-byte user id is over the 65,535-byte partition key limit; Scylla
/// refuses a write timestamp days ahead), and the fixes after it are written.
#[tokio::test(flavor = "multi_thread")]
async fn a_fix_no_bridge_would_admit_is_dead_lettered_not_retried() {
    let s = Scope::new("hist-foreign");
    s.create_topics().await;
    let ks = unique("hf_");
    let now = now_ms();
    let mut fixes: Vec<LocationFix> = (0..5).map(|i| fix("u1", i, now - 60_000 + i)).collect();
    fixes.push(LocationFix {
        user_id: "u".repeat(70_000),
        ..fix("u2", 1, now - 30_000)
    });
    fixes.push(LocationFix {
        lat: 91.0,
        ..fix("u3", 1, now - 30_000)
    });
    fixes.push(fix("u5", 1, now + 240 * HOUR));
    fixes.extend((5..10).map(|i| fix("u1", i, now - 60_000 + i)));
    produce(&s, &fixes).await;

    // The long id's DLQ copy (its 70 KB key, its value, the reason headers) is over what this
    // writer's producer may send: it goes without its key and value instead of stalling.
    let mut env = history_env(&s, &ks, &unique("g-"));
    env.push((
        "LOCUS_KAFKA__PROPERTIES__MESSAGE.MAX.BYTES",
        "\"100000\"".to_string(),
    ));
    let (_w, port) = locus(&s, "history", &["history"], &env);
    wait_ready(port, Duration::from_secs(60)).await;
    assert_eq!(wait_rows(&ks, 10, Duration::from_secs(60)).await, 10);
    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(30), |r| {
        r.len() >= 3
    });
    assert_eq!(dlq.len(), 3, "every foreign fix is dead-lettered");
    for r in &dlq {
        assert_eq!(r.headers["locus-reason"], "invalid_fix", "{:?}", r.headers);
        assert_eq!(r.headers["locus-source-topic"], s.locations);
    }
    let errors: BTreeSet<&str> = dlq
        .iter()
        .map(|r| r.headers["locus-error"].as_str())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("user_id is 70000 bytes")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("lat = 91")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("in the future")),
        "{errors:?}"
    );
    let long = dlq
        .iter()
        .find(|r| r.headers["locus-error"].contains("user_id is 70000 bytes"))
        .unwrap();
    assert!(
        long.key.is_empty() && long.value.is_empty(),
        "sent without them"
    );
    assert_eq!(long.headers["locus-key-bytes"], "70000");
    let value_bytes: usize = long.headers["locus-value-bytes"].parse().unwrap();
    assert!(value_bytes > 70_000, "{value_bytes}");
    assert!(
        dlq.iter()
            .filter(|r| !std::ptr::eq(*r, long))
            .all(|r| !r.value.is_empty() && !r.headers.contains_key("locus-value-bytes")),
        "the others go whole"
    );
    // This process runs the history stage only, and nothing else was dead-lettered.
    let dead = metric(port, "locus_stage_dead_lettered_records_total").await;
    assert_eq!(dead, 3.0);

    // The stage goes on: a fix produced afterwards is written too.
    produce(&s, &[fix("u4", 1, now - 1_000)]).await;
    assert_eq!(wait_rows(&ks, 11, Duration::from_secs(60)).await, 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn track_api_ranges_paging_formats_and_errors() {
    let s = Scope::new("hist-api");
    s.create_topics().await;
    let ks = unique("ha_");
    let base = (now_ms() / HOUR - 6) * HOUR; // hour-aligned, 6 hours ago
    // 25 fixes, one every 12 minutes: 5 per hourly bucket; two share a timestamp.
    let mut fixes: Vec<LocationFix> = (0..25)
        .map(|i| fix("walker", i, base + i * 12 * 60_000))
        .collect();
    let mut twin = fix("walker", 100, base + 10 * 12 * 60_000);
    twin.device_id = "walker-watch".into();
    fixes.push(twin);
    produce(&s, &fixes).await;
    let (_w, port) = locus(
        &s,
        "history",
        &["history"],
        &history_env(&s, &ks, &unique("g-")),
    );
    wait_ready(port, Duration::from_secs(60)).await;
    assert_eq!(wait_rows(&ks, 26, Duration::from_secs(60)).await, 26);
    let range = format!("from={}&to={}", base, base + 5 * HOUR);

    // Time range: [from, to) → the first 25 slots but the last.
    let (_, body, _) = get(
        port,
        &format!(
            "/v1/tenants/acme/users/walker/track?from={}&to={}",
            base + 60 * 60_000,
            base + 120 * 60_000
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 5, "{body}");

    // Paging with limit 4 over all buckets gives every fix once, in order, with a tie.
    let mut seen = vec![];
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, body, headers) = get(
            port,
            &format!("/v1/tenants/acme/users/walker/track?{range}&limit=4&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for f in v["fixes"].as_array().unwrap() {
            seen.push((
                f["ts"].as_i64().unwrap(),
                f["device_id"].as_str().unwrap().to_string(),
                f["seq"].as_i64().unwrap(),
            ));
        }
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(headers["x-next-cursor"], c);
                cursor = c.to_string();
            }
            None => break,
        }
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(seen.len(), 26, "{seen:?}");
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        26,
        "no duplicates across pages"
    );
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(pages >= 7);

    // Formats.
    let (status, body, headers) = get(
        port,
        &format!("/v1/tenants/acme/users/walker/track?{range}&format=geojson&limit=3"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/geo+json");
    let g: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(g["type"], "FeatureCollection");
    assert_eq!(
        g["features"][0]["geometry"]["coordinates"][0]
            .as_f64()
            .unwrap(),
        11.0
    );
    assert_eq!(g["features"].as_array().unwrap().len(), 3);
    let (status, body, headers) = get(
        port,
        &format!("/v1/tenants/acme/users/walker/track?{range}&format=csv&limit=2"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("ts,device_id,seq,lat,lon"));
    assert!(lines[1].ends_with("\"walking, fast\",gps"), "{}", lines[1]);
    assert!(headers.contains_key("x-next-cursor"));

    // Bad input: clear 400s.
    for (q, needle) in [
        ("from=yesterday", "from"),
        (
            &format!("from={}&to={}", base + HOUR, base) as &str,
            "before",
        ),
        ("from=0&to=9999999999999", "days"),
        (&format!("{range}&limit=0"), "limit"),
        (&format!("{range}&limit=abc"), "limit"),
        (&format!("{range}&format=xml"), "format"),
        (&format!("{range}&cursor=nonsense"), "cursor"),
        (&format!("{range}&colour=red"), "query"),
    ] {
        let (status, body, _) =
            get(port, &format!("/v1/tenants/acme/users/walker/track?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(needle), "{q}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cassandra_away_for_30s_and_writer_killed_lose_nothing() {
    let s = Scope::new("hist-outage");
    s.create_topics().await;
    let ks = unique("ho_");
    let mut adapter = Private::cql_adapter();
    let group = unique("g-");
    let mut env = history_env(&s, &ks, &group);
    env.retain(|(k, _)| *k != "LOCUS_SCYLLA__NODES");
    env.push(("LOCUS_SCYLLA__NODES", format!("[\"{}\"]", adapter.addr())));
    env.push(("LOCUS_SCYLLA__CONNECT_TIMEOUT_MS", "2000".into()));
    let (mut w, port) = locus(&s, "history", &["history"], &env);
    wait_ready(port, Duration::from_secs(60)).await;

    // A steady stream of fixes while Cassandra goes away for 30 s.
    let base = now_ms() - HOUR;
    let producer_scope = s.clone();
    let feeder = tokio::spawn(async move {
        for batch in 0..40i64 {
            let fixes: Vec<LocationFix> = (0..25)
                .map(|i| {
                    fix(
                        &format!("u{}", i % 5),
                        batch * 25 + i,
                        base + batch * 25 + i,
                    )
                })
                .collect();
            produce(&producer_scope, &fixes).await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    adapter.kill9();
    tokio::time::sleep(Duration::from_secs(30)).await;
    adapter.resume();
    // And the writer killed with SIGKILL mid-stream, then restarted (same group).
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.kill9();
    let (_w2, port2) = locus(&s, "history-restarted", &["history"], &env);
    wait_ready(port2, Duration::from_secs(60)).await;
    feeder.await.unwrap();
    let rows = wait_rows(&ks, 1000, Duration::from_secs(90)).await;
    assert_eq!(rows, 1000, "every fix written once the store is back");
    assert!(metric(port2, "locus_history_rows_written_total").await > 0.0);
}

/// TLS to the nodes: a session trusting the test's CA reaches Cassandra through a TLS
/// listener (a terminator with a certificate from that CA, in front of the local CQL
/// adapter), one trusting another CA is refused, and the history stage writes and serves its
/// track API through it.
#[tokio::test(flavor = "multi_thread")]
async fn the_history_stage_speaks_tls_to_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let other = TestCa::other(dir.path());
    let plain_port: u16 = cql_addr().rsplit(':').next().unwrap().parse().unwrap();
    let node = format!("127.0.0.1:{}", tls_terminator(&ca, plain_port).await);
    let tls = |ca_file: &std::path::Path| ScyllaConfig {
        nodes: vec![node.clone()],
        fetch_schema_metadata: false,
        connect_timeout_ms: 5_000,
        tls_ca_file: ca_file.display().to_string(),
        ..Default::default()
    };
    let refused = locus_scylla::connect(&tls(&other)).await;
    assert!(
        refused.is_err(),
        "a node certified by another CA is refused"
    );
    let plain = locus_scylla::connect(&ScyllaConfig {
        nodes: vec![node.clone()],
        fetch_schema_metadata: false,
        connect_timeout_ms: 3_000,
        ..Default::default()
    })
    .await;
    assert!(plain.is_err(), "plaintext to a TLS listener fails");
    let session = locus_scylla::connect(&tls(&ca.ca)).await.unwrap();
    session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .unwrap();

    let s = Scope::new("hist-tls");
    s.create_topics().await;
    let ks = unique("ht_");
    let base = now_ms() - HOUR;
    let fixes: Vec<LocationFix> = (0..10).map(|i| fix("u1", i, base + i * 1000)).collect();
    produce(&s, &fixes).await;
    let mut env = history_env(&s, &ks, &unique("g-"));
    env.retain(|(k, _)| *k != "LOCUS_SCYLLA__NODES");
    env.push(("LOCUS_SCYLLA__NODES", format!("[\"{node}\"]")));
    env.push(("LOCUS_SCYLLA__TLS_CA_FILE", ca.ca.display().to_string()));
    let (_w, port) = locus(&s, "history", &["history"], &env);
    wait_ready(port, Duration::from_secs(60)).await;
    assert_eq!(wait_rows(&ks, 10, Duration::from_secs(60)).await, 10);
    let (status, body, _) = get(
        port,
        &format!(
            "/v1/tenants/acme/users/u1/track?from={}&to={}",
            base - 1,
            base + HOUR
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fixes"].as_array().unwrap().len(), 10);
}
