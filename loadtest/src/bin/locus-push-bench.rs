//! `locus-push-bench`: the client side of `loadtest/bench/push.sh`.
//!
//! 1. Opens `--idle` streams that receive nothing (a tenant without traffic) and reads the
//!    push process's resident memory before and after: memory per idle stream.
//! 2. Opens `--active` streams on the tenant the simulator drives and, for `--secs`, measures
//!    fan-out (events/s over all streams) and publish → event latency: the fix's event time
//!    (set by `locus-sim` when it publishes) to the moment this client has parsed the event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Args {
    /// Port of the push process's HTTP server.
    #[arg(long)]
    port: u16,
    /// Pid of the push process (its memory is read from /proc).
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 20_000)]
    idle: usize,
    /// Token of the idle streams' tenant.
    #[arg(long)]
    idle_token: String,
    #[arg(long, default_value_t = 10)]
    active: usize,
    /// Token of the active streams' tenant.
    #[arg(long)]
    active_token: String,
    /// How long to measure the active streams, s.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Wait until this file exists before measuring the active streams (the script creates
    /// it once the simulator runs).
    #[arg(long)]
    start_file: Option<String>,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn open(port: u16, token: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "GET /v1/stream?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    if &head[9..12] != b"200" {
        return Err(std::io::Error::other(format!(
            "status {}",
            String::from_utf8_lossy(&head[9..12])
        )));
    }
    Ok(s)
}

/// Latency histogram in 1 ms buckets up to 60 s.
struct Hist {
    buckets: Vec<AtomicU64>,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            buckets: (0..60_001).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn add(&self, ms: i64) {
        let i = ms.clamp(0, 60_000) as usize;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

fn quantiles(counts: &[u64]) -> (u64, [usize; 4]) {
    let n: u64 = counts.iter().sum();
    let mut out = [0usize; 4];
    for (k, q) in [0.5, 0.9, 0.99, 1.0].iter().enumerate() {
        let want = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (ms, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= want {
                out[k] = ms;
                break;
            }
        }
    }
    (n, out)
}

/// Reads a stream, recording the latency of every `fix` event from its `ts`.
async fn read_events(mut s: TcpStream, hist: Arc<Hist>, events: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut text: Vec<u8> = Vec::new();
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        text.extend_from_slice(&buf[..n]);
        let now = now_ms();
        // Events end with a blank line; the chunked framing between them is skipped by
        // looking only at `data:` lines of fix events.
        while let Some(end) = text.windows(2).position(|w| w == b"\n\n") {
            let block = &text[..end];
            let is_fix =
                block.starts_with(b"event: fix") || block.windows(11).any(|w| w == b"event: fix\n");
            if is_fix && let Some(p) = block.windows(5).position(|w| w == b"\"ts\":") {
                let digits: Vec<u8> = block[p + 5..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .copied()
                    .collect();
                if let Ok(ts) = std::str::from_utf8(&digits).unwrap_or("").parse::<i64>() {
                    hist.add(now - ts);
                    events.fetch_add(1, Ordering::Relaxed);
                }
            }
            text.drain(..end + 2);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib(a.pid);
    println!("[push-bench] push process RSS before: {} MiB", base / 1024);

    // 1. idle streams
    let started = Instant::now();
    let mut idle = Vec::with_capacity(a.idle);
    let mut failed = 0usize;
    while idle.len() + failed < a.idle {
        let batch = (a.idle - idle.len() - failed).min(500);
        let opened =
            futures::future::join_all((0..batch).map(|_| open(a.port, &a.idle_token))).await;
        for r in opened {
            match r {
                Ok(s) => idle.push(s),
                Err(e) => {
                    if failed == 0 {
                        eprintln!("[push-bench] a stream failed to open: {e}");
                    }
                    failed += 1;
                }
            }
        }
        if idle.len() % 5000 < 500 {
            println!("[push-bench] {} idle streams open", idle.len());
        }
    }
    let opened_in = started.elapsed();
    // Let the server settle (first heartbeat not yet due), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with_idle = rss_kib(a.pid);
    let per = (with_idle.saturating_sub(base) as f64 * 1024.0) / idle.len().max(1) as f64;
    println!(
        "[push-bench] idle streams: {} open ({} failed) in {:.1}s; RSS {} MiB -> {} MiB: {:.0} bytes per idle stream",
        idle.len(),
        failed,
        opened_in.as_secs_f64(),
        base / 1024,
        with_idle / 1024,
        per
    );
    // Keep them open and drained (heartbeats) while the active streams run.
    for mut s in idle {
        tokio::spawn(async move {
            let mut b = [0u8; 256];
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
        });
    }

    // 2. active streams
    if let Some(f) = &a.start_file {
        println!("[push-bench] waiting for the simulator ({f})");
        while !std::path::Path::new(f).exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let hist = Arc::new(Hist::new());
    let events = Arc::new(AtomicU64::new(0));
    for _ in 0..a.active {
        let s = open(a.port, &a.active_token).await?;
        tokio::spawn(read_events(s, hist.clone(), events.clone()));
    }
    // Warm-up: the first seconds include the reader catching up with the simulator's start.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let h0 = hist.snapshot();
    let e0 = events.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut last = (e0, Instant::now());
    while t0.elapsed() < Duration::from_secs(a.secs) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let e = events.load(Ordering::Relaxed);
        let rate = (e - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (e, Instant::now());
        let now: Vec<u64> = hist
            .snapshot()
            .iter()
            .zip(&h0)
            .map(|(a, b)| a - b)
            .collect();
        let (n, [p50, p90, p99, max]) = quantiles(&now);
        println!(
            "[push-bench] {:>3.0}s  fan-out {:>7.0} events/s  latency p50 {p50} ms  p90 {p90} ms  p99 {p99} ms  max {max} ms  ({n} events)",
            t0.elapsed().as_secs_f64(),
            rate
        );
    }
    let total: Vec<u64> = hist
        .snapshot()
        .iter()
        .zip(&h0)
        .map(|(a, b)| a - b)
        .collect();
    let (n, [p50, p90, p99, max]) = quantiles(&total);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "[push-bench] RESULT idle_streams={} bytes_per_idle_stream={:.0} active_streams={} fanout_events_per_s={:.0} latency_ms p50={p50} p90={p90} p99={p99} max={max} events={n} rss_mib={}",
        a.idle - failed,
        per,
        a.active,
        n as f64 / secs,
        rss_kib(a.pid) / 1024
    );
    Ok(())
}
