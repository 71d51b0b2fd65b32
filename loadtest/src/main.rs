//! `locus-sim`: a fleet of virtual devices publishing GPS fixes over MQTT (v5, QoS1).
//!
//! N devices move along plausible paths (speed and heading drift, positions advance with
//! time) and report every `--interval-ms` with jitter, multiplexed over M MQTT connections.
//! Optional offline spells end in one batch (a JSON array of everything buffered), and a rate
//! of malformed messages exercises the DLQ. It prints progress every second and, at the end,
//! a JSON report of exactly what the broker acknowledged (per device sequence numbers), so
//! tests and load tests can check that exactly that arrived.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Serialize;

#[derive(Debug, Parser, Clone)]
#[command(version, about = "Simulated fleet of GPS devices publishing over MQTT")]
struct Args {
    /// MQTT broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// MQTT broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Number of devices (one user each).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// MQTT connections the devices are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Report interval of each device, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Random jitter added to each interval, ms.
    #[arg(long, default_value_t = 100)]
    jitter_ms: u64,
    /// Stop after this many fixes per device (0: use --duration-s).
    #[arg(long, default_value_t = 0)]
    fixes_per_device: u64,
    /// Stop after this many seconds (0: use --fixes-per-device).
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Tenant of every device.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Prefix of user and device ids (tests use a unique one).
    #[arg(long, default_value = "")]
    id_prefix: String,
    /// Topic template, as the bridge's.
    #[arg(long, default_value = "locus/{tenant}/{user_id}/location")]
    topic_template: String,
    /// Chance per report that a device goes offline (then flushes one batch when back).
    #[arg(long, default_value_t = 0.0)]
    offline_rate: f64,
    /// Length of an offline spell, in reports.
    #[arg(long, default_value_t = 5)]
    offline_reports: u32,
    /// Chance per message that it is replaced by a malformed one.
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,
    /// Centre of the fleet, "lat,lon".
    #[arg(long, default_value = "52.5200,13.4050")]
    center: String,
    /// First sequence number of every device (a second run that goes on from the first).
    #[arg(long, default_value_t = 0)]
    seq_start: u64,
    /// Random seed (paths, jitter, offline spells).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the report (JSON) here; `-` for stdout.
    #[arg(long, default_value = "-")]
    report: String,
    /// Print nothing while running.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
struct DeviceReport {
    tenant: String,
    user_id: String,
    device_id: String,
    /// Sequence numbers of the fixes the broker acknowledged, as [first, last] ranges.
    seqs: Vec<(u64, u64)>,
    fixes: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    fixes_sent: u64,
    messages_sent: u64,
    batches_sent: u64,
    malformed_sent: u64,
    messages_acked: u64,
    elapsed_s: f64,
    fixes_per_s: f64,
    devices: Vec<DeviceReport>,
}

struct Device {
    user_id: String,
    device_id: String,
    topic: String,
    seq: u64,
    lat: f64,
    lon: f64,
    speed: f64,
    heading: f64,
    last_ms: i64,
    offline_left: u32,
    buffered: Vec<serde_json::Value>,
    sent_seqs: Vec<(u64, u64)>,
    fixes: u64,
}

impl Device {
    fn step(&mut self, now_ms: i64, rng: &mut StdRng) -> serde_json::Value {
        let dt = ((now_ms - self.last_ms).max(0) as f64) / 1000.0;
        self.last_ms = now_ms;
        self.heading = (self.heading + rng.random_range(-20.0..20.0)).rem_euclid(360.0);
        self.speed = (self.speed + rng.random_range(-1.0..1.0)).clamp(0.0, 25.0);
        let d = self.speed * dt;
        let rad = self.heading.to_radians();
        self.lat = (self.lat + d * rad.cos() / 111_320.0).clamp(-89.9, 89.9);
        let k = 111_320.0 * self.lat.to_radians().cos().max(0.01);
        self.lon = ((self.lon + d * rad.sin() / k + 180.0).rem_euclid(360.0)) - 180.0;
        let fix = serde_json::json!({
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": now_ms,
            "lat": (self.lat * 1e7).round() / 1e7,
            "lon": (self.lon * 1e7).round() / 1e7,
            "accuracy_m": rng.random_range(3.0..15.0f32),
            "speed_mps": self.speed as f32,
            "heading_deg": self.heading as f32,
            "battery_pct": 100 - (self.seq % 100) as i32,
            "source": "gps",
        });
        self.seq += 1;
        fix
    }

    fn record(&mut self, seqs: &[u64]) {
        for &s in seqs {
            match self.sent_seqs.last_mut() {
                Some((_, last)) if *last + 1 == s => *last = s,
                _ => self.sent_seqs.push((s, s)),
            }
            self.fixes += 1;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Default)]
struct Counters {
    fixes: AtomicU64,
    messages: AtomicU64,
    batches: AtomicU64,
    malformed: AtomicU64,
    acked: AtomicU64,
}

/// One MQTT connection and the devices it carries. Returns the devices' reports.
async fn connection(
    args: Args,
    index: usize,
    mut devices: Vec<Device>,
    counters: Arc<Counters>,
    deadline: Option<Instant>,
) -> anyhow::Result<Vec<DeviceReport>> {
    let mut opts = MqttOptions::new(
        format!("locus-sim-{}{}-{index}", args.id_prefix, std::process::id()),
        args.host.clone(),
        args.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let acks = counters.clone();
    let (err_tx, mut err_rx) = tokio::sync::mpsc::channel::<String>(1);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = err_tx.try_send(e.to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(index as u64));
    let start = Instant::now();
    let mut queue: BinaryHeap<Reverse<(Instant, usize)>> = devices
        .iter()
        .enumerate()
        .map(|(i, _)| {
            Reverse((
                start + Duration::from_millis(rng.random_range(0..args.interval_ms.max(1))),
                i,
            ))
        })
        .collect();
    while let Some(Reverse((due, i))) = queue.pop() {
        if deadline.is_some_and(|d| due > d) {
            continue;
        }
        if args.fixes_per_device > 0 && devices[i].seq - args.seq_start >= args.fixes_per_device {
            // Flush what an offline device still holds, then retire it.
            if devices[i].buffered.is_empty() {
                continue;
            }
            devices[i].offline_left = 0;
        }
        tokio::time::sleep_until(due.into()).await;
        if let Ok(e) = err_rx.try_recv() {
            anyhow::bail!("MQTT connection {index} failed: {e}");
        }
        let d = &mut devices[i];
        let now = now_ms();
        let mut fixes: Vec<serde_json::Value> = vec![];
        if args.fixes_per_device == 0 || d.seq - args.seq_start < args.fixes_per_device {
            fixes.push(d.step(now, &mut rng));
        }
        if d.offline_left == 0 && rng.random_bool(args.offline_rate.clamp(0.0, 1.0)) {
            d.offline_left = args.offline_reports.max(1);
        }
        let payload: Option<Vec<u8>> = if d.offline_left > 0 {
            d.offline_left -= 1;
            d.buffered.append(&mut fixes);
            None
        } else if !d.buffered.is_empty() {
            d.buffered.append(&mut fixes);
            counters.batches.fetch_add(1, Ordering::Relaxed);
            let batch: Vec<serde_json::Value> = std::mem::take(&mut d.buffered);
            fixes = batch;
            Some(serde_json::to_vec(&fixes)?)
        } else if fixes.is_empty() {
            None
        } else {
            Some(serde_json::to_vec(&fixes[0])?)
        };
        if let Some(mut payload) = payload {
            let seqs: Vec<u64> = fixes.iter().filter_map(|f| f["seq"].as_u64()).collect();
            if rng.random_bool(args.malformed_rate.clamp(0.0, 1.0)) {
                // A malformed message instead (its fixes are not sent: no gap is created,
                // the next message carries the next seq).
                payload = b"{\"device_id\": \"broken\", \"lat\": ".to_vec();
                counters.malformed.fetch_add(1, Ordering::Relaxed);
            } else {
                d.record(&seqs);
                counters
                    .fixes
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
            }
            client
                .publish(d.topic.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .context("queueing a publish")?;
            counters.messages.fetch_add(1, Ordering::Relaxed);
        }
        let jitter = if args.jitter_ms > 0 {
            rng.random_range(0..=args.jitter_ms)
        } else {
            0
        };
        queue.push(Reverse((
            due + Duration::from_millis(args.interval_ms + jitter),
            i,
        )));
    }
    let reports = devices
        .into_iter()
        .map(|d| DeviceReport {
            tenant: args.tenant.clone(),
            user_id: d.user_id,
            device_id: d.device_id,
            seqs: d.sent_seqs,
            fixes: d.fixes,
        })
        .collect();
    // Keep polling until every message is acknowledged (bounded), then disconnect.
    let wait_until = Instant::now() + Duration::from_secs(60);
    while counters.acked.load(Ordering::Relaxed) < counters.messages.load(Ordering::Relaxed)
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(reports)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.devices > 0 && args.connections > 0,
        "--devices and --connections must be > 0"
    );
    anyhow::ensure!(
        args.fixes_per_device > 0 || args.duration_s > 0,
        "set --fixes-per-device or --duration-s"
    );
    anyhow::ensure!(
        args.topic_template.contains("{tenant}") && args.topic_template.contains("{user_id}"),
        "--topic-template must contain {{tenant}} and {{user_id}}"
    );
    let (clat, clon) = args
        .center
        .split_once(',')
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
        .context("--center must be \"lat,lon\"")?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now = now_ms();
    let mut per_conn: Vec<Vec<Device>> = (0..args.connections).map(|_| vec![]).collect();
    for i in 0..args.devices {
        let user_id = format!("{}user-{i:05}", args.id_prefix);
        let topic = args
            .topic_template
            .replace("{tenant}", &args.tenant)
            .replace("{user_id}", &user_id);
        per_conn[i % args.connections].push(Device {
            device_id: format!("{}dev-{i:05}", args.id_prefix),
            user_id,
            topic,
            seq: args.seq_start,
            lat: clat + rng.random_range(-0.05..0.05),
            lon: clon + rng.random_range(-0.08..0.08),
            speed: rng.random_range(0.0..15.0),
            heading: rng.random_range(0.0..360.0),
            last_ms: now,
            offline_left: 0,
            buffered: vec![],
            sent_seqs: vec![],
            fixes: 0,
        });
    }
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline =
        (args.fixes_per_device == 0).then(|| started + Duration::from_secs(args.duration_s));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, devices) in per_conn.into_iter().enumerate() {
        tasks.spawn(connection(
            args.clone(),
            i,
            devices,
            counters.clone(),
            deadline,
        ));
    }
    let progress_counters = counters.clone();
    let quiet = args.quiet;
    let progress = tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let f = progress_counters.fixes.load(Ordering::Relaxed);
            if !quiet {
                eprintln!(
                    "[sim] {:>6.1}s  fixes {f} (+{}/s)  messages {}  acked {}  batches {}  malformed {}",
                    started.elapsed().as_secs_f64(),
                    f - last,
                    progress_counters.messages.load(Ordering::Relaxed),
                    progress_counters.acked.load(Ordering::Relaxed),
                    progress_counters.batches.load(Ordering::Relaxed),
                    progress_counters.malformed.load(Ordering::Relaxed),
                );
            }
            last = f;
        }
    });
    let mut devices = vec![];
    while let Some(r) = tasks.join_next().await {
        devices.extend(r??);
    }
    progress.abort();
    devices.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let elapsed = started.elapsed().as_secs_f64();
    let fixes = counters.fixes.load(Ordering::Relaxed);
    let report = Report {
        fixes_sent: fixes,
        messages_sent: counters.messages.load(Ordering::Relaxed),
        batches_sent: counters.batches.load(Ordering::Relaxed),
        malformed_sent: counters.malformed.load(Ordering::Relaxed),
        messages_acked: counters.acked.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        fixes_per_s: fixes as f64 / elapsed.max(1e-9),
        devices,
    };
    if !args.quiet {
        eprintln!(
            "[sim] done: {} fixes in {} messages ({} batches, {} malformed), {} acknowledged by the broker, {:.0} fixes/s",
            report.fixes_sent,
            report.messages_sent,
            report.batches_sent,
            report.malformed_sent,
            report.messages_acked,
            report.fixes_per_s
        );
    }
    let json = serde_json::to_string_pretty(&report)?;
    if args.report == "-" {
        println!("{json}");
    } else {
        std::fs::write(&args.report, json).with_context(|| format!("writing {}", args.report))?;
    }
    anyhow::ensure!(
        report.messages_acked >= report.messages_sent,
        "the broker acknowledged {} of {} messages",
        report.messages_acked,
        report.messages_sent
    );
    Ok(())
}
