//! `locus-bench`: load generators for the benchmarks in `loadtest/bench/`.
//!
//!   locus-bench produce --topic T --count N [--users U]     N Avro fixes straight into Kafka
//!   locus-bench cql-ceiling --count N --concurrency C       N prepared inserts through the
//!                                                           scylla driver: the store's ceiling
//!   locus-bench codec [--count N]                           Avro encode/decode per fix: the
//!                                                           generic path vs the direct one

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures::StreamExt;
use locus_kafka::{KafkaConfig, Producer};
use locus_schemas::{Codec, LocationFix, RegistryConfig};
use locus_scylla::{HistoryConfig, HistoryStore, ScyllaConfig};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Produce(ProduceArgs),
    /// The cache sink alone (Avro decode + forward-only Lua update, pipelined) vs its script
    /// calls sent raw in pipelines of the same size (the ceiling), and vs the script's own
    /// commands sent raw without a script.
    Cache(CacheArgs),
    /// The history sink alone (Avro decode, grouping, unlogged batches at `concurrency`) on
    /// pre-encoded records, without Kafka.
    HistorySink(HistorySinkArgs),
    /// CPU per fix of the generic apache-avro path and of the direct `wire` path, both ways
    /// (no registry: a fixed schema id).
    Codec(CodecArgs),
    CqlCeiling(CqlCeilingArgs),
}

#[derive(Debug, clap::Args)]
struct ProduceArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry: String,
}

#[derive(Debug, clap::Args)]
struct CacheArgs {
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Batches in flight at once (the stage's `cache.max_in_flight_batches`).
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// A database of its own: the benchmark flushes it before and after. Several,
    /// separated by commas, are shards, as in `cache.redis_url`.
    #[arg(long, default_value = "redis://127.0.0.1:6379/9")]
    redis: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry: String,
}

#[derive(Debug, clap::Args)]
struct HistorySinkArgs {
    #[arg(long, default_value_t = 50_000)]
    count: usize,
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// What the rows of one unlogged batch share (`history.batch_grouping`).
    #[arg(long, value_enum, default_value_t = Grouping::ReplicaSet)]
    grouping: Grouping,
    /// Most rows in one unlogged batch (`history.rows_per_batch`; default its default).
    #[arg(long)]
    rows_per_batch: Option<usize>,
    #[arg(long, default_value = "127.0.0.1:9042")]
    node: String,
    #[arg(long)]
    keyspace: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry: String,
}

/// `history.batch_grouping`, as a command-line value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Grouping {
    ReplicaSet,
    Partition,
}

#[derive(Debug, clap::Args)]
struct CodecArgs {
    #[arg(long, default_value_t = 200_000)]
    count: usize,
}

#[derive(Debug, clap::Args)]
struct CqlCeilingArgs {
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value = "127.0.0.1:9042")]
    node: String,
    #[arg(long)]
    keyspace: String,
}

type Shards = [::redis::aio::MultiplexedConnection];

/// The cache bench's two passes: users new, then each moving on.
const PASSES: [&str; 2] = ["new users  ", "users move "];

/// CPU seconds the Redis servers have used so far (`INFO cpu`, all their threads, summed).
async fn redis_cpu_seconds(shards: &Shards) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for con in shards {
        let info: String = ::redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut con.clone())
            .await?;
        total += info
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

/// Sends each shard its pipeline, all at once.
async fn send(shards: &Shards, pipes: Vec<(usize, ::redis::Pipeline)>) -> anyhow::Result<()> {
    futures::future::try_join_all(pipes.into_iter().map(|(i, pipe)| {
        let mut con = shards[i].clone();
        async move { pipe.query_async::<()>(&mut con).await }
    }))
    .await?;
    Ok(())
}

/// Runs `work` (at most `in_flight` at once) as one measured pass and returns its line:
/// `{count} in {wall} s = {rate} updates/s, ...`, and (updates/s, Redis CPU s).
async fn measured_pass<F, E>(
    shards: &Shards,
    count: usize,
    in_flight: usize,
    work: impl Iterator<Item = F>,
) -> anyhow::Result<(String, f64, f64)>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let cpu0 = cpu_seconds();
    let redis0 = redis_cpu_seconds(shards).await?;
    let started = Instant::now();
    let mut running = futures::stream::iter(work).buffer_unordered(in_flight);
    while let Some(done) = running.next().await {
        done.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let redis_cpu = redis_cpu_seconds(shards).await? - redis0;
    let n = count as f64;
    let line = format!(
        "{count} in {wall:.2} s = {:.0} updates/s, client CPU {:.2} µs/update, Redis CPU {:.2} µs/update",
        n / wall,
        1e6 * cpu / n,
        1e6 * redis_cpu / n
    );
    Ok((line, n / wall, redis_cpu))
}

/// The commands the cache's update script runs for `fixes` (HGET and HSET per fix; GEOADD,
/// ZADD and SADD per run of `UPDATE_CHUNK`), as one pipeline of plain commands per shard, no
/// script.
fn script_commands(
    prefix: &str,
    store: &locus_redis::CacheStore,
    fixes: &[LocationFix],
) -> Vec<(usize, ::redis::Pipeline)> {
    let mut by_shard: Vec<Vec<&LocationFix>> = vec![vec![]; store.shard_count()];
    for f in fixes {
        by_shard[store.shard_of(&f.tenant, &f.user_id)].push(f);
    }
    by_shard
        .iter()
        .enumerate()
        .filter(|(_, fixes)| !fixes.is_empty())
        .map(|(i, fixes)| (i, shard_script_commands(prefix, fixes)))
        .collect()
}

fn shard_script_commands(prefix: &str, fixes: &[&LocationFix]) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    for run in fixes.chunks(locus_redis::UPDATE_CHUNK) {
        let tenant = &run[0].tenant;
        for f in run {
            let key = format!("{prefix}r:pos:{}:{}", f.tenant, f.user_id);
            pipe.cmd("HGET").arg(&key).arg("ts").ignore();
            pipe.cmd("HSET")
                .arg(&key)
                .arg("ts")
                .arg(f.ts)
                .arg("lat")
                .arg(f.lat)
                .arg("lon")
                .arg(f.lon)
                .arg("device_id")
                .arg(&f.device_id)
                .arg("seq")
                .arg(f.seq)
                .arg("speed_mps")
                .arg("3")
                .arg("heading_deg")
                .arg("180")
                .arg("accuracy_m")
                .arg("5")
                .arg("battery_pct")
                .arg("77")
                .arg("received_at")
                .arg(f.received_at)
                .ignore();
        }
        let geo = pipe.cmd("GEOADD").arg(format!("{prefix}r:geo:{tenant}"));
        for f in run {
            geo.arg(f.lon).arg(f.lat).arg(&f.user_id);
        }
        geo.ignore();
        let seen = pipe.cmd("ZADD").arg(format!("{prefix}r:seen:{tenant}"));
        for f in run {
            seen.arg(f.ts).arg(&f.user_id);
        }
        seen.ignore();
        pipe.cmd("SADD")
            .arg(format!("{prefix}r:tenants"))
            .arg(tenant)
            .ignore();
    }
    pipe
}

fn fix(i: usize, users: usize, base: i64) -> LocationFix {
    let u = i % users;
    LocationFix {
        tenant: "bench".into(),
        user_id: format!("user-{u:06}"),
        device_id: format!("dev-{u:06}"),
        seq: (i / users) as i64,
        ts: base + i as i64,
        lat: 52.5 + (i % 1000) as f64 * 1e-5,
        lon: 13.4 + (i % 997) as f64 * 1e-5,
        accuracy_m: Some(5.0),
        altitude_m: None,
        speed_mps: Some(3.0),
        heading_deg: Some(180.0),
        battery_pct: Some(77),
        activity: None,
        source: Some("gps".into()),
        received_at: base + i as i64 + 50,
    }
}

/// The history table in `keyspace` at `node` (created if missing), with the default
/// history settings.
async fn history_store(
    node: String,
    keyspace: String,
) -> anyhow::Result<(HistoryStore, HistoryConfig)> {
    let scylla = ScyllaConfig {
        nodes: vec![node],
        keyspace,
        fetch_schema_metadata: false,
        ..Default::default()
    };
    let history = HistoryConfig::default();
    let session = Arc::new(locus_scylla::connect(&scylla).await?);
    locus_scylla::migrate(&session, &scylla, &history).await?;
    let store = HistoryStore::prepare(session, &scylla, &history).await?;
    Ok((store, history))
}

/// A codec against the registry at `registry`, for `topic`'s subject.
fn codec_for(registry: &str, topic: &str) -> anyhow::Result<Codec> {
    let cfg = RegistryConfig {
        url: registry.to_owned(),
        ..Default::default()
    };
    Ok(Codec::new(&cfg, topic)?)
}

/// The fixes as the Kafka records a sink is given (partition 0, offsets from 0).
async fn records(
    codec: &Codec,
    topic: &str,
    fixes: &[LocationFix],
) -> anyhow::Result<Vec<locus_kafka::Record>> {
    let mut records = Vec::with_capacity(fixes.len());
    for (i, f) in fixes.iter().enumerate() {
        records.push(locus_kafka::Record {
            topic: topic.to_owned(),
            partition: 0,
            offset: i as i64,
            key: Some(f.user_id.clone().into_bytes()),
            value: Some(codec.encode(f).await?),
            timestamp_ms: None,
            headers: vec![],
        });
    }
    Ok(records)
}

/// CPU seconds (user + system) so far of the process whose `/proc/<pid>/stat` is `stat`.
fn stat_cpu_seconds(stat: impl AsRef<std::path::Path>) -> Option<f64> {
    let s = std::fs::read_to_string(stat).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

fn cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds (user + system) so far of every process whose command line contains
/// `needle` (0 when none runs here).
fn cpu_seconds_of(needle: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter_map(|e| stat_cpu_seconds(e.path().join("stat")))
        .sum()
}

/// CPU seconds so far of the local CQL server side: Cassandra, and the stack's adapter.
fn cql_server_cpu() -> (f64, f64) {
    (
        cpu_seconds_of("CassandraDaemon"),
        cpu_seconds_of("locus-cql-adapter"),
    )
}

/// "Cassandra N µs/row, adapter M µs/row" since `before`.
fn cql_server_cost(before: (f64, f64), rows: usize) -> String {
    let now = cql_server_cpu();
    format!(
        "Cassandra {:.1} µs/row, CQL adapter {:.1} µs/row",
        1e6 * (now.0 - before.0) / rows as f64,
        1e6 * (now.1 - before.1) / rows as f64
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - 3_600_000;
    match Args::parse().cmd {
        Cmd::Produce(a) => produce(a, base).await,
        Cmd::Cache(a) => cache(a, base).await,
        Cmd::HistorySink(a) => history_sink(a, base).await,
        Cmd::Codec(a) => codec(a, base).await,
        Cmd::CqlCeiling(a) => cql_ceiling(a, base).await,
    }
}

async fn produce(args: ProduceArgs, base: i64) -> anyhow::Result<()> {
    let ProduceArgs {
        topic,
        count,
        users,
        brokers,
        registry,
    } = args;
    let codec = codec_for(&registry, &topic)?;
    let kafka = KafkaConfig {
        brokers,
        ..Default::default()
    };
    let p = Producer::new(&kafka, "bench")?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let f = fix(i, users, base);
        let bytes = codec.encode(&f).await?;
        pending.push(p.send(&topic, f.user_id.as_bytes(), &bytes, &[]).await?);
        if i > 0 && i % 50_000 == 0 {
            eprintln!("[produce] {i} / {count}");
        }
    }
    for d in pending {
        d.delivered().await?;
    }
    eprintln!(
        "[produce] {count} fixes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn cache(args: CacheArgs, base: i64) -> anyhow::Result<()> {
    let CacheArgs {
        count,
        batch,
        in_flight,
        redis,
        registry,
    } = args;
    let topic = format!("bench-cache-{}", std::process::id());
    let codec = codec_for(&registry, &topic)?;
    // Two passes over `count` users, every fix of a pass a different user (nothing is
    // deduplicated away): first they are new (keys created), then each moves on (the
    // steady state of a fleet: keys updated in place).
    let passes: Vec<Vec<LocationFix>> = (0..2)
        .map(|p| {
            (0..count)
                .map(|i| fix(p * count + i, count, base))
                .collect()
        })
        .collect();
    let prefix = format!("bench{}", std::process::id());
    // A synchronous FLUSHDB of a pass's keys takes longer than the client's default
    // 500 ms response timeout on a busy machine.
    let mut shards = vec![];
    for url in redis.split(',') {
        shards.push(
            ::redis::Client::open(url.trim())?
                .get_multiplexed_async_connection_with_config(
                    &::redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(std::time::Duration::from_secs(60))),
                )
                .await?,
        );
    }
    let shards = &shards[..];
    // Each path starts from an empty database (flushed synchronously, outside the
    // measured passes), so none pays for another's keys: a bigger keyspace costs
    // Redis more per command (dictionary growth, cache misses).
    let flush = || async move {
        for con in shards {
            ::redis::cmd("FLUSHDB")
                .query_async::<()>(&mut con.clone())
                .await?;
        }
        anyhow::Ok(())
    };
    flush().await?;
    let cfg = locus_redis::CacheConfig {
        redis_url: redis.clone(),
        key_prefix: format!("{prefix}s"),
        ..Default::default()
    };
    let store = locus_redis::CacheStore::connect(&cfg).await?;
    let sink = locus_redis::CacheSink::new(
        store,
        codec_for(&registry, &topic)?,
        locus_kafka::DeadLetter::skip(),
    );
    use locus_kafka::Sink;
    // Warm-up, not measured: Redis grows its heap to the size of a pass once, so the
    // path measured first does not alone pay the kernel for fresh pages.
    let raw_store = locus_redis::CacheStore::connect(&locus_redis::CacheConfig {
        key_prefix: format!("{prefix}e"),
        ..cfg.clone()
    })
    .await?;
    for chunk in passes[0].chunks(batch) {
        send(
            shards,
            raw_store.update_pipelines(raw_store.script_sha(), chunk),
        )
        .await?;
    }
    flush().await?;
    let mut rates = vec![];
    for (p, fixes) in passes.iter().enumerate() {
        let records = records(&codec, &topic, fixes).await?;
        let sink = &sink;
        let applies = records
            .chunks(batch)
            .map(|chunk| sink.apply(chunk.to_vec()));
        let (line, rate, redis_cpu) = measured_pass(shards, count, in_flight, applies).await?;
        println!("[cache] sink, {}: {line}", PASSES[p]);
        rates.push((rate, redis_cpu));
    }

    // The ceiling: the sink's own commands (the script calls it sends for the same
    // fixes, same batches, same number in flight) sent raw by a plain pipelining
    // client, as redis-benchmark would: no Kafka records, no decoding. Then, for
    // comparison, what the script's atomicity costs: the commands the script runs sent
    // raw, no script.
    let script_calls =
        |chunk: &[LocationFix]| raw_store.update_pipelines(raw_store.script_sha(), chunk);
    let no_script = |chunk: &[LocationFix]| script_commands(&prefix, &raw_store, chunk);
    type Build<'a> = &'a dyn Fn(&[LocationFix]) -> Vec<(usize, ::redis::Pipeline)>;
    let paths: [(&str, Build); 2] = [
        (
            "ceiling (the same script calls, raw and pipelined)",
            &script_calls,
        ),
        (
            "without a script (its commands raw and pipelined)",
            &no_script,
        ),
    ];
    for (label, build) in paths {
        flush().await?;
        for (p, fixes) in passes.iter().enumerate() {
            let pipes = fixes.chunks(batch).map(|chunk| send(shards, build(chunk)));
            let (line, rate, redis_cpu) = measured_pass(shards, count, in_flight, pipes).await?;
            println!(
                "[cache] {label}, {}: {line}; the sink reaches {:.0}% of it (by Redis CPU per update: {:.0}%)",
                PASSES[p],
                100.0 * rates[p].0 / rate,
                100.0 * redis_cpu / rates[p].1
            );
        }
    }
    flush().await?;
    Ok(())
}

async fn history_sink(args: HistorySinkArgs, base: i64) -> anyhow::Result<()> {
    let HistorySinkArgs {
        count,
        batch,
        concurrency,
        users,
        grouping,
        rows_per_batch,
        node,
        keyspace,
        registry,
    } = args;
    let grouping = match grouping {
        Grouping::ReplicaSet => locus_scylla::BatchGrouping::ReplicaSet,
        Grouping::Partition => locus_scylla::BatchGrouping::Partition,
    };
    let topic = format!("bench-history-{}", std::process::id());
    let codec = codec_for(&registry, &topic)?;
    let fixes: Vec<LocationFix> = (0..count).map(|i| fix(i, users, base)).collect();
    let records = records(&codec, &topic, &fixes).await?;
    let (store, history) = history_store(node, keyspace).await?;
    let producer = Producer::new(&KafkaConfig::default(), "bench")?;
    let sink = locus_scylla::HistorySink::new(
        store,
        codec_for(&registry, &topic)?,
        locus_kafka::DeadLetter::to(producer, "unused-dlq"),
        concurrency,
        rows_per_batch.unwrap_or(history.rows_per_batch),
        grouping,
    );
    use locus_kafka::Sink;
    let cpu0 = cpu_seconds();
    let server0 = cql_server_cpu();
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        sink.apply(chunk.to_vec())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    println!(
        "[history] sink ({grouping:?}, {} rows a batch): {count} rows of {users} users in {wall:.2} s = {:.0} rows/s, client CPU {:.1} µs/row; {}",
        rows_per_batch.unwrap_or(history.rows_per_batch),
        count as f64 / wall,
        1e6 * cpu / count as f64,
        cql_server_cost(server0, count)
    );
    Ok(())
}

async fn codec(args: CodecArgs, base: i64) -> anyhow::Result<()> {
    let CodecArgs { count } = args;
    use locus_schemas::{decode_with_schema, encode_with_schema, location_schema, wire};
    let schema = location_schema();
    let fixes: Vec<LocationFix> = (0..count).map(|i| fix(i, 1000, base)).collect();
    let time = |label: &str, f: &mut dyn FnMut() -> anyhow::Result<usize>| {
        let cpu0 = cpu_seconds();
        let n = f()?;
        let us = 1e6 * (cpu_seconds() - cpu0) / count as f64;
        println!("[codec] {label}: {us:.3} µs/fix (checksum {n})");
        anyhow::Ok(us)
    };
    let mut encoded = vec![];
    let generic_enc = time("encode, generic", &mut || {
        encoded = fixes
            .iter()
            .map(|f| encode_with_schema(&schema, 1, f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(encoded.iter().map(Vec::len).sum())
    })?;
    let direct_enc = time("encode, direct ", &mut || {
        Ok(fixes.iter().map(|f| wire::encode_framed(1, f).len()).sum())
    })?;
    let generic_dec = time("decode, generic", &mut || {
        let mut n = 0;
        for b in &encoded {
            n += decode_with_schema(&schema, b)?.seq as usize;
        }
        Ok(n)
    })?;
    let direct_dec = time("decode, direct ", &mut || {
        let mut n = 0;
        for b in &encoded {
            n += wire::read_fix(&b[5..])?.seq as usize;
        }
        Ok(n)
    })?;
    println!(
        "[codec] direct is {:.0}x faster to encode, {:.0}x faster to decode",
        generic_enc / direct_enc,
        generic_dec / direct_dec
    );
    Ok(())
}

async fn cql_ceiling(args: CqlCeilingArgs, base: i64) -> anyhow::Result<()> {
    let CqlCeilingArgs {
        count,
        concurrency,
        users,
        node,
        keyspace,
    } = args;
    let (store, _) = history_store(node, keyspace).await?;
    let fixes: Vec<LocationFix> = (0..count).map(|i| fix(i, users, base)).collect();
    let cpu0 = cpu_seconds();
    let server0 = cql_server_cpu();
    let started = Instant::now();
    let results: Vec<Result<(), locus_scylla::ScyllaError>> = futures::stream::iter(fixes.iter())
        .map(|f| {
            let store = store.clone();
            async move { store.write_one(f).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let errors = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(errors == 0, "{errors} inserts failed");
    println!(
        "[ceiling] {count} prepared inserts, concurrency {concurrency}: {:.2} s = {:.0} rows/s, client CPU {:.1} µs/row; {}",
        wall,
        count as f64 / wall,
        1e6 * cpu / count as f64,
        cql_server_cost(server0, count)
    );
    Ok(())
}
