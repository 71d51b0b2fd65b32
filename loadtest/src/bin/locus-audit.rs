//! `locus-audit`: is every fix the simulator sent everywhere it should be? Counted, not
//! sampled: every fix of the simulator's report (the MQTT broker acknowledged it) is looked
//! up in Kafka (the whole topic read), in Cassandra (every user's track), in Redis (every
//! user's newest fix) and among what the SSE streams saw (files of `user device seq` lines
//! written by the scenario runner). Prints JSON: per sink expected, found, missing,
//! duplicates (and a few missing identities to look at).
//!
//!   locus-audit --report sim.json --topic T --keyspace K --redis-prefix P [--sse FILE]...

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use locus_kafka::{KafkaConfig, RangeReader, StartAt, StopAt};
use locus_schemas::{Codec, RegistryConfig};
use locus_scylla::{HistoryConfig, HistoryStore, ScyllaConfig};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// The simulator's report (`locus-sim --report`).
    #[arg(long)]
    report: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    keyspace: String,
    /// `cache.key_prefix` of the run.
    #[arg(long)]
    redis_prefix: String,
    /// A file of `user device seq` lines per SSE stream; each stream must have seen every fix.
    #[arg(long)]
    sse: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry: String,
    #[arg(long, default_value = "127.0.0.1:9042")]
    node: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis: String,
    /// Track queries in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Debug, Deserialize)]
struct SimReport {
    devices: Vec<SimDevice>,
}

#[derive(Debug, Deserialize)]
struct SimDevice {
    tenant: String,
    user_id: String,
    device_id: String,
    seqs: Vec<(u64, u64)>,
}

/// One fix's identity: user, device, seq.
type Id = (String, String, i64);

/// How one sink compares with what was sent.
#[derive(Debug, Default)]
struct Tally {
    expected: usize,
    found: usize,
    duplicates: usize,
    missing: Vec<String>,
}

impl Tally {
    fn of(expected: &HashSet<Id>, seen: impl IntoIterator<Item = Id>) -> Tally {
        let mut counts: HashMap<Id, usize> = HashMap::new();
        for id in seen {
            *counts.entry(id).or_default() += 1;
        }
        let mut t = Tally {
            expected: expected.len(),
            ..Tally::default()
        };
        for (id, n) in &counts {
            if expected.contains(id) {
                t.found += 1;
                t.duplicates += n - 1;
            }
        }
        t.missing = expected
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .take(5)
            .map(|(u, d, s)| format!("{u}/{d}/{s}"))
            .collect();
        t
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "expected": self.expected,
            "found": self.found,
            "missing": self.expected - self.found,
            "duplicates": self.duplicates,
            "missing_examples": self.missing,
        })
    }
}

fn eprint_progress(what: &str, n: usize, started: Instant) {
    eprintln!(
        "[audit] {what}: {n} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Redis memory per device the cache holds: `MEMORY USAGE` of every position hash, and of
/// the tenant's GEO set and last-seen set, divided by the devices (one shard: `--redis`).
async fn redis_bytes_per_device(a: &Args, tenant: &str, users: &[String]) -> anyhow::Result<f64> {
    let client = redis::Client::open(a.redis.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let p = &a.redis_prefix;
    let mut total = 0u64;
    for chunk in users.chunks(1000) {
        let mut pipe = redis::pipe();
        for u in chunk {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(format!("{p}:pos:{tenant}:{u}"));
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut con).await?;
        total += sizes.into_iter().flatten().sum::<u64>();
    }
    for kind in ["geo", "seen"] {
        let size: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{p}:{kind}:{tenant}"))
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut con)
            .await?;
        total += size.unwrap_or(0);
    }
    Ok(total as f64 / users.len().max(1) as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let report: SimReport = serde_json::from_slice(
        &std::fs::read(&a.report).with_context(|| format!("reading {}", a.report))?,
    )?;
    let tenant = report
        .devices
        .first()
        .map(|d| d.tenant.clone())
        .context("the report has no devices")?;
    let mut expected: HashSet<Id> = HashSet::new();
    let mut newest: HashMap<String, i64> = HashMap::new();
    for d in &report.devices {
        for &(first, last) in &d.seqs {
            for s in first..=last {
                expected.insert((d.user_id.clone(), d.device_id.clone(), s as i64));
            }
            let n = newest.entry(d.user_id.clone()).or_insert(-1);
            *n = (*n).max(last as i64);
        }
    }
    eprintln!(
        "[audit] {} fixes of {} users expected",
        expected.len(),
        newest.len()
    );

    // Kafka: the whole topic.
    let started = Instant::now();
    let kafka = KafkaConfig {
        brokers: a.brokers.clone(),
        ..KafkaConfig::default()
    };
    let registry = RegistryConfig {
        url: a.registry.clone(),
        ..RegistryConfig::default()
    };
    let codec = Codec::new(&registry, &a.topic)?;
    let mut reader =
        RangeReader::open(&kafka, "audit", &a.topic, StartAt::Beginning, StopAt::End).await?;
    let mut in_kafka = vec![];
    let mut ts_range = (i64::MAX, i64::MIN);
    // Bytes of the run's records: key, value, header names and values.
    let mut bytes = [0usize; 3];
    while let Some(batch) = reader.next_batch(1024).await? {
        for r in batch {
            let Some(v) = r.value.as_deref() else {
                continue;
            };
            if let Ok(f) = codec.decode(v).await
                && f.tenant == tenant
            {
                ts_range = (ts_range.0.min(f.ts), ts_range.1.max(f.ts));
                bytes[0] += r.key.as_ref().map_or(0, Vec::len);
                bytes[1] += v.len();
                bytes[2] += r
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
                in_kafka.push((f.user_id, f.device_id, f.seq));
            }
        }
    }
    let per = |b: usize| b as f64 / in_kafka.len().max(1) as f64;
    let record_bytes = json!({
        "key": per(bytes[0]), "value": per(bytes[1]), "headers": per(bytes[2]),
        "total": per(bytes[0] + bytes[1] + bytes[2]),
    });
    eprint_progress("Kafka records read", in_kafka.len(), started);
    let kafka_tally = Tally::of(&expected, in_kafka);

    // Cassandra: every user's track over the run.
    let started = Instant::now();
    let scylla = ScyllaConfig {
        nodes: vec![a.node.clone()],
        keyspace: a.keyspace.clone(),
        fetch_schema_metadata: false,
        ..ScyllaConfig::default()
    };
    let history = HistoryConfig::default();
    let session = Arc::new(locus_scylla::connect(&scylla).await?);
    let store = HistoryStore::prepare(session, &scylla, &history).await?;
    let (from, to) = (ts_range.0.min(i64::MAX - 1), ts_range.1.saturating_add(1));
    let users: Vec<String> = newest.keys().cloned().collect();
    let rows: Vec<anyhow::Result<Vec<Id>>> = futures::stream::iter(users.iter())
        .map(|u| {
            let (store, tenant) = (store.clone(), tenant.clone());
            async move {
                let mut out = vec![];
                let mut cursor = None;
                loop {
                    let (fixes, next) = store.track(&tenant, u, from, to, cursor, 5000).await?;
                    out.extend(fixes.into_iter().map(|f| (f.user_id, f.device_id, f.seq)));
                    match next {
                        Some(c) => cursor = Some(c),
                        None => return Ok(out),
                    }
                }
            }
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    let mut in_cassandra = vec![];
    for r in rows {
        in_cassandra.extend(r?);
    }
    eprint_progress("Cassandra rows read", in_cassandra.len(), started);
    let cassandra_tally = Tally::of(&expected, in_cassandra);

    // Redis: each user's newest fix.
    let started = Instant::now();
    let cache = locus_redis::CacheStore::connect(&locus_redis::CacheConfig {
        redis_url: a.redis.clone(),
        key_prefix: a.redis_prefix.clone(),
        ..locus_redis::CacheConfig::default()
    })
    .await?;
    let mut at_newest = 0usize;
    let mut stale = vec![];
    for chunk in users.chunks(500) {
        for p in cache.positions(&tenant, chunk).await? {
            if newest.get(&p.user_id) == Some(&p.seq) {
                at_newest += 1;
            } else if stale.len() < 5 {
                stale.push(format!("{} at {}", p.user_id, p.seq));
            }
        }
    }
    eprint_progress("Redis users at their newest fix", at_newest, started);
    let redis_bytes = redis_bytes_per_device(&a, &tenant, &users).await?;

    // SSE: every stream must have seen every fix.
    let mut sse = vec![];
    for path in &a.sse {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let seen = text.lines().filter_map(|l| {
            let mut it = l.split(' ');
            Some((
                it.next()?.to_string(),
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
            ))
        });
        sse.push(Tally::of(&expected, seen));
    }
    let worst = sse.iter().min_by_key(|t| t.found);
    let out = json!({
        "kafka": kafka_tally.json(),
        "cassandra": cassandra_tally.json(),
        "redis": {
            "expected": newest.len(),
            "found": at_newest,
            "missing": newest.len() - at_newest,
            "missing_examples": stale,
        },
        "sse": worst.map(Tally::json),
        "record_bytes": record_bytes,
        "redis_bytes_per_device": redis_bytes,
        "sse_streams": sse.iter().map(Tally::json).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
