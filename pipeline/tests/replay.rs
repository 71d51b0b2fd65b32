//! `locus replay` against the local stack's Kafka (tansu), registry, Cassandra and Redis:
//! windows by event time with late and skewed fixes, exact once and in order, every export
//! format (Parquet read back by DuckDB), re-running the history and cache sinks while the
//! live groups keep their offsets, moving a stopped group, and copying a window to a topic.

mod common;
#[path = "common/sse.rs"]
mod sse;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use locus_kafka::rdkafka::config::ClientConfig;
use locus_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use locus_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use locus_kafka::rdkafka::{Offset, TopicPartitionList};
use locus_schemas::{Codec, LocationFix, RegistryConfig};
use sse::SseClient;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn fix(tenant: &str, user: &str, seq: i64, ts: i64) -> LocationFix {
    let u: f64 = user.trim_start_matches('u').parse().unwrap_or(0.0);
    LocationFix {
        altitude_m: if seq % 2 == 0 { Some(500.0) } else { None },
        activity: Some("walking, \"fast\"".into()),
        received_at: ts + 1000,
        ..fix_at(
            tenant,
            user,
            seq,
            ts,
            48.0 + u * 0.1 + (seq % 100) as f64 * 1e-5,
            11.0 + u * 0.1,
        )
    }
}

/// Creates `locations` and `dlq` topics for the scope with a week of retention (the test
/// writes records whose timestamps are hours old).
async fn create_topics(s: &Scope) {
    let yaml = format!(
        "topics:\n\
         - {{name: {}, partitions: 4, replication_factor: 1, min_insync_replicas: 1, retention_ms: 604800000, cleanup_policy: delete, compression: producer}}\n\
         - {{name: {}, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 604800000, cleanup_policy: delete, compression: producer}}\n",
        s.locations, s.dlq
    );
    let file = locus_topics::TopicsFile::parse(&yaml, "test").unwrap();
    let plan = locus_topics::plan(&s.kafka(), &file, Some(1))
        .await
        .unwrap();
    locus_topics::apply(&s.kafka(), &plan).await.unwrap();
}

/// Produces each (fix, arrival time) with the arrival as the record timestamp, in arrival
/// order (as a broker would have received them); `None` as fix sends a non-Avro record.
async fn produce_at(s: &Scope, arrivals: &mut [(Option<LocationFix>, i64)]) {
    arrivals.sort_by_key(|(_, t)| *t);
    let codec = Codec::new(
        &RegistryConfig {
            url: registry_url(),
            ..Default::default()
        },
        &s.locations,
    )
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = vec![];
    for (f, t) in arrivals.iter() {
        let (key, value) = match f {
            Some(f) => (f.user_id.clone(), codec.encode(f).await.unwrap()),
            None => ("u0".to_string(), b"not avro".to_vec()),
        };
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(&s.locations)
                        .key(key.as_bytes())
                        .payload(&value)
                        .timestamp(*t),
                )
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Runs `locus replay <args>` for the scope; returns its output.
fn replay(s: &Scope, args: &[&str], extra_env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locus"));
    cmd.arg("--config")
        .arg(repo().join("dev/locus.dev.toml"))
        .arg("replay")
        .args(args)
        .env("LOCUS_KAFKA__BROKERS", &s.brokers)
        .env("LOCUS_REGISTRY__URL", registry_url())
        .env("LOCUS_TOPICS__LOCATIONS", &s.locations)
        .env("LOCUS_TOPICS__DLQ", &s.dlq)
        .env("LOCUS_LOG__LEVEL", "warn")
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run locus replay")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "locus replay failed: {}", stderr(o));
    stderr(o)
}

type Id = (String, String, i64);

fn id(f: &LocationFix) -> Id {
    (f.tenant.clone(), f.user_id.clone(), f.seq)
}

/// Identities in export order: tenant, user, event time.
fn ordered(fixes: &[&LocationFix]) -> Vec<Id> {
    let mut v: Vec<&LocationFix> = fixes.to_vec();
    v.sort_by(|a, b| locus_replay::by_user_then_time(a, b));
    v.into_iter().map(id).collect()
}

fn ndjson_ids(path: &std::path::Path) -> Vec<Id> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: LocationFix = serde_json::from_str(l).unwrap();
            id(&f)
        })
        .collect()
}

fn python() -> std::path::PathBuf {
    tansu_bin()
        .ancestors()
        .nth(3)
        .unwrap()
        .join("venv/bin/python")
}

/// A backlog read by several consumers (each a share of the partitions; `locus replay` and
/// `locus cache rebuild` read 100,000 records or more this way) returns exactly what one
/// consumer returns: every record of the plan once, in offset order per partition, with
/// progress counted across the consumers.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_read_split_over_consumers_returns_every_record_once_in_order() {
    use locus_kafka::{KafkaConfig, RangeReader, Split, StartAt, StopAt};
    let s = Scope::new("replay-split");
    create_topics(&s).await;
    let base = now_ms() - HOUR;
    let mut arrivals: Vec<(Option<LocationFix>, i64)> = (0..3000i64)
        .map(|i| {
            let f = fix("t1", &format!("u{}", i % 41), i, base + i * 10);
            (Some(f), base + i * 10)
        })
        .collect();
    produce_at(&s, &mut arrivals).await;
    let kafka = s.kafka();
    // (consumers asked for, threshold, consumers that read): at most one a partition (the
    // topic has four), and one below the threshold.
    for (readers, min_records, want) in [(1, 3000, 1), (3, 3000, 3), (8, 3000, 4), (8, 3001, 1)] {
        let mut r = RangeReader::open_split(
            &kafka,
            "test",
            &s.locations,
            StartAt::Beginning,
            StopAt::End,
            // The commands' split with its threshold lowered to this topic's size.
            Split {
                min_records,
                ..Split::backlog(&KafkaConfig {
                    range_readers: readers as u32,
                    ..kafka.clone()
                })
            },
        )
        .await
        .unwrap();
        assert_eq!(
            r.readers(),
            want,
            "{readers} asked for, threshold {min_records}"
        );
        let ends: BTreeMap<i32, i64> = r.ranges().iter().map(|p| (p.partition, p.end)).collect();
        let mut got: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        while let Some(batch) = r.next_batch(1024).await.unwrap() {
            for rec in batch {
                got.entry(rec.partition).or_default().push(rec.offset);
            }
        }
        for (p, end) in &ends {
            let want: Vec<i64> = (0..*end).collect();
            assert_eq!(
                got.get(p).cloned().unwrap_or_default(),
                want,
                "partition {p}, {readers} readers"
            );
        }
        let progress = r.progress();
        assert_eq!(
            (progress.records, progress.total),
            (3000, 3000),
            "{readers} readers"
        );
        assert!(
            progress.positions.is_empty(),
            "every partition finished: {:?}",
            progress.positions
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_export_is_exact_by_event_time_in_every_format() {
    let s = Scope::new("replay-export");
    create_topics(&s).await;
    let base = now_ms() - 6 * HOUR;
    let (from, to) = (base + HOUR, base + 2 * HOUR);
    let mut arrivals: Vec<(Option<LocationFix>, i64)> = vec![];
    let mut on_time = vec![]; // in the window, arrived 2 s after being taken
    let mut skewed = vec![]; // clock 4 min fast: arrived before the window's start
    let mut offline = vec![]; // taken in the window, flushed 1 h 40 min late
    let mut outside = 0;
    for (t, tenant) in ["t1", "t2"].iter().enumerate() {
        for u in 0..5 {
            let user = format!("u{u}");
            // every 3 minutes from 30 min before the window to 30 min after it, seq shuffled
            // against time
            for i in 0..60i64 {
                let ts = base + HOUR / 2 + i * 3 * MIN + (u * 7 + t as i64) * 1000;
                let f = fix(tenant, &user, 1000 + (i * 37) % 60, ts);
                arrivals.push((Some(f.clone()), ts + 2000));
                if from <= ts && ts < to {
                    on_time.push(f);
                } else {
                    outside += 1;
                }
            }
            let f = fix(tenant, &user, 5000, from + MIN);
            arrivals.push((Some(f.clone()), from - 3 * MIN));
            skewed.push(f);
            for i in 0..10i64 {
                let f = fix(tenant, &user, 6000 + i, base + HOUR + 10 * MIN + i * MIN);
                arrivals.push((Some(f.clone()), base + 2 * HOUR + 50 * MIN + i));
                offline.push(f);
            }
        }
    }
    // redeliveries: the same fixes again, a few seconds later
    let dups: Vec<(Option<LocationFix>, i64)> = on_time
        .iter()
        .step_by(7)
        .map(|f| (Some(f.clone()), f.ts + 9000))
        .collect();
    let n_dups = dups.len();
    arrivals.extend(dups);
    arrivals.push((None, base + HOUR + 30 * MIN)); // not a fix
    produce_at(&s, &mut arrivals).await;

    let dir = tempfile::tempdir().unwrap();
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let window = ["export", "--from", &from_s, "--to", &to_s];

    // --- NDJSON: exactly the window, each once, ordered by user then event time
    let nd = dir.path().join("w.ndjson");
    let out = ok(&replay(
        &s,
        &[
            &window[..],
            &["--format", "ndjson", "--out", nd.to_str().unwrap()],
        ]
        .concat(),
        &[],
    ));
    let all: Vec<&LocationFix> = on_time.iter().chain(&skewed).chain(&offline).collect();
    let expected = ordered(&all);
    assert_eq!(
        expected.len(),
        all.iter().map(|f| id(f)).collect::<HashSet<_>>().len()
    );
    let got = ndjson_ids(&nd);
    assert_eq!(got.len(), expected.len(), "{out}");
    assert_eq!(got, expected, "exact set, once each, in order");
    assert!(
        out.contains(&format!("{n_dups} duplicates removed")),
        "{out}"
    );
    assert!(out.contains("1 not fixes"), "{out}");
    assert!(
        out.contains("latest fix  arrived 6000.0 s after its event time"),
        "the offline batch's first fix is 1 h 40 min late: {out}"
    );
    assert!(outside > 0);

    // --- a lateness bound below the offline batch's delay leaves it out (the contract)
    let nd30 = dir.path().join("w30.ndjson");
    ok(&replay(
        &s,
        &[
            &window[..],
            &["--lateness", "30m", "--out", nd30.to_str().unwrap()],
        ]
        .concat(),
        &[],
    ));
    let timely: Vec<&LocationFix> = on_time.iter().chain(&skewed).collect();
    assert_eq!(ndjson_ids(&nd30), ordered(&timely));

    // --- filters: tenant, users, bbox (users u1 and u2 of every tenant lie in it)
    let f = dir.path().join("f.ndjson");
    ok(&replay(
        &s,
        &[
            &window[..],
            &[
                "--tenant",
                "t2",
                "--users",
                "u1,u3",
                "--out",
                f.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[],
    ));
    let want: Vec<&LocationFix> = all
        .iter()
        .copied()
        .filter(|x| x.tenant == "t2" && (x.user_id == "u1" || x.user_id == "u3"))
        .collect();
    assert_eq!(ndjson_ids(&f), ordered(&want));
    let b = dir.path().join("b.ndjson");
    ok(&replay(
        &s,
        &[
            &window[..],
            &[
                "--bbox",
                "10.5,48.05,11.25,48.3",
                "--out",
                b.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[],
    ));
    let want: Vec<&LocationFix> = all
        .iter()
        .copied()
        .filter(|x| x.user_id == "u1" || x.user_id == "u2")
        .collect();
    assert_eq!(ndjson_ids(&b), ordered(&want));

    // --- CSV and GeoJSON: one row / feature a fix, in the same order
    let csv = dir.path().join("w.csv");
    ok(&replay(
        &s,
        &[
            &window[..],
            &["--format", "csv", "--out", csv.to_str().unwrap()],
        ]
        .concat(),
        &[],
    ));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("tenant,user_id,device_id,seq,ts,lat,lon,"));
    assert!(text.contains(",\"walking, \"\"fast\"\"\","), "quoted");
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), expected.len());
    assert!(rows[0].starts_with(&format!("{},{},", expected[0].0, expected[0].1)));
    let gj = dir.path().join("w.geojson");
    ok(&replay(
        &s,
        &[
            &window[..],
            &["--format", "geojson", "--out", gj.to_str().unwrap()],
        ]
        .concat(),
        &[],
    ));
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gj).unwrap()).unwrap();
    let features = g["features"].as_array().unwrap();
    assert_eq!(features.len(), expected.len());
    assert_eq!(g["type"], "FeatureCollection");
    let first = all.iter().find(|x| id(x) == expected[0]).unwrap();
    assert_eq!(
        features[0]["geometry"]["coordinates"][0].as_f64().unwrap(),
        first.lon
    );

    // --- Parquet, read back by DuckDB: counts, min/max per user, typed columns
    let pq = dir.path().join("w.parquet");
    ok(&replay(
        &s,
        &[
            &window[..],
            &["--format", "parquet", "--out", pq.to_str().unwrap()],
        ]
        .concat(),
        &[("LOCUS_REPLAY__PARQUET_ROW_GROUP_ROWS", "100".to_string())],
    ));
    let script = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"select tenant, user_id, count(*), min(lat), max(lat), epoch_ms(min(ts)), epoch_ms(max(ts)) from '{p}' group by 1, 2 order by 1, 2\").fetchall()\n\
         types = dict(duckdb.sql(\"select column_name, column_type from (describe select * from '{p}')\").fetchall())\n\
         groups = duckdb.sql(\"select count(*) from parquet_metadata('{p}') where column_id = 0\").fetchall()[0][0]\n\
         print(json.dumps({{'rows': rows, 'types': types, 'row_groups': groups}}))\n",
        p = pq.display()
    );
    let py = Command::new(python())
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python venv from dev/stack (duckdb)");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    // per (tenant, user): count, min/max lat, min/max ts
    type Stats = (i64, f64, f64, i64, i64);
    let mut want: BTreeMap<(String, String), Stats> = BTreeMap::new();
    for f in &all {
        let e = want
            .entry((f.tenant.clone(), f.user_id.clone()))
            .or_insert((0, f64::MAX, f64::MIN, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 = e.1.min(f.lat);
        e.2 = e.2.max(f.lat);
        e.3 = e.3.min(f.ts);
        e.4 = e.4.max(f.ts);
    }
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for (r, ((tenant, user), (n, min_lat, max_lat, min_ts, max_ts))) in rows.iter().zip(&want) {
        assert_eq!(r[0].as_str().unwrap(), tenant);
        assert_eq!(r[1].as_str().unwrap(), user);
        assert_eq!(r[2].as_i64().unwrap(), *n, "{tenant}/{user}");
        assert_eq!(r[3].as_f64().unwrap(), *min_lat);
        assert_eq!(r[4].as_f64().unwrap(), *max_lat);
        assert_eq!(r[5].as_i64().unwrap(), *min_ts);
        assert_eq!(r[6].as_i64().unwrap(), *max_ts);
    }
    assert_eq!(v["types"]["ts"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(v["types"]["lat"], "DOUBLE");
    assert_eq!(v["types"]["altitude_m"], "DOUBLE");
    assert_eq!(
        v["row_groups"].as_i64().unwrap(),
        expected.len().div_ceil(100) as i64
    );

    // --- bad arguments are refused before anything is read
    let e = replay(&s, &["export", "--from", "now", "--to", "-1h"], &[]);
    assert!(!e.status.success());
    assert!(
        stderr(&e).contains("must be after --from"),
        "{}",
        stderr(&e)
    );
    let e = replay(
        &s,
        &[
            "export",
            "--from",
            "-30d",
            "--to",
            "-20d",
            "--lateness",
            "1h",
        ],
        &[],
    );
    assert!(!e.status.success());
    assert!(
        stderr(&e).contains("nothing of it is left"),
        "{}",
        stderr(&e)
    );
    let e = replay(
        &s,
        &["export", "--from", "-1h", "--to", "now"],
        &[("LOCUS_TOPICS__LOCATIONS", "no-such-topic".into())],
    );
    assert!(!e.status.success());
    assert!(stderr(&e).contains("no-such-topic"), "{}", stderr(&e));
    let e = replay(&s, &["export", "--from", "yesterday", "--to", "now"], &[]);
    assert!(!e.status.success());
    assert!(stderr(&e).contains("RFC 3339"), "{}", stderr(&e));
    // a window partly past retention says so
    let part = replay(
        &s,
        &[
            "export",
            "--from",
            "-8d",
            "--to",
            "now",
            "--out",
            nd.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok(&part).contains("past"), "{}", stderr(&part));
    // a window too large for memory fails after the output was opened: neither the file nor
    // its partial is left
    let big = dir.path().join("big.parquet");
    let e = replay(
        &s,
        &[
            &window[..],
            &["--format", "parquet", "--out", big.to_str().unwrap()],
        ]
        .concat(),
        &[("LOCUS_REPLAY__MAX_FIXES", "10".to_string())],
    );
    assert!(!e.status.success());
    assert!(stderr(&e).contains("replay.max_fixes"), "{}", stderr(&e));
    assert!(!big.exists());
    // nothing is left behind under a partial name
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(left.is_empty());
}

/// Committed offsets of `group` on `topic` (partition → offset).
fn committed(s: &Scope, group: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = s.kafka().consumer_config("test", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&s.locations, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_sink_repairs_history_and_cache_while_the_live_groups_run() {
    let s = Scope::new("replay-sink");
    create_topics(&s).await;
    let ks = unique("rs_");
    let (history_group, cache_group) = (format!("{}-h", s.prefix), format!("{}-c", s.prefix));
    let env = vec![
        ("LOCUS_SCYLLA__KEYSPACE", ks.clone()),
        ("LOCUS_SCYLLA__NODES", format!("[\"{}\"]", cql_addr())),
        ("LOCUS_HISTORY__GROUP", history_group.clone()),
        ("LOCUS_CACHE__GROUP", cache_group.clone()),
        ("LOCUS_CACHE__KEY_PREFIX", s.prefix.clone()),
        ("LOCUS_CACHE__REDIS_URL", redis_url()),
    ];
    let (_history, history_port) = locus(&s, "history", &["history"], &env);
    let (_cache, port) = locus(&s, "cache", &["cache"], &env);
    wait_ready(history_port, Duration::from_secs(90)).await;
    wait_ready(port, Duration::from_secs(90)).await;

    let now = now_ms();
    let mut arrivals: Vec<(Option<LocationFix>, i64)> = vec![];
    let mut fixes = vec![];
    for u in 0..6 {
        for i in 0..20i64 {
            let f = fix("acme", &format!("u{u}"), i, now - 30 * MIN + i * MIN);
            arrivals.push((Some(f.clone()), f.ts + 1500));
            fixes.push(f);
        }
    }
    produce_at(&s, &mut arrivals).await;
    let session = locus_scylla::connect(&locus_scylla::ScyllaConfig {
        nodes: vec![cql_addr()],
        fetch_schema_metadata: false,
        ..Default::default()
    })
    .await
    .unwrap();
    // rows per user (Cassandra 2.1 cannot count one user across buckets in CQL)
    let rows_of = async || -> BTreeMap<String, i64> {
        let mut n = BTreeMap::new();
        if let Ok(r) = session
            .query_unpaged(format!("SELECT user_id FROM {ks}.track"), ())
            .await
        {
            for u in r.into_rows_result().unwrap().rows::<(String,)>().unwrap() {
                *n.entry(u.unwrap().0).or_default() += 1;
            }
        }
        n
    };
    let count = async |user: Option<&str>| -> i64 {
        let n = rows_of().await;
        match user {
            Some(u) => n.get(u).copied().unwrap_or(0),
            None => n.values().sum(),
        }
    };
    wait_for(
        "history has every row",
        Duration::from_secs(60),
        async || count(None).await == 120,
    )
    .await;
    wait_for(
        "the live groups committed everything",
        Duration::from_secs(60),
        async || {
            committed(&s, &history_group).values().sum::<i64>() == 120
                && committed(&s, &cache_group).values().sum::<i64>() == 120
        },
    )
    .await;
    let before = (committed(&s, &history_group), committed(&s, &cache_group));

    // history lost its rows (a failed node, a restore gone wrong: TRUNCATE, which leaves no
    // tombstones; rows removed by DELETE stay shadowed by their tombstones, see the README);
    // the cache lost u3 and holds a newer u4 than the window has
    session
        .query_unpaged(format!("TRUNCATE {ks}.track"), ())
        .await
        .unwrap();
    assert_eq!(count(None).await, 0);
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{}:pos:acme:u3", s.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the cache held u3");
    let newer = fix("acme", "u4", 999, now + MIN);
    produce(&s, std::slice::from_ref(&newer)).await;
    wait_cached(port, "acme", "u4", 999).await;
    assert_eq!(
        get_data(port, "/v1/tenants/acme/users/u3/position")
            .await
            .status(),
        404
    );

    // the replay runs while new fixes keep arriving for the live groups
    let from = (now - 31 * MIN).to_string();
    let to = (now - 5 * MIN).to_string();
    let live_fixes: Vec<LocationFix> = (0..20)
        .map(|i| fix("acme", "live", i, now_ms() + i))
        .collect();
    let producing = {
        let s = s.clone();
        let live_fixes = live_fixes.clone();
        tokio::spawn(async move {
            for f in live_fixes {
                produce(&s, &[f]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let h = ok(&replay(
        &s,
        &["sink", "history", "--from", &from, "--to", &to],
        &env,
    ));
    assert!(h.contains("applied     120 fixes to history"), "{h}");
    let c = ok(&replay(
        &s,
        &["sink", "cache", "--from", &from, "--to", &to],
        &env,
    ));
    assert!(c.contains("applied     120 fixes to cache"), "{c}");
    producing.await.unwrap();

    // exactly the lost rows are back (no more: rewrites are idempotent)
    for u in ["u0", "u1", "u2", "u3", "u5"] {
        assert_eq!(count(Some(u)).await, 20, "{u} restored");
    }
    wait_for(
        "the live group wrote the new fixes too",
        Duration::from_secs(60),
        async || count(None).await == 120 + 1 + 20,
    )
    .await;
    // the cache: u3 is back at its newest fix in the window; u4 keeps its newer position
    wait_cached(port, "acme", "u3", 19).await;
    let p: serde_json::Value = get_data(port, "/v1/tenants/acme/users/u4/position")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        p["seq"], 999,
        "an older replayed fix does not overwrite a newer one"
    );
    wait_cached(port, "acme", "live", 19).await;
    // the live groups' offsets moved only by their own work: 21 new records each, and the
    // replay committed nothing anywhere
    wait_for(
        "the live groups committed the new records",
        Duration::from_secs(30),
        async || {
            let after = (committed(&s, &history_group), committed(&s, &cache_group));
            [(&before.0, &after.0), (&before.1, &after.1)]
                .iter()
                .all(|(b, a)| a.values().sum::<i64>() - b.values().sum::<i64>() == 21)
        },
    )
    .await;
    let after = (committed(&s, &history_group), committed(&s, &cache_group));
    for (b, a) in [(&before.0, &after.0), (&before.1, &after.1)] {
        for (p, o) in b {
            assert!(a[p] >= *o, "never moved back");
        }
    }
    // the replay's own reader ("<client id>-replay") committed nothing
    assert!(committed(&s, "locus-replay").is_empty());
}

async fn wait_cached(port: u16, tenant: &str, user: &str, seq: i64) {
    wait_for(
        &format!("{tenant}/{user} cached at seq {seq}"),
        Duration::from_secs(60),
        async || {
            let r = get_data(port, &format!("/v1/tenants/{tenant}/users/{user}/position")).await;
            r.status() == 200
                && r.json::<serde_json::Value>()
                    .await
                    .ok()
                    .map(|v| v["seq"].clone())
                    == Some(serde_json::json!(seq))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_group_refuses_an_active_group_then_moves_a_stopped_one() {
    let s = Scope::new("replay-group");
    create_topics(&s).await;
    let group = format!("{}-cache", s.prefix);
    let env = vec![
        ("LOCUS_CACHE__GROUP", group.clone()),
        ("LOCUS_CACHE__KEY_PREFIX", s.prefix.clone()),
        ("LOCUS_CACHE__REDIS_URL", redis_url()),
    ];
    let now = now_ms();
    let fixes: Vec<LocationFix> = (0..50)
        .map(|i| fix("acme", &format!("u{}", i % 5), i, now - 20 * MIN + i * 1000))
        .collect();
    let mut arrivals: Vec<_> = fixes
        .iter()
        .map(|f| (Some(f.clone()), f.ts + 500))
        .collect();
    produce_at(&s, &mut arrivals).await;
    let (mut cache, port) = locus(&s, "cache", &["cache"], &env);
    wait_ready(port, Duration::from_secs(60)).await;
    wait_for(
        "the group committed all",
        Duration::from_secs(60),
        async || committed(&s, &group).values().sum::<i64>() == 50,
    )
    .await;

    // active: refused, naming the member
    let r = replay(&s, &["group", &group, "--to-earliest"], &env);
    assert!(
        !r.status.success(),
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        stderr(&r)
    );
    let e = stderr(&r);
    assert!(e.contains("active member") && e.contains("locus"), "{e}");

    cache.term();
    // a plan changes nothing
    let cut = (now - 20 * MIN + 30 * 1000 + 500).to_string(); // fixes 30..49 arrived at or after it
    let plan = replay(&s, &["group", &group, "--to-datetime", &cut], &env);
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(text.contains("total: 20 records to read again"), "{text}");
    assert_eq!(committed(&s, &group).values().sum::<i64>(), 50);
    // executed: the committed offsets move, and the group re-reads exactly those 20
    let exec = replay(
        &s,
        &["group", &group, "--to-datetime", &cut, "--execute"],
        &env,
    );
    assert!(exec.status.success(), "{}", stderr(&exec));
    assert_eq!(committed(&s, &group).values().sum::<i64>(), 30);
    let (_cache2, port2) = locus(&s, "cache2", &["cache"], &env);
    wait_ready(port2, Duration::from_secs(60)).await;
    wait_for("re-read", Duration::from_secs(60), async || {
        committed(&s, &group).values().sum::<i64>() == 50
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = metrics_text(port2).await;
    assert!(
        text.contains("locus_consumer_records_total{stage=\"cache\"} 20"),
        "{}",
        text.lines()
            .filter(|l| l.contains("consumer_records"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // an unknown group is named, whatever the target (a typo must not create a group)
    for target in [
        &["--shift-by", "-5"][..],
        &["--to-latest"],
        &["--to-earliest"],
    ] {
        let r = replay(
            &s,
            &[&["group", "no-such-group-x"][..], target, &["--execute"]].concat(),
            &env,
        );
        assert!(!r.status.success());
        assert!(stderr(&r).contains("no-such-group-x"), "{}", stderr(&r));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_topic_copies_byte_identical_at_the_chosen_speed() {
    let s = Scope::new("replay-topic");
    create_topics(&s).await;
    let now = now_ms();
    // two bursts of 20 fixes, 4 s apart by record time
    let mut arrivals = vec![];
    for i in 0..40i64 {
        let f = fix("acme", &format!("u{}", i % 4), i, now - 10 * MIN + i);
        let at = now - 10 * MIN + if i < 20 { i } else { 4000 + i };
        arrivals.push((Some(f), at));
    }
    produce_at(&s, &mut arrivals).await;
    let into = s.dlq.clone();
    let from = (now - 11 * MIN).to_string();
    let to = (now - 9 * MIN).to_string();
    let r = ok(&replay(
        &s,
        &[
            "topic", "--from", &from, "--to", &to, "--into", &into, "--speed", "2",
        ],
        &[],
    ));
    assert!(r.contains("copied      40 records"), "{r}");
    let src = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        r.len() >= 40
    });
    let dst = consume_until(&s.brokers, &into, Duration::from_secs(30), |r| {
        r.len() >= 40
    });
    let bytes = |v: &[Record]| {
        type Copy = (Vec<u8>, Vec<u8>, Vec<(String, String)>);
        let mut b: Vec<Copy> = v
            .iter()
            .map(|r| {
                let mut h: Vec<_> = r.headers.clone().into_iter().collect();
                h.sort();
                (r.key.clone(), r.value.clone(), h)
            })
            .collect();
        b.sort();
        b
    };
    assert_eq!(
        bytes(&src),
        bytes(&dst),
        "keys, values and headers identical"
    );
    // pacing: the 4 s gap between the bursts became ~2 s at --speed 2 (a ratio, with room
    // for a busy machine)
    let ts: Vec<i64> = {
        let mut t: Vec<i64> = dst.iter().filter_map(|r| r.timestamp).collect();
        t.sort();
        t
    };
    let gap = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap() as f64;
    let ratio = gap / 4000.0;
    assert!(
        (0.4..0.75).contains(&ratio),
        "gap between bursts {gap} ms, {ratio:.2} of the original (want ~0.5)"
    );
    // the source is refused as destination
    let e = replay(
        &s,
        &[
            "topic",
            "--from",
            &from,
            "--to",
            &to,
            "--into",
            &s.locations,
        ],
        &[],
    );
    assert!(!e.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_over_http_streams_the_tenants_window_paced_with_auth_and_a_cap() {
    let s = Scope::new("replay-http");
    create_topics(&s).await;
    let now = now_ms();
    let base = now - 20 * MIN;
    // acme: 3 users x 5 fixes over 4 s of event time; globex: the same times
    let mut arrivals = vec![];
    for u in 0..3 {
        for i in 0..5i64 {
            for tenant in ["acme", "globex"] {
                let f = fix(tenant, &format!("u{u}"), i, base + i * 1000 + u);
                arrivals.push((Some(f.clone()), f.ts + 700));
            }
        }
    }
    produce_at(&s, &mut arrivals).await;
    let (_push, port) = locus(
        &s,
        "push",
        &["push"],
        &[
            ("LOCUS_REPLAY__MAX_CONCURRENT", "1".to_string()),
            ("LOCUS_CACHE__REDIS_URL", redis_url()),
            ("LOCUS_CACHE__KEY_PREFIX", s.prefix.clone()),
        ],
    );
    wait_ready(port, Duration::from_secs(60)).await;
    let window = format!("from={}&to={}", base - 1000, base + 10_000);
    let tok = token("acme", None, 600);
    let path = |q: &str, t: &str| format!("/v1/tenants/acme/replay?{q}&access_token={t}");

    // auth and arguments: the same answers as every data route
    let status = async |p: String| SseClient::open(port, &p, &[], None).await.status;
    assert_eq!(
        status(format!("/v1/tenants/acme/replay?{window}")).await,
        401
    );
    assert_eq!(
        status(path(&window, &token("globex", None, 600))).await,
        403
    );
    assert_eq!(
        status(path(&window, &token("acme", Some(&["u1"]), 600))).await,
        403
    );
    assert_eq!(
        status(path(&format!("from={}&to={}", base, base - 1), &tok)).await,
        400
    );
    assert_eq!(status(path(&format!("{window}&nope=1"), &tok)).await, 400);
    assert_eq!(status(path(&format!("{window}&speed=0"), &tok)).await, 400);
    assert_eq!(
        status(path(&format!("{window}&bbox=1,2,3"), &tok)).await,
        400
    );
    // no reading days of every tenant's traffic, no holding a slot for days
    let week = format!("from={}&to={}", now - 7 * 24 * 60 * MIN, now);
    assert_eq!(status(path(&week, &tok)).await, 400);
    let hour = format!("from={}&to={}", now - 60 * MIN, now);
    assert_eq!(
        status(path(&format!("{hour}&speed=0.0000001"), &tok)).await,
        400
    );
    assert_eq!(
        status(path(&format!("{window}&lateness=7d"), &tok)).await,
        400
    );

    // at speed 2 the 4 s of event time take ~2 s; only acme's fixes, in event-time order
    let started = std::time::Instant::now();
    let mut c = SseClient::open(port, &path(&format!("{window}&speed=2"), &tok), &[], None).await;
    assert_eq!(c.status, 200);
    let mut got = vec![];
    let (mut first_at, mut last_at) = (None, started);
    let end = loop {
        let e = c
            .next(Duration::from_secs(20))
            .await
            .expect("events until end");
        match e.kind.as_str() {
            "fix" => {
                last_at = std::time::Instant::now();
                first_at.get_or_insert(last_at);
                got.push(e.json());
            }
            "end" => break e.json(),
            ":" => {}
            other => panic!("unexpected event {other}: {}", e.data),
        }
    };
    assert_eq!(got.len(), 15, "acme's 15 fixes, not globex's");
    assert!(got.iter().all(|f| f["tenant"] == "acme"));
    let ts: Vec<i64> = got.iter().map(|f| f["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "event-time order");
    // Never early: the last fix cannot come sooner after the request than its pace allows
    // (a slow start only makes it later). Not much late: from the first fix to the last,
    // which a slow start does not stretch.
    let since_request = (last_at - started).as_secs_f64();
    let since_first = (last_at - first_at.unwrap()).as_secs_f64();
    assert!(
        since_request >= 0.8 * 2.0 && since_first < 1.6 * 2.0,
        "4 s of fixes at speed 2: the last {since_request:.2} s after the request, \
         {since_first:.2} s after the first"
    );
    assert_eq!(end["in_window"], 15);
    // the end report carries only the tenant's own numbers (records read, filtered out or
    // outside the window count every tenant's traffic)
    for leak in [
        "records_read",
        "bytes_read",
        "filtered_out",
        "outside_window",
        "partitions",
    ] {
        assert!(end.get(leak).is_none(), "{leak} in {end}");
    }
    // users filter
    let mut c = SseClient::open(
        port,
        &path(&format!("{window}&speed=1000&users=u2"), &tok),
        &[],
        None,
    )
    .await;
    let mut n = 0;
    while let Some(e) = c.next(Duration::from_secs(10)).await {
        match e.kind.as_str() {
            "fix" => {
                assert_eq!(e.json()["user_id"], "u2");
                n += 1;
            }
            "end" => break,
            _ => {}
        }
    }
    assert_eq!(n, 5);

    // one replay at a time (replay.max_concurrent = 1): a second gets 503 while the first
    // plays; when the first client leaves, its slot is free again
    let slow = SseClient::open(
        port,
        &path(&format!("{window}&speed=0.01"), &tok),
        &[],
        None,
    )
    .await;
    assert_eq!(slow.status, 200);
    let busy = SseClient::open(port, &path(&window, &tok), &[], None).await;
    assert_eq!(busy.status, 503);
    drop(slow);
    wait_for("the slot is freed", Duration::from_secs(10), async || {
        let c = SseClient::open(
            port,
            &path(&format!("{window}&speed=1000"), &tok),
            &[],
            None,
        )
        .await;
        c.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_whose_consumer_fails_stops_the_process() {
    // The registry is unreachable: the cache's sink fails the batch (not the records' fault,
    // so nothing is dead-lettered or committed) and the consumer ends with an error; the
    // process must end too, not stay up with its sweeper and a green /readyz.
    let s = Scope::new("replay-stagefail");
    create_topics(&s).await;
    let now = now_ms();
    let mut arrivals = vec![(Some(fix("acme", "u1", 1, now)), now)];
    produce_at(&s, &mut arrivals).await;
    let group = format!("{}-c", s.prefix);
    let (mut cache, _port) = locus(
        &s,
        "cache",
        &["cache"],
        &[
            ("LOCUS_CACHE__GROUP", group.clone()),
            ("LOCUS_CACHE__KEY_PREFIX", s.prefix.clone()),
            ("LOCUS_CACHE__REDIS_URL", redis_url()),
            ("LOCUS_REGISTRY__URL", "http://127.0.0.1:9".to_string()),
            ("LOCUS_REGISTRY__TIMEOUT_MS", "500".to_string()),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = cache.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache process kept running after its consumer failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success());
    assert!(committed(&s, &group).is_empty(), "nothing committed");
}
