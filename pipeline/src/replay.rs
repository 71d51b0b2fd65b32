//! `locus replay …`: the analysts' and operators' commands over retained windows of
//! `locations` (replay/README.md). Each reads without a consumer group, so the live groups
//! keep their offsets and keep running; each shows progress on stderr and ends with a report.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use locus_kafka::DeadLetter;
use locus_replay::format::{Format, Output};
use locus_replay::group::Target;
use locus_replay::time::{format_time, parse_duration, parse_time};
use locus_replay::{BBox, Filter, ReplayError, Scan, Window};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::shutdown;

#[derive(Debug, Subcommand)]
pub enum ReplayAction {
    /// Write a window's fixes to a file or stdout, ordered by user then event time.
    Export {
        #[command(flatten)]
        window: WindowArgs,
        /// ndjson, csv, geojson or parquet.
        #[arg(long, default_value = "ndjson")]
        format: Format,
        /// File to write (`-`: stdout). A file appears only when complete.
        #[arg(long, default_value = "-")]
        out: String,
    },
    /// Re-run a stage's sink over a window (repair a store, fill a new cluster); the live
    /// group keeps its offsets and keeps running.
    Sink {
        /// history (Cassandra/Scylla) or cache (Redis).
        #[arg(value_parser = ["history", "cache"])]
        stage: String,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Move a stopped consumer group's committed offsets; prints the plan, changes nothing
    /// without --execute.
    Group {
        /// The consumer group (e.g. history, last-position).
        group: String,
        #[command(flatten)]
        target: TargetArgs,
        /// Topic whose offsets move (default: topics.locations).
        #[arg(long)]
        topic: Option<String>,
        /// Commit the plan (the group must have no active members).
        #[arg(long)]
        execute: bool,
    },
    /// Copy a window into another topic (keys, headers and values byte-identical).
    Topic {
        #[command(flatten)]
        window: WindowArgs,
        /// Destination topic (must exist; not the source).
        #[arg(long)]
        into: String,
        /// Replay at the original spacing divided by this (default: as fast as possible).
        #[arg(long)]
        speed: Option<f64>,
    },
}

#[derive(Debug, Args)]
pub struct WindowArgs {
    /// Window start by event time (inclusive): RFC 3339, `now`, `-6h`, or ms since the epoch.
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// Window end by event time (exclusive), same forms.
    #[arg(long, allow_hyphen_values = true)]
    to: String,
    /// Only this tenant's fixes.
    #[arg(long)]
    tenant: Option<String>,
    /// Only these users (comma-separated).
    #[arg(long, value_delimiter = ',')]
    users: Option<Vec<String>>,
    /// Only fixes inside min_lon,min_lat,max_lon,max_lat.
    #[arg(long, allow_hyphen_values = true)]
    bbox: Option<String>,
    /// How late a fix may arrive and still count (default: replay.lateness_ms), e.g. 12h.
    #[arg(long)]
    lateness: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// To the first record at or after this time (RFC 3339, `-6h`, ms).
    #[arg(long, allow_hyphen_values = true)]
    to_datetime: Option<String>,
    /// To the oldest retained record.
    #[arg(long)]
    to_earliest: bool,
    /// To the end of the log (skip everything not yet read).
    #[arg(long)]
    to_latest: bool,
    /// By N records (negative: back) from the committed offset.
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(config: &Config, action: ReplayAction) -> anyhow::Result<()> {
    let cancel = shutdown::on_signal();
    match action {
        ReplayAction::Export {
            window,
            format,
            out,
        } => export(config, &window, format, &out, cancel).await,
        ReplayAction::Sink { stage, window } => sink(config, &stage, &window, cancel).await,
        ReplayAction::Group {
            group,
            target,
            topic,
            execute,
        } => {
            let topic = topic.unwrap_or_else(|| config.topics.locations.clone());
            move_group(config, &group, &topic, &target, execute).await
        }
        ReplayAction::Topic {
            window,
            into,
            speed,
        } => copy(config, &window, &into, speed, cancel).await,
    }
}

/// The window and filter of the arguments, checked before anything is read.
pub fn window_of(
    config: &Config,
    a: &WindowArgs,
    now: i64,
) -> Result<(Window, Filter), ReplayError> {
    let from = parse_time(&a.from, now).map_err(ReplayError::Invalid)?;
    let to = parse_time(&a.to, now).map_err(ReplayError::Invalid)?;
    let lateness = match &a.lateness {
        Some(l) => parse_duration(l).map_err(ReplayError::Invalid)?,
        None => config.replay.lateness_ms,
    };
    let window = Window::new(
        from,
        to,
        lateness,
        config.bridge.max_future_ms,
        config.bridge.max_age_ms,
    )?;
    let filter = Filter {
        tenant: a.tenant.clone(),
        users: a
            .users
            .as_ref()
            .map(|u| u.iter().cloned().collect::<HashSet<_>>()),
        bbox: a.bbox.as_deref().map(BBox::parse).transpose()?,
    };
    Ok((window, filter))
}

/// Opens the scan of a window of `topics.locations`.
async fn open_scan(
    config: &Config,
    a: &WindowArgs,
    cancel: CancellationToken,
) -> anyhow::Result<Scan> {
    let now = now_ms();
    let (window, filter) = window_of(config, a, now)?;
    let topic = &config.topics.locations;
    // On a task of its own, while the read is planned.
    let (kafka, name) = (config.kafka.clone(), topic.clone());
    let retention = tokio::spawn(async move {
        let value = locus_topics::live_config(&kafka, &name, "retention.ms")
            .await
            .map_err(|e| ReplayError::Invalid(format!("reading {name}'s retention: {e}")))?;
        Ok::<_, ReplayError>(value.and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1))
    });
    let retention = async {
        retention
            .await
            .map_err(|e| ReplayError::Internal(format!("reading the retention: {e}")))?
    };
    let codec = std::sync::Arc::new(locus_schemas::Codec::new(&config.registry, topic)?);
    let scan = Scan::open(
        &config.kafka,
        codec,
        topic,
        locus_kafka::Split::backlog(&config.kafka),
        window,
        filter,
        retention,
        now,
        cancel,
    )
    .await?;
    let (rf, rt) = window.read_range();
    eprintln!(
        "[replay] window [{}, {}) by event time; reading {} records of {topic} produced in [{}, {})",
        format_time(window.from_ms),
        format_time(window.to_ms),
        scan.progress().total,
        format_time(rf),
        format_time(rt),
    );
    Ok(scan)
}

/// Progress on stderr: rewritten in place on a terminal, a line every 5 s otherwise.
pub struct Meter {
    what: &'static str,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Meter {
    pub fn new(what: &'static str) -> Meter {
        let now = Instant::now();
        Meter {
            what,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn show(&mut self, done: u64, total: u64) {
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let end = done >= total;
        if !end && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0} s", (total.saturating_sub(done)) as f64 / rate)
        } else {
            "-".into()
        };
        let line = format!(
            "[replay] {} {done} / {total} records ({:.0}%), {rate:.0}/s, ETA {eta}",
            self.what,
            100.0 * done as f64 / total.max(1) as f64
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
            if end {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }
}

/// An export touches each of its few hundred MiB once (librdkafka's buffers, the table, the
/// encoders) and exits. Where transparent huge pages are on for every mapping (`always`), each
/// first touch makes the kernel zero a whole 2 MiB page: a third of an export's CPU samples
/// were in `clear_page_erms`. With small pages its system time fell from 0.42–0.75 s to
/// 0.14–0.22 s for 1 M fixes (loadtest/RESULTS.md, 2026-12-02). Applies to this process's
/// later faults; failure only costs that time.
fn small_pages_from_now() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
}

async fn export(
    config: &Config,
    a: &WindowArgs,
    format: Format,
    out: &str,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    small_pages_from_now();
    let mut scan = open_scan(config, a, cancel.clone()).await?;
    let (output, w) = Output::open(out)?;
    let result = async {
        let mut meter = Meter::new("read");
        let fixes = locus_replay::collect_sorted(&mut scan, config.replay.max_fixes, |p| {
            meter.show(p.records, p.total)
        })
        .await?;
        let n = fixes.len();
        let mut meter = Meter::new("write");
        let write = || {
            let mut writer =
                locus_replay::format::writer(format, w, config.replay.parquet_row_group_rows)?;
            for at in (0..n).step_by(65_536) {
                if cancel.is_cancelled() {
                    return Err(ReplayError::Interrupted);
                }
                meter.show(at as u64, n as u64);
                writer.write(&fixes, at..(at + 65_536).min(n))?;
            }
            output.commit(writer.finish()?)?;
            meter.show(n as u64, n as u64);
            Ok::<_, ReplayError>(n)
        };
        // Encoding is CPU work; `export` runs on the main thread (`block_on`), and
        // block_in_place keeps it correct if it is ever driven from a runtime worker.
        tokio::task::block_in_place(write)
    }
    .await;
    match result {
        Ok(n) => {
            eprint!("{}", scan.report().summary());
            if let Some(p) = output.path() {
                let bytes = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                eprintln!(
                    "wrote       {n} fixes to {} ({bytes} bytes, {:.1} bytes/fix)",
                    p.display(),
                    bytes as f64 / n.max(1) as f64
                );
            }
            Ok(())
        }
        // Dropping `output` removes the incomplete file.
        Err(e) => Err(e.into()),
    }
}

async fn sink(
    config: &Config,
    stage: &str,
    a: &WindowArgs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    enum Target {
        History(locus_scylla::HistorySink),
        Cache(locus_redis::CacheSink),
    }
    let codec = || locus_schemas::Codec::new(&config.registry, &config.topics.locations);
    let target = if stage == "history" {
        let session = std::sync::Arc::new(locus_scylla::connect(&config.scylla).await?);
        let store =
            locus_scylla::HistoryStore::prepare(session, &config.scylla, &config.history).await?;
        Target::History(locus_scylla::HistorySink::new(
            store,
            codec()?,
            DeadLetter::skip(),
            config.history.concurrency,
            config.history.rows_per_batch,
            config.history.batch_grouping,
        ))
    } else {
        let store = locus_redis::CacheStore::connect(&config.cache).await?;
        Target::Cache(locus_redis::CacheSink::new(
            store,
            codec()?,
            DeadLetter::skip(),
        ))
    };
    let mut scan = open_scan(config, a, cancel.clone()).await?;
    let mut meter = Meter::new("applied");
    let mut applied = 0u64;
    while let Some(batch) = scan.next().await? {
        let fixes: Vec<_> = batch.into_iter().map(|k| k.fix).collect();
        // The sinks retry a store that is away until it answers; Ctrl-C stops that too (the
        // writes are idempotent, so a half-applied batch is harmless).
        let apply = async {
            match &target {
                Target::History(s) => s.apply_fixes(&fixes).await,
                Target::Cache(s) => s.apply_fixes(&fixes).await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Err(ReplayError::Interrupted.into()),
            () = apply => {}
        }
        applied += fixes.len() as u64;
        let p = scan.progress();
        meter.show(p.records, p.total);
    }
    let p = scan.progress();
    meter.show(p.records, p.total);
    eprint!("{}", scan.report().summary());
    eprintln!(
        "applied     {applied} fixes to {stage} (history rows are rewritten idempotently; \
         the cache keeps a newer position than a replayed one)"
    );
    Ok(())
}

async fn move_group(
    config: &Config,
    group: &str,
    topic: &str,
    t: &TargetArgs,
    execute: bool,
) -> anyhow::Result<()> {
    let target = if let Some(s) = &t.to_datetime {
        Target::Time(parse_time(s, now_ms()).map_err(ReplayError::Invalid)?)
    } else if t.to_earliest {
        Target::Earliest
    } else if t.to_latest {
        Target::Latest
    } else if let Some(n) = t.shift_by {
        Target::ShiftBy(n)
    } else {
        unreachable!("clap requires one target")
    };
    let plan = locus_replay::group::plan(&config.kafka, group, topic, target).await?;
    print!("{}", plan.table());
    if !execute {
        println!(
            "plan only ({}); run again with --execute to commit it",
            locus_replay::group::describe(target)
        );
        return Ok(());
    }
    locus_replay::group::execute(&config.kafka, &plan).await?;
    println!("committed: group {group} now starts there");
    Ok(())
}

async fn copy(
    config: &Config,
    a: &WindowArgs,
    into: &str,
    speed: Option<f64>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    if into == config.topics.locations {
        return Err(ReplayError::Invalid(format!(
            "--into must be another topic than {}",
            config.topics.locations
        ))
        .into());
    }
    if let Some(s) = speed
        && !(s.is_finite() && (1e-3..=1e6).contains(&s))
    {
        return Err(ReplayError::Invalid("--speed must be in [0.001, 1000000]".into()).into());
    }
    locus_kafka::partition_count(&config.kafka, into)
        .await
        .with_context(|| format!("--into {into}"))?;
    let mut scan = open_scan(config, a, cancel.clone()).await?;
    let mut meter = Meter::new("read");
    let kept = locus_replay::collect(&mut scan, config.replay.max_fixes, |p| {
        meter.show(p.records, p.total)
    })
    .await?;
    let records = locus_replay::copy::merge_by_time(kept);
    let producer = locus_kafka::Producer::new(&config.kafka, "replay")?;
    let mut meter = Meter::new("copied");
    let report = locus_replay::copy::send(&producer, into, &records, speed, &cancel, |d, t| {
        meter.show(d, t)
    })
    .await?;
    eprint!("{}", scan.report().summary());
    eprintln!(
        "copied      {} records ({} bytes) into {into} in {:.1} s (source span {:.1} s)",
        report.copied, report.bytes, report.seconds, report.source_span_s
    );
    Ok(())
}
