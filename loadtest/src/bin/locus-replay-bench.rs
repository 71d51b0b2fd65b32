//! `locus-replay-bench`: `locus replay export` against the ceiling of reading the same range
//! with a plain rdkafka consumer (no decoding, nothing written).
//!
//! Fills `--topic` with `--count` Avro fixes (once; an existing topic with enough records is
//! reused), then runs, `--rounds` times and alternating: the plain consumer, `export --format
//! parquet`, the plain read by two consumers (as the export reads a backlog), `export --format
//! ndjson`. Prints progress on stderr and one JSON object on stdout: fixes/s of each, bytes
//! per fix on disk, and each export's rate as a share of the ceiling (one consumer; Parquet's
//! also of two).
//!
//!   locus-replay-bench --locus target/release/locus --count 1000000 --rounds 2

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use locus_schemas::{Codec, LocationFix, RegistryConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry: String,
    #[arg(long, default_value = "replay-bench")]
    topic: String,
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The locus binary to run.
    #[arg(long, default_value = "target/release/locus")]
    locus: PathBuf,
    /// Where the exports go (removed after each run).
    #[arg(long, default_value = "/tmp")]
    out_dir: PathBuf,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn client(args: &Args) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.brokers);
    c
}

/// (low, high) of every partition.
fn ranges(args: &Args) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let c: StreamConsumer = client(args).set("group.id", "replay-bench").create()?;
    let md = c.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == args.topic)
        .ok_or_else(|| anyhow::anyhow!("no topic"))?;
    let mut out = vec![];
    for p in t.partitions() {
        let (lo, hi) = c.fetch_watermarks(&args.topic, p.id(), Duration::from_secs(10))?;
        out.push((p.id(), lo, hi));
    }
    Ok(out)
}

async fn fill(args: &Args) -> anyhow::Result<(i64, i64)> {
    let admin: AdminClient<DefaultClientContext> = client(args).create()?;
    let _ = admin
        .create_topics(
            &[
                NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1))
                    .set("retention.ms", "604800000"),
            ],
            &AdminOptions::new(),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let have: i64 = ranges(args)?.iter().map(|(_, lo, hi)| hi - lo).sum();
    // Event times: the last hour before the fill, one user's fixes a few seconds apart.
    let base = now_ms() - 3_600_000;
    if have >= args.count as i64 {
        eprintln!("[fill] {} already holds {have} records", args.topic);
        return Ok((base - 7 * 86_400_000, now_ms()));
    }
    let codec = Arc::new(Codec::new(
        &RegistryConfig {
            url: args.registry.clone(),
            ..Default::default()
        },
        &args.topic,
    )?);
    codec.register().await?;
    let p: FutureProducer = client(args)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .create()?;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..args.count {
        let user = i % args.users;
        let n = i / args.users;
        let f = LocationFix {
            tenant: format!("tenant-{}", user % 10),
            user_id: format!("user-{user:06}"),
            device_id: format!("dev-{user:06}"),
            seq: n as i64,
            ts: base + (i as i64 * 3_600_000 / args.count as i64),
            lat: 52.0 + (user as f64) * 1e-4 + n as f64 * 1e-5,
            lon: 13.0 + (user as f64) * 1e-4,
            accuracy_m: Some(8.0),
            altitude_m: Some(40.0),
            speed_mps: Some(1.4),
            heading_deg: Some(90.0),
            battery_pct: Some(77),
            activity: Some("walking".into()),
            source: Some("gps".into()),
            received_at: base + (i as i64 * 3_600_000 / args.count as i64) + 300,
        };
        let v = codec.encode(&f).await?;
        let key = f.user_id.clone();
        loop {
            match p.send_result(FutureRecord::to(&args.topic).key(&key).payload(&v)) {
                Ok(d) => {
                    pending.push_back(d);
                    break;
                }
                Err((_, _)) => {
                    if let Some(d) = pending.pop_front() {
                        d.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        while pending.len() > 50_000 {
            if let Some(d) = pending.pop_front() {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
        if i % 100_000 == 0 && i > 0 {
            eprintln!(
                "[fill] {i}/{} ({:.0}/s)",
                args.count,
                i as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    eprintln!(
        "[fill] {} fixes in {:.1} s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    Ok((base - 60_000, now_ms() + 60_000))
}

/// The ceiling: every record of the topic read by `consumers` assigned consumers at once (each
/// every `consumers`-th partition), nothing decoded, fetching as Locus's consumers do
/// (`fetch.queue.backoff.ms` 10 ms: librdkafka's 1 s default idles a consumer reading a backlog
/// for most of each second). One consumer is the ceiling the export is measured against; two
/// read the way the export does (`kafka.range_readers`), for comparison.
async fn plain(args: &Args, consumers: usize) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let ranges = ranges(args)?;
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..consumers {
        let c: StreamConsumer = client(args)
            .set("group.id", "replay-bench-plain")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "52428800")
            .set("fetch.queue.backoff.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = std::collections::HashMap::new();
        for (p, lo, hi) in ranges.iter().skip(i).step_by(consumers) {
            if hi > lo {
                tpl.add_partition_offset(&args.topic, *p, Offset::Offset(*lo))?;
                ends.insert(*p, *hi);
            }
        }
        if ends.is_empty() {
            continue;
        }
        c.assign(&tpl)?;
        reads.spawn(async move {
            let (mut n, mut bytes) = (0u64, 0u64);
            while !ends.is_empty() {
                let m = tokio::time::timeout(Duration::from_secs(30), c.recv()).await??;
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len) as u64
                    + m.key().map_or(0, <[u8]>::len) as u64;
                if ends
                    .get(&m.partition())
                    .is_some_and(|hi| m.offset() + 1 >= *hi)
                {
                    ends.remove(&m.partition());
                }
            }
            anyhow::Ok((n, bytes))
        });
    }
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(r) = reads.join_next().await {
        let (rn, rb) = r??;
        n += rn;
        bytes += rb;
    }
    let planned: i64 = ranges.iter().map(|(_, lo, hi)| hi - lo).sum();
    anyhow::ensure!(
        n as i64 == planned,
        "{consumers} plain consumers read {n} records of {planned}"
    );
    let s = started.elapsed().as_secs_f64();
    eprintln!(
        "[plain x{consumers}] {n} records in {s:.2} s ({:.0}/s)",
        n as f64 / s
    );
    Ok(json!({ "records": n, "bytes": bytes, "seconds": s, "fixes_per_s": n as f64 / s }))
}

fn export(args: &Args, format: &str, window: (i64, i64)) -> anyhow::Result<serde_json::Value> {
    let out = args.out_dir.join(format!("replay-bench.{format}"));
    let started = Instant::now();
    let mut child = Command::new(&args.locus)
        .args(["replay", "export", "--format", format, "--out"])
        .arg(&out)
        .args([
            "--from",
            &window.0.to_string(),
            "--to",
            &window.1.to_string(),
        ])
        .env("LOCUS_KAFKA__BROKERS", &args.brokers)
        .env("LOCUS_REGISTRY__URL", &args.registry)
        .env("LOCUS_TOPICS__LOCATIONS", &args.topic)
        .env("LOCUS_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Peak memory: the kernel's high-water mark of the process, read until it exits.
    let mut peak_kib = 0u64;
    let status_file = format!("/proc/{}/status", child.id());
    while child.try_wait()?.is_none() {
        if let Ok(st) = std::fs::read_to_string(&status_file)
            && let Some(kib) = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output()?;
    let s = started.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&o.stderr).into_owned();
    anyhow::ensure!(o.status.success(), "export failed: {report}");
    let size = std::fs::metadata(&out)?.len();
    let _ = std::fs::remove_file(&out);
    let n = report
        .lines()
        .find_map(|l| l.strip_prefix("wrote       "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!(
        "[{format}] {n} fixes in {s:.2} s ({:.0}/s), {:.1} bytes/fix, peak RSS {:.0} MiB",
        n as f64 / s,
        size as f64 / n.max(1) as f64,
        peak_kib as f64 / 1024.0
    );
    Ok(json!({
        "format": format, "fixes": n, "seconds": s, "fixes_per_s": n as f64 / s,
        "bytes": size, "bytes_per_fix": size as f64 / n.max(1) as f64,
        "peak_rss_mib": peak_kib as f64 / 1024.0,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let window = fill(&args).await?;
    let mut rounds = vec![];
    for r in 0..args.rounds {
        eprintln!("[round {}/{}]", r + 1, args.rounds);
        // Each ceiling next to the Parquet export: one consumer before it, two after.
        let plain1 = plain(&args, 1).await?;
        let parquet = export(&args, "parquet", window)?;
        let plain2 = plain(&args, 2).await?;
        let ndjson = export(&args, "ndjson", window)?;
        let rate = |v: &serde_json::Value| v["fixes_per_s"].as_f64().unwrap_or(0.0);
        let ceiling = rate(&plain1).max(1.0);
        eprintln!(
            "[share] parquet {:.2}, ndjson {:.2} of one plain consumer; parquet {:.2} of two",
            rate(&parquet) / ceiling,
            rate(&ndjson) / ceiling,
            rate(&parquet) / rate(&plain2).max(1.0)
        );
        rounds.push(json!({
            "plain": plain1, "plain_two_consumers": plain2, "parquet": parquet, "ndjson": ndjson,
            "parquet_share_of_ceiling": rate(&parquet) / ceiling,
            "ndjson_share_of_ceiling": rate(&ndjson) / ceiling,
            "parquet_share_of_two_consumers": rate(&parquet) / rate(&plain2).max(1.0),
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "rounds": rounds }))?
    );
    Ok(())
}
