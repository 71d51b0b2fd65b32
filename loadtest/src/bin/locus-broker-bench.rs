//! `locus-broker-bench`: what a Kafka broker costs Locus, measured from outside the broker.
//!
//! Records are shaped like the bridge's (key = user id, a value of the size of an Avro fix,
//! the bridge's `locus-tenant` header, or with `--headers 4` the four headers it wrote
//! before); the value starts with the produce time, so readers measure
//! produce → consume latency. Broker CPU comes from `/proc/PID/stat` of `--broker-pid`.
//!
//!   locus-broker-bench fill    --topic T --count N      produce N records as fast as the broker
//!                                                       takes them
//!   locus-broker-bench probe   --topic T --seconds S    one caught-up reader, one record every
//!                                                       10 ms: latency and broker CPU per fetch
//!   locus-broker-bench catchup --topic T                a new reader from offset 0 to the end
//!                                                       captured at start: rate per tenth
//!   locus-broker-bench rates   --topic T --rates 50,1000,5000 --seconds S
//!                                                       the four Locus readers (three groups
//!                                                       and a replay-style reader) at each rate
//!
//! Every command prints progress on stderr and one JSON object on stdout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    #[arg(long, default_value = "broker-bench", global = true)]
    topic: String,
    /// The broker's process id, for its CPU time (0: not measured).
    #[arg(long, default_value_t = 0, global = true)]
    broker_pid: u32,
    /// How many of the bridge's four headers each record carries (4: the bridge before
    /// 2026-11-30; 1: `locus-tenant` only, the bridge since).
    #[arg(long, default_value_t = 1, global = true)]
    headers: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the topic if it does not exist.
    Create {
        #[arg(long, default_value_t = 48)]
        partitions: i32,
    },
    Fill {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
    },
    Probe {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    Catchup {
        /// Stop after this long and report the rate so far (`complete: false`).
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
    },
    Rates {
        #[arg(long, value_delimiter = ',', default_value = "50,1000,5000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// How many of the four readers run (0 measures producing alone).
        #[arg(long, default_value_t = 4)]
        readers: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = match &args.cmd {
        Cmd::Create { partitions } => create(&args, *partitions).await?,
        Cmd::Fill { count, users } => fill(&args, *count, *users).await?,
        Cmd::Probe { seconds } => probe(&args, *seconds).await?,
        Cmd::Catchup { max_seconds } => catchup(&args, *max_seconds).await?,
        Cmd::Rates {
            rates,
            seconds,
            users,
            readers,
        } => {
            let mut runs = Vec::new();
            for rate in rates {
                runs.push(rate_run(&args, *rate, *seconds, *users, *readers).await?);
            }
            json!({ "rates": runs })
        }
    };
    println!("{out}");
    Ok(())
}

// ------------------------------------------------------------------ clients and records

fn client(args: &Args) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.brokers)
        .set("client.id", "locus-broker-bench");
    c
}

/// The bridge's producer settings (idempotent, acks=all, lz4, linger 5 ms).
fn producer(args: &Args) -> anyhow::Result<FutureProducer> {
    Ok(client(args)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000")
        .create()?)
}

/// A consumer with the stages' fetch settings (a group of its own, or none for assign).
fn consumer(args: &Args, group: &str) -> anyhow::Result<StreamConsumer> {
    Ok(client(args)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "500")
        .set("fetch.max.bytes", (8 * 1024 * 1024).to_string())
        .set("max.partition.fetch.bytes", (1024 * 1024).to_string())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A value of the size of the bridge's Avro fix (~70 bytes), starting with the produce time.
fn value(seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&now_us().to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.resize(72, 0x5a);
    v
}

fn sent_us(payload: Option<&[u8]>) -> Option<u64> {
    let bytes: [u8; 8] = payload?.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

async fn send(
    p: &FutureProducer,
    topic: &str,
    seq: u64,
    users: u64,
    headers: usize,
) -> anyhow::Result<()> {
    let user = format!("user-{}", seq % users.max(1));
    let device = format!("device-{}", seq % users.max(1));
    let seq_s = seq.to_string();
    let received = (now_us() / 1000).to_string();
    let mqtt_topic = format!("locus/acme/{user}/location");
    let all: [(&str, &[u8]); 4] = if headers == 1 {
        // The bridge's one header today.
        [("locus-tenant", b"acme"), ("", b""), ("", b""), ("", b"")]
    } else {
        [
            ("locus-device-id", device.as_bytes()),
            ("locus-seq", seq_s.as_bytes()),
            ("locus-received-at", received.as_bytes()),
            ("locus-mqtt-topic", mqtt_topic.as_bytes()),
        ]
    };
    let headers = all
        .iter()
        .take(headers.min(4))
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
    let value = value(seq);
    let record = FutureRecord::to(topic)
        .key(user.as_bytes())
        .payload(&value)
        .headers(headers);
    p.send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    Ok(())
}

// ------------------------------------------------------------------ broker CPU

/// CPU time (user + system) of a process so far, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Linux reports in clock ticks of 1/100 s on every platform Locus targets.
    ticks * 10_000
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------ commands

async fn create(args: &Args, partitions: i32) -> anyhow::Result<serde_json::Value> {
    let admin: AdminClient<DefaultClientContext> = client(args).create()?;
    let topic = NewTopic::new(&args.topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&topic], &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => bail!("creating {name}: {e}"),
        }
    }
    Ok(json!({ "topic": args.topic, "partitions": partitions }))
}

async fn fill(args: &Args, count: u64, users: u64) -> anyhow::Result<serde_json::Value> {
    let p = Arc::new(producer(args)?);
    let started = Instant::now();
    let cpu0 = cpu_us(args.broker_pid);
    let done = Arc::new(AtomicU64::new(0));
    // A fixed number of sends in flight keeps the producer's queue full without a task each.
    const IN_FLIGHT: u64 = 2000;
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..IN_FLIGHT.min(count) {
        let p = p.clone();
        let done = done.clone();
        let topic = args.topic.clone();
        let headers = args.headers;
        tasks.spawn(async move {
            let mut seq = lane;
            while seq < count {
                send(&p, &topic, seq, users, headers).await?;
                done.fetch_add(1, Ordering::Relaxed);
                seq += IN_FLIGHT;
            }
            anyhow::Ok(())
        });
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "[fill] {n}/{count} records ({:.0}%), {:.0}/s",
                    n as f64 * 100.0 / count as f64,
                    (n - last) as f64 / 5.0
                );
                last = n;
            }
        })
    };
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    progress.abort();
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_us(args.broker_pid) - cpu0;
    eprintln!(
        "[fill] {count} records in {wall:.1} s ({:.0}/s), broker CPU {:.1} µs per record",
        count as f64 / wall,
        cpu as f64 / count as f64
    );
    Ok(json!({
        "records": count,
        "seconds": wall,
        "records_per_s": count as f64 / wall,
        "broker_cpu_us_per_record": cpu as f64 / count as f64,
    }))
}

/// Reads from the current end of every partition; counts records and their latency.
struct Reader {
    received: Arc<AtomicU64>,
    latencies: Arc<std::sync::Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Reader {
    /// `group`: a consumer group of its own (subscribe), or `None` for a reader that assigns
    /// itself every partition (the push stage, a replay).
    async fn start(args: &Args, group: Option<&str>) -> anyhow::Result<Reader> {
        let name = group.map_or_else(|| format!("bench-assign-{}", now_us()), str::to_owned);
        let c = consumer(args, &name)?;
        match group {
            Some(_) => c.subscribe(&[&args.topic])?,
            None => {
                let md = c.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
                let mut tpl = TopicPartitionList::new();
                for t in md.topics() {
                    for p in t.partitions() {
                        tpl.add_partition_offset(&args.topic, p.id(), Offset::End)?;
                    }
                }
                c.assign(&tpl)?;
            }
        }
        let received = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (received, latencies, stop) = (received.clone(), latencies.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let m = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
                        Err(_) => continue,
                        Ok(m) => m?,
                    };
                    if let Some(sent) = sent_us(m.payload()) {
                        let lat = now_us().saturating_sub(sent);
                        latencies
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(lat);
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        };
        Ok(Reader {
            received,
            latencies,
            stop,
            task,
        })
    }

    /// Waits until the reader has its partitions and reads from their end.
    async fn settle(&self, args: &Args, p: &FutureProducer) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.received.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                bail!("the reader got nothing within 60 s");
            }
            send(p, &args.topic, u64::MAX, 1, args.headers).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    fn reset(&self) {
        self.received.store(0, Ordering::Relaxed);
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    async fn finish(self) -> anyhow::Result<(u64, Vec<u64>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        let mut l = std::mem::take(
            &mut *self
                .latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        l.sort_unstable();
        Ok((self.received.load(Ordering::Relaxed), l))
    }
}

/// Produces `rate` records per second for `seconds` (in ticks of 10 ms), then waits until the
/// readers have `expected` records each or 30 s pass.
async fn produce_at(
    args: &Args,
    p: &FutureProducer,
    rate: u64,
    seconds: u64,
    users: u64,
) -> anyhow::Result<u64> {
    let total = rate * seconds;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut last_report = Instant::now();
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            inflight.push(send(p, &args.topic, sent, users, args.headers));
            sent += 1;
        }
        while let Some(r) =
            futures::FutureExt::now_or_never(futures::StreamExt::next(&mut inflight))
        {
            match r {
                Some(r) => r?,
                None => break,
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("[rate {rate}/s] {sent}/{total} sent");
            last_report = Instant::now();
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut inflight).await {
        r?;
    }
    Ok(sent)
}

async fn wait_for(readers: &[Reader], expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && readers
            .iter()
            .any(|r| r.received.load(Ordering::Relaxed) < expected)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn probe(args: &Args, seconds: u64) -> anyhow::Result<serde_json::Value> {
    let p = producer(args)?;
    let reader = Reader::start(args, Some(&format!("bench-probe-{}", now_us()))).await?;
    reader.settle(args, &p).await?;
    reader.reset();
    let cpu0 = cpu_us(args.broker_pid);
    let started = Instant::now();
    let sent = produce_at(args, &p, 100, seconds, 1000).await?;
    wait_for(std::slice::from_ref(&reader), sent).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_us(args.broker_pid) - cpu0;
    let (received, lat) = reader.finish().await?;
    let out = json!({
        "sent": sent,
        "received": received,
        "latency_p50_ms": percentile(&lat, 0.5) as f64 / 1000.0,
        "latency_p99_ms": percentile(&lat, 0.99) as f64 / 1000.0,
        "broker_cpu_us_per_fetch": cpu as f64 / sent.max(1) as f64,
        "broker_cpu_percent": cpu as f64 / wall / 10_000.0,
    });
    eprintln!("[probe] {out}");
    Ok(out)
}

async fn catchup(args: &Args, max_seconds: u64) -> anyhow::Result<serde_json::Value> {
    let c: BaseConsumer = client(args)
        .set("group.id", format!("bench-catchup-{}", now_us()))
        .set("enable.auto.commit", "false")
        // A small client queue, so the reading pace is the broker's, not a prefetch's; and no
        // 1 s pause (librdkafka's default) each time that queue is full.
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.queue.backoff.ms", "5")
        .set("fetch.wait.max.ms", "500")
        .set("fetch.max.bytes", (8 * 1024 * 1024).to_string())
        .set("max.partition.fetch.bytes", (1024 * 1024).to_string())
        .create()?;
    let md = c.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut total = 0i64;
    for t in md.topics() {
        for part in t.partitions() {
            let (low, high) =
                c.fetch_watermarks(&args.topic, part.id(), Duration::from_secs(10))?;
            if high > low {
                ends.insert(part.id(), high);
                total += high - low;
                tpl.add_partition_offset(&args.topic, part.id(), Offset::Offset(low))?;
            }
        }
    }
    c.assign(&tpl)?;
    let cpu0 = cpu_us(args.broker_pid);
    let started = Instant::now();
    let mut read = 0i64;
    let mut tenths = Vec::new();
    let mut tenth_started = Instant::now();
    let mut remaining = ends.len();
    let step = (total / 10).max(1);
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    while remaining > 0 {
        if Instant::now() > deadline {
            eprintln!("[catchup] stopped after {max_seconds} s at {read}/{total}");
            break;
        }
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.context("catch-up read")?;
        read += 1;
        if read % step == 0 {
            let rate = step as f64 / tenth_started.elapsed().as_secs_f64();
            eprintln!(
                "[catchup] {read}/{total} ({}%), {rate:.0} records/s",
                read * 100 / total
            );
            tenths.push(rate);
            tenth_started = Instant::now();
        }
        if let Some(end) = ends.get(&m.partition())
            && m.offset() + 1 >= *end
        {
            ends.remove(&m.partition());
            remaining -= 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_us(args.broker_pid) - cpu0;
    let out = json!({
        "records": read,
        "total": total,
        "complete": remaining == 0,
        "seconds": wall,
        "records_per_s": read as f64 / wall,
        "rate_per_tenth": tenths,
        "broker_cpu_us_per_record": cpu as f64 / read.max(1) as f64,
    });
    eprintln!("[catchup] {out}");
    Ok(out)
}

async fn rate_run(
    args: &Args,
    rate: u64,
    seconds: u64,
    users: u64,
    readers: usize,
) -> anyhow::Result<serde_json::Value> {
    let p = producer(args)?;
    let stamp = now_us();
    // The four Locus readers: the history, last-position and events-style groups each read
    // their share, the push/replay-style reader assigns itself every partition.
    let groups = ["history", "last-position", "push"];
    let mut all = Vec::new();
    for group in groups.iter().take(readers) {
        all.push(Reader::start(args, Some(&format!("bench-{group}-{stamp}"))).await?);
    }
    if readers > groups.len() {
        all.push(Reader::start(args, None).await?);
    }
    let readers = all;
    for r in &readers {
        r.settle(args, &p).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in &readers {
        r.reset();
    }
    let cpu0 = cpu_us(args.broker_pid);
    let started = Instant::now();
    let sent = produce_at(args, &p, rate, seconds, users).await?;
    wait_for(&readers, sent).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_us(args.broker_pid) - cpu0;
    let mut received = Vec::new();
    let mut all = Vec::new();
    for r in readers {
        let (n, l) = r.finish().await?;
        received.push(n);
        all.extend(l);
    }
    all.sort_unstable();
    let out = json!({
        "rate": rate,
        "readers": received.len(),
        "seconds": seconds,
        "sent": sent,
        "received_per_reader": received,
        "broker_cpu_us_per_fix": cpu as f64 / sent.max(1) as f64,
        "broker_cpu_percent": cpu as f64 / wall / 10_000.0,
        "latency_p50_ms": percentile(&all, 0.5) as f64 / 1000.0,
        "latency_p99_ms": percentile(&all, 0.99) as f64 / 1000.0,
    });
    eprintln!("[rate {rate}/s] {out}");
    Ok(out)
}
