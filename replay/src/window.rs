//! What a window is and how it is read.
//!
//! A fix belongs to a window by its **event time** `ts` (when the phone took it), not by
//! when it reached Kafka. Kafka's record timestamp is the produce time, so the window is
//! located in the log by it, with two bounds:
//!
//! - a fix's record cannot be older than its event time minus the device clock skew the
//!   bridge allows (`bridge.max_future_ms`): reading starts at offsets-for-times of
//!   `from − skew`;
//! - a fix may arrive late (a phone offline for hours flushes its buffer): reading stops at
//!   offsets-for-times of `to + lateness` (the end captured at start when that is in the
//!   future).
//!
//! Every record in that range is decoded; fixes with `from ≤ ts < to` that pass the filter are
//! kept, each identity `(tenant, user_id, device_id, seq)` once. A fix that arrived more than
//! `lateness` after its event time is outside the contract (the report says how late the
//! latest kept fix was, so a run near the bound is visible).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locus_kafka::{
    Backoff, KafkaConfig, PartitionRange, Progress, RangeReader, Record, Split, StartAt, StopAt,
};
use locus_schemas::{Codec, CodecError, FixRef, LocationFix};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ReplayError;
use crate::table::{Sorted, Table};
use crate::time::format_time;

/// An event-time window and how far around it the log is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive, ms.
    pub from_ms: i64,
    /// Exclusive, ms.
    pub to_ms: i64,
    /// How late a fix may arrive after its event time, ms.
    pub lateness_ms: i64,
    /// How far ahead of the bridge's clock a device's clock may be, ms.
    pub skew_ms: i64,
}

impl Window {
    /// Checks the arguments before anything is read.
    pub fn new(
        from_ms: i64,
        to_ms: i64,
        lateness_ms: i64,
        skew_ms: i64,
        max_lateness_ms: i64,
    ) -> Result<Window, ReplayError> {
        if to_ms <= from_ms {
            return Err(ReplayError::Invalid(format!(
                "--to ({}) must be after --from ({})",
                format_time(to_ms),
                format_time(from_ms)
            )));
        }
        if !(0..=max_lateness_ms).contains(&lateness_ms) {
            return Err(ReplayError::Invalid(format!(
                "lateness must be between 0 and {max_lateness_ms} ms (the bridge's max_age_ms: older \
                 fixes never reach Kafka; over HTTP, replay.lateness_ms)"
            )));
        }
        Ok(Window {
            from_ms,
            to_ms,
            lateness_ms,
            skew_ms: skew_ms.max(0),
        })
    }

    pub fn contains(&self, ts: i64) -> bool {
        self.from_ms <= ts && ts < self.to_ms
    }

    /// Record timestamps read: `[from − skew, to + lateness)`.
    pub fn read_range(&self) -> (i64, i64) {
        (
            self.from_ms.saturating_sub(self.skew_ms),
            self.to_ms.saturating_add(self.lateness_ms),
        )
    }
}

/// A box in degrees: `min_lon,min_lat,max_lon,max_lat` (GeoJSON order). `min_lon > max_lon`
/// crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

impl BBox {
    pub fn parse(s: &str) -> Result<BBox, ReplayError> {
        let v: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                ReplayError::Invalid(format!(
                    "bbox '{s}': expected min_lon,min_lat,max_lon,max_lat in degrees"
                ))
            })?;
        let [min_lon, min_lat, max_lon, max_lat] = v[..] else {
            return Err(ReplayError::Invalid(format!(
                "bbox '{s}': expected four numbers, min_lon,min_lat,max_lon,max_lat"
            )));
        };
        let lon_ok = |x: f64| (-180.0..=180.0).contains(&x);
        let lat_ok = |x: f64| (-90.0..=90.0).contains(&x);
        if !(lon_ok(min_lon) && lon_ok(max_lon) && lat_ok(min_lat) && lat_ok(max_lat))
            || min_lat > max_lat
        {
            return Err(ReplayError::Invalid(format!(
                "bbox '{s}': longitudes in [-180, 180], latitudes in [-90, 90], min_lat ≤ max_lat"
            )));
        }
        Ok(BBox {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        })
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let lon_in = if self.min_lon <= self.max_lon {
            self.min_lon <= lon && lon <= self.max_lon
        } else {
            lon >= self.min_lon || lon <= self.max_lon
        };
        lon_in && self.min_lat <= lat && lat <= self.max_lat
    }
}

/// Which fixes of the window are kept.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub users: Option<HashSet<String>>,
    pub bbox: Option<BBox>,
}

impl Filter {
    pub fn matches(&self, f: &FixRef<'_>) -> bool {
        self.tenant.as_ref().is_none_or(|t| t == f.tenant)
            && self.users.as_ref().is_none_or(|u| u.contains(f.user_id))
            && self.bbox.is_none_or(|b| b.contains(f.lat, f.lon))
    }
}

/// What a read did; printed at the end of every run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub window_from: String,
    pub window_to: String,
    pub records_read: u64,
    pub bytes_read: u64,
    /// Fixes in the window that passed the filter, each once.
    pub in_window: u64,
    /// Fixes in the window the filter left out.
    pub filtered_out: u64,
    /// Fixes read outside the event-time window (read for lateness and skew).
    pub outside_window: u64,
    pub duplicates_removed: u64,
    /// Records that are not fixes (the live groups dead-lettered them).
    pub undecodable: u64,
    /// Highest `record timestamp − event time` of a kept fix, ms.
    pub latest_lateness_ms: Option<i64>,
    /// Per partition: `[start, end)` read.
    pub partitions: Vec<PartitionRead>,
    /// Set when part of the window is older than the topic keeps.
    pub gone: Option<String>,
    /// Set when `to + lateness` is still ahead: late fixes may still arrive, and a later run
    /// may return more.
    pub open: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionRead {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl Report {
    /// The human summary, one fact a line.
    pub fn summary(&self) -> String {
        let ranges: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| p.end > p.start)
            .map(|p| format!("{}:[{},{})", p.partition, p.start, p.end))
            .collect();
        let mut s = format!(
            "window      [{}, {})\n\
             read        {} records, {} bytes in {:.1} s ({:.0} records/s)\n\
             in window   {} fixes kept, {} filtered out, {} duplicates removed\n\
             outside     {} fixes outside the window (read for lateness/skew), {} not fixes\n\
             partitions  {} read: {}\n",
            self.window_from,
            self.window_to,
            self.records_read,
            self.bytes_read,
            self.seconds,
            self.records_read as f64 / self.seconds.max(1e-3),
            self.in_window,
            self.filtered_out,
            self.duplicates_removed,
            self.outside_window,
            self.undecodable,
            ranges.len(),
            if ranges.len() > 8 {
                format!("{} …", ranges[..8].join(" "))
            } else {
                ranges.join(" ")
            }
        );
        if let Some(l) = self.latest_lateness_ms {
            s.push_str(&format!(
                "latest fix  arrived {:.1} s after its event time\n",
                l as f64 / 1000.0
            ));
        }
        if let Some(g) = &self.gone {
            s.push_str(&format!("gone        {g}\n"));
        }
        if let Some(o) = &self.open {
            s.push_str(&format!("open        {o}\n"));
        }
        s
    }
}

/// A read of one window: batches of the records whose fix is in the window and passes the
/// filter, each identity once, in offset order per partition.
#[derive(Debug)]
pub struct Scan {
    reader: RangeReader,
    codec: Arc<Codec>,
    window: Window,
    filter: Filter,
    seen: HashSet<u128, BuildHasherDefault<Prehashed>>,
    hasher: (std::hash::RandomState, std::hash::RandomState),
    report: Report,
    started: Instant,
    /// Seconds the read took, once it ended.
    read_s: Option<f64>,
    cancel: CancellationToken,
}

/// The hasher of the identity set: identities are keyed hashes already, so their low bits
/// index the table as they are (hashing them again cost a third of the duplicate check).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A record of the window with its decoded fix.
#[derive(Debug, Clone)]
pub struct Kept {
    pub record: Record,
    pub fix: LocationFix,
}

impl Scan {
    /// Locates the window in `topic` and opens the read (by `split`'s consumers: see
    /// [`RangeReader::open_split`]). `retention_ms` (the topic's, -1 for
    /// forever; looked up while the read is planned) decides whether part of the window is
    /// gone: all of it is an error, part of it is said in the report. No record is handed
    /// out before both are known (the consumer may start fetching while the lookup runs).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        topic: &str,
        split: Split,
        window: Window,
        filter: Filter,
        retention_ms: impl Future<Output = Result<i64, ReplayError>>,
        now_ms: i64,
        cancel: CancellationToken,
    ) -> Result<Scan, ReplayError> {
        let mut report = Report {
            window_from: format_time(window.from_ms),
            window_to: format_time(window.to_ms),
            ..Report::default()
        };
        let (read_from, read_to) = window.read_range();
        if read_to > now_ms {
            report.open = Some(format!(
                "fixes of this window may still arrive until {} (to + lateness): read up to \
                 the end of the log now; a later run may return more",
                format_time(read_to)
            ));
        }
        // A stop in the future is the end of the log now: records produced later are not
        // read either way, and a broker finds no offset for a time past its newest record
        // only by passing over every record (tansu's ListOffsets does).
        let stop = if read_to > now_ms {
            StopAt::End
        } else {
            StopAt::Time(read_to)
        };
        let (reader, retention_ms) = tokio::join!(
            RangeReader::open_split(
                kafka,
                "replay",
                topic,
                StartAt::Time(read_from),
                stop,
                split
            ),
            retention_ms
        );
        let retention_ms = retention_ms?;
        if retention_ms > 0 {
            // Retention deletes by produce time: what was produced before `kept_from` is gone.
            let kept_from = now_ms.saturating_sub(retention_ms);
            if read_to <= kept_from {
                return Err(ReplayError::Invalid(format!(
                    "the window's fixes were produced before {} (to + lateness), and {topic} keeps \
                     {} h (retention.ms): nothing of it is left",
                    format_time(kept_from),
                    retention_ms / 3_600_000
                )));
            }
            if read_from < kept_from {
                report.gone = Some(format!(
                    "fixes produced before {} are past {topic}'s retention ({} h) and may be gone",
                    format_time(kept_from),
                    retention_ms / 3_600_000
                ));
            }
        }
        let reader = reader?;
        report.partitions = reader
            .ranges()
            .iter()
            .map(|r: &PartitionRange| PartitionRead {
                partition: r.partition,
                start: r.start.max(r.low),
                end: r.end,
            })
            .collect();
        Ok(Scan {
            reader,
            codec,
            window,
            filter,
            seen: HashSet::default(),
            hasher: Default::default(),
            report,
            started: Instant::now(),
            read_s: None,
            cancel,
        })
    }

    /// Sizes the duplicate check for `n` fixes up front (when the caller knows its bound).
    pub fn reserve(&mut self, n: usize) {
        self.seen.reserve(n);
    }

    /// The read's plan (offset ranges per partition).
    pub fn ranges(&self) -> &[PartitionRange] {
        self.reader.ranges()
    }

    pub fn progress(&self) -> Progress {
        self.reader.progress()
    }

    /// The report so far (final once `next` returned `None`).
    pub fn report(&self) -> Report {
        let mut r = self.report.clone();
        let p = self.reader.progress();
        r.records_read = p.records;
        r.bytes_read = p.bytes;
        r.seconds = self
            .read_s
            .unwrap_or_else(|| self.started.elapsed().as_secs_f64());
        r
    }

    /// The next batch of records read; `None` at the end of the window.
    async fn next_records(&mut self) -> Result<Option<Vec<Record>>, ReplayError> {
        let batch = tokio::select! {
            _ = self.cancel.cancelled() => return Err(ReplayError::Interrupted),
            b = self.reader.next_batch(4096) => b?,
        };
        if batch.is_none() {
            self.read_s
                .get_or_insert_with(|| self.started.elapsed().as_secs_f64());
        }
        Ok(batch)
    }

    /// The next batch of kept records; `None` at the end of the window.
    pub async fn next(&mut self) -> Result<Option<Vec<Kept>>, ReplayError> {
        let Some(batch) = self.next_records().await? else {
            return Ok(None);
        };
        let (codec, cancel) = (self.codec.clone(), self.cancel.clone());
        let mut kept = Vec::with_capacity(batch.len());
        for record in batch {
            let value = record.value.as_deref();
            let Some(fix) = decode(&codec, &cancel, value, |f| f.to_fix()).await? else {
                self.report.undecodable += 1;
                continue;
            };
            if self.accept(record.timestamp_ms, &fix.as_fix_ref()) {
                kept.push(Kept { record, fix });
            }
        }
        Ok(Some(kept))
    }

    /// The next batch's kept fixes, each handed to `keep` in place (nothing of the record is
    /// kept); `false` at the end of the window. Needs only values ([`Scan::values_only`]).
    pub async fn next_fixes(
        &mut self,
        mut keep: impl FnMut(FixRef<'_>),
    ) -> Result<bool, ReplayError> {
        let Some(batch) = self.next_records().await? else {
            return Ok(false);
        };
        let (codec, cancel) = (self.codec.clone(), self.cancel.clone());
        for record in &batch {
            let at = record.timestamp_ms;
            let value = record.value.as_deref();
            let fix = decode(&codec, &cancel, value, |f| {
                if self.accept(at, &f) {
                    keep(f);
                }
            });
            if fix.await?.is_none() {
                self.report.undecodable += 1;
            }
        }
        Ok(true)
    }

    /// Reads values only (see [`RangeReader::values_only`]): for [`Scan::next_fixes`], which
    /// needs nothing else of a record. Takes effect before the first batch.
    pub fn values_only(&mut self) {
        self.reader.values_only();
    }

    /// Whether a fix is kept: in the window, passing the filter, its identity not seen
    /// before. Counts it in the report either way.
    fn accept(&mut self, timestamp_ms: Option<i64>, fix: &FixRef<'_>) -> bool {
        if !self.window.contains(fix.ts) {
            self.report.outside_window += 1;
            return false;
        }
        if !self.filter.matches(fix) {
            self.report.filtered_out += 1;
            return false;
        }
        if !self.seen.insert(self.identity(fix)) {
            self.report.duplicates_removed += 1;
            return false;
        }
        if let Some(t) = timestamp_ms {
            let late = t - fix.ts;
            self.report.latest_lateness_ms =
                Some(self.report.latest_lateness_ms.map_or(late, |l| l.max(late)));
        }
        self.report.in_window += 1;
        true
    }

    /// 128 bits of the identity from two independently keyed hashes: a collision (a fix
    /// taken for a duplicate) needs ~2^64 fixes in one window.
    fn identity(&self, f: &FixRef<'_>) -> u128 {
        let key = (f.tenant, f.user_id, f.device_id, f.seq);
        let a = self.hasher.0.hash_one(key) as u128;
        let b = self.hasher.1.hash_one(key) as u128;
        (a << 64) | b
    }
}

/// The fix in `value` handed to `f`; `None` if it is not one. Waits out registry outages.
async fn decode<R>(
    codec: &Codec,
    cancel: &CancellationToken,
    value: Option<&[u8]>,
    mut f: impl FnMut(FixRef<'_>) -> R,
) -> Result<Option<R>, ReplayError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let mut backoff = Backoff::default();
    loop {
        match codec.decode_with(v, &mut f).await {
            Ok(r) => return Ok(Some(r)),
            Err(CodecError::Registry(e)) => {
                tracing::warn!(error = e, retry_in = ?backoff.current(), "Schema Registry unavailable; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(ReplayError::Interrupted),
                    _ = backoff.wait() => {}
                }
            }
            Err(_) => return Ok(None),
        }
    }
}

/// Reads the whole window into memory (at most `max` records), in read order.
pub async fn collect(
    scan: &mut Scan,
    max: usize,
    progress: impl FnMut(&Progress),
) -> Result<Vec<Kept>, ReplayError> {
    collect_with(scan, max, progress, |k| k).await
}

/// Reads the whole window's fixes (at most `max`) and puts them in the export's order: by
/// tenant, user, event time (then device and sequence). See [`Table`].
pub async fn collect_sorted(
    scan: &mut Scan,
    max: usize,
    mut progress: impl FnMut(&Progress),
) -> Result<Arc<Sorted>, ReplayError> {
    scan.values_only();
    let mut table = Table::with_capacity(planned(scan, max));
    scan.reserve(planned(scan, max));
    let mut last = Instant::now();
    while scan.next_fixes(|f| table.push(f)).await? {
        if table.len() > max {
            return Err(ReplayError::TooLarge { max });
        }
        if last.elapsed() >= Duration::from_millis(500) {
            progress(&scan.progress());
            last = Instant::now();
        }
    }
    progress(&scan.progress());
    // The sort is CPU work: off the async workers.
    tokio::task::spawn_blocking(move || Arc::new(table.sort()))
        .await
        .map_err(|e| ReplayError::Internal(format!("sorting the window: {e}")))
}

/// Reads the whole window into memory (at most `max` records), each kept as `keep` makes it,
/// in read order.
pub(crate) async fn collect_with<T>(
    scan: &mut Scan,
    max: usize,
    progress: impl FnMut(&Progress),
    keep: impl Fn(Kept) -> T,
) -> Result<Vec<T>, ReplayError> {
    let mut all: Vec<T> = Vec::with_capacity(planned(scan, max));
    read_all(scan, max, progress, |k| all.push(keep(k))).await?;
    Ok(all)
}

/// The records the read plans, up to `max`.
fn planned(scan: &Scan, max: usize) -> usize {
    (scan.progress().total as usize).min(max)
}

/// Hands every kept record of the window to `take`; refuses more than `max`; reports
/// progress every 500 ms and at the end.
async fn read_all(
    scan: &mut Scan,
    max: usize,
    mut progress: impl FnMut(&Progress),
    mut take: impl FnMut(Kept),
) -> Result<(), ReplayError> {
    scan.reserve(planned(scan, max));
    let (mut taken, mut last) = (0usize, Instant::now());
    while let Some(batch) = scan.next().await? {
        taken += batch.len();
        if taken > max {
            return Err(ReplayError::TooLarge { max });
        }
        batch.into_iter().for_each(&mut take);
        if last.elapsed() >= Duration::from_millis(500) {
            progress(&scan.progress());
            last = Instant::now();
        }
    }
    progress(&scan.progress());
    Ok(())
}

pub fn by_user_then_time(a: &LocationFix, b: &LocationFix) -> std::cmp::Ordering {
    (&a.tenant, &a.user_id, a.ts, &a.device_id, a.seq).cmp(&(
        &b.tenant,
        &b.user_id,
        b.ts,
        &b.device_id,
        b.seq,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_arguments_are_checked() {
        assert!(Window::new(10, 10, 0, 0, 100).is_err(), "empty window");
        assert!(Window::new(20, 10, 0, 0, 100).is_err(), "to before from");
        assert!(
            Window::new(0, 10, 101, 0, 100).is_err(),
            "lateness over max_age"
        );
        let w = Window::new(1000, 2000, 500, 300, 1000).unwrap();
        assert_eq!(w.read_range(), (700, 2500));
        assert!(w.contains(1000) && w.contains(1999) && !w.contains(2000));
    }

    #[test]
    fn bbox_parses_and_crosses_the_antimeridian() {
        let b = BBox::parse("13.0,52.0,14.0,53.0").unwrap();
        assert!(b.contains(52.5, 13.4) && !b.contains(52.5, 12.9));
        let wrap = BBox::parse("170,-10,-170,10").unwrap();
        assert!(wrap.contains(0.0, 179.0) && wrap.contains(0.0, -179.0));
        assert!(!wrap.contains(0.0, 0.0));
        for bad in ["1,2,3", "a,b,c,d", "0,10,1,5", "0,0,200,1"] {
            assert!(BBox::parse(bad).is_err(), "{bad}");
        }
    }
}
