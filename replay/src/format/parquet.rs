//! Parquet, the analysts' format (DuckDB, pandas, Spark): typed columns (times as
//! `TIMESTAMP(MILLIS, UTC)`, coordinates as doubles, optional fields nullable), snappy pages,
//! dictionary-encoded strings, min/max statistics per row group. Rows arrive ordered by
//! tenant, user and time, so a row group's statistics bound its users and times and readers
//! skip what a query does not need.
//!
//! Row groups are encoded on worker threads (one a core, at most four) into memory and appended
//! to the file in order as they complete: encoding is most of an export's work once the read
//! is over.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding};
use parquet::column::writer::{
    ColumnCloseResult, ColumnWriter, get_column_writer, get_typed_column_writer_mut,
};
use parquet::data_type::{
    ByteArray, ByteArrayType, DataType, DoubleType, FloatType, Int32Type, Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::properties::{WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, SchemaDescriptor};

use super::FixWriter;
use crate::{ReplayError, Row, Sorted, Strings};

/// The file's schema: the fields of `location.avsc`, in its order.
pub const SCHEMA: &str = "
message location_fix {
  REQUIRED BYTE_ARRAY tenant (STRING);
  REQUIRED BYTE_ARRAY user_id (STRING);
  REQUIRED BYTE_ARRAY device_id (STRING);
  REQUIRED INT64 seq;
  REQUIRED INT64 ts (TIMESTAMP(MILLIS, true));
  REQUIRED DOUBLE lat;
  REQUIRED DOUBLE lon;
  OPTIONAL FLOAT accuracy_m;
  OPTIONAL DOUBLE altitude_m;
  OPTIONAL FLOAT speed_mps;
  OPTIONAL FLOAT heading_deg;
  OPTIONAL INT32 battery_pct;
  OPTIONAL BYTE_ARRAY activity (STRING);
  OPTIONAL BYTE_ARRAY source (STRING);
  REQUIRED INT64 received_at (TIMESTAMP(MILLIS, true));
}";

/// Writes one column of a row group.
type Fill = fn(&mut ColumnWriter<'_>, &[Row], &Strings) -> Result<(), ParquetError>;

/// How each column of [`SCHEMA`] is taken from a row group's rows, in the schema's order.
const COLUMNS: [Fill; 15] = [
    |w, r, s| strings(w, r, s, false, |f| f.tenant),
    |w, r, s| strings(w, r, s, false, |f| f.user_id),
    |w, r, s| strings(w, r, s, false, |f| f.device_id),
    |w, r, _| required::<Int64Type>(w, r, |f| f.seq),
    |w, r, _| required::<Int64Type>(w, r, |f| f.ts),
    |w, r, _| required::<DoubleType>(w, r, |f| f.lat),
    |w, r, _| required::<DoubleType>(w, r, |f| f.lon),
    |w, r, _| optional::<FloatType>(w, r, Row::accuracy_m),
    |w, r, _| optional::<DoubleType>(w, r, Row::altitude_m),
    |w, r, _| optional::<FloatType>(w, r, Row::speed_mps),
    |w, r, _| optional::<FloatType>(w, r, Row::heading_deg),
    |w, r, _| optional::<Int32Type>(w, r, Row::battery_pct),
    |w, r, s| strings(w, r, s, true, |f| f.activity),
    |w, r, s| strings(w, r, s, true, |f| f.source),
    |w, r, _| required::<Int64Type>(w, r, |f| f.received_at),
];

fn required<T: DataType>(
    w: &mut ColumnWriter<'_>,
    rows: &[Row],
    value: impl Fn(&Row) -> T::T,
) -> Result<(), ParquetError> {
    let values: Vec<T::T> = rows.iter().map(value).collect();
    get_typed_column_writer_mut::<T>(w).write_batch(&values, None, None)?;
    Ok(())
}

fn optional<T: DataType>(
    w: &mut ColumnWriter<'_>,
    rows: &[Row],
    value: impl Fn(&Row) -> Option<T::T>,
) -> Result<(), ParquetError> {
    let mut values = Vec::with_capacity(rows.len());
    let levels: Vec<i16> = rows
        .iter()
        .map(|f| match value(f) {
            Some(v) => {
                values.push(v);
                1
            }
            None => 0,
        })
        .collect();
    get_typed_column_writer_mut::<T>(w).write_batch(&values, Some(&levels), None)?;
    Ok(())
}

/// A string column. Each distinct string of the row group is copied once; its rows share that
/// copy (a reference count), and rows in order mostly repeat the one before.
fn strings(
    w: &mut ColumnWriter<'_>,
    rows: &[Row],
    strings: &Strings,
    nullable: bool,
    id: impl Fn(&Row) -> u32,
) -> Result<(), ParquetError> {
    let mut values: Vec<ByteArray> = Vec::with_capacity(rows.len());
    let mut levels: Vec<i16> = Vec::with_capacity(if nullable { rows.len() } else { 0 });
    let mut copies: HashMap<u32, ByteArray> = HashMap::new();
    let mut last: Option<(u32, ByteArray)> = None;
    for r in rows {
        let id = id(r);
        let Some(v) = strings.get(id) else {
            levels.push(0);
            continue;
        };
        if nullable {
            levels.push(1);
        }
        match &last {
            Some((l, b)) if *l == id => values.push(b.clone()),
            _ => {
                let b = copies
                    .entry(id)
                    .or_insert_with(|| ByteArray::from(Bytes::copy_from_slice(v.as_bytes())))
                    .clone();
                values.push(b.clone());
                last = Some((id, b));
            }
        }
    }
    let levels = nullable.then_some(levels.as_slice());
    get_typed_column_writer_mut::<ByteArrayType>(w).write_batch(&values, levels, None)?;
    Ok(())
}

/// A row group's column chunks, encoded in memory.
type Encoded = Vec<(Bytes, ColumnCloseResult)>;

fn encode(
    schema: &SchemaDescriptor,
    props: &WriterPropertiesPtr,
    rows: &[Row],
    strings: &Strings,
) -> Result<Encoded, ParquetError> {
    schema
        .columns()
        .iter()
        .zip(COLUMNS)
        .map(|(descr, fill)| {
            let mut sink = TrackedWrite::new(Vec::new());
            let close = {
                let pages = Box::new(SerializedPageWriter::new(&mut sink));
                let mut w = get_column_writer(descr.clone(), props.clone(), pages);
                fill(&mut w, rows, strings)?;
                w.close()?
            };
            Ok((Bytes::from(sink.into_inner()?), close))
        })
        .collect()
}

/// A row group to encode: its number and its range of the table's order.
type Job = (u64, Arc<Sorted>, Range<usize>);
type Done = (u64, Result<Encoded, ParquetError>);

/// Encoding threads at most (one a core up to this): each holds a row group's rows and its
/// encoded columns (~13 MB at 128 Ki rows) beside the table.
const MAX_WORKERS: usize = 4;

/// Threads encoding row groups; results come back numbered and are appended in order.
struct Encoders {
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Row groups sent, and the next one to append.
    sent: u64,
    next: u64,
    ready: BTreeMap<u64, Result<Encoded, ParquetError>>,
}

/// Gathers a row group's rows in order (into `rows`, emptied first) and encodes them.
fn encode_range(
    schema: &SchemaDescriptor,
    props: &WriterPropertiesPtr,
    fixes: &Sorted,
    range: Range<usize>,
    rows: &mut Vec<Row>,
) -> Result<Encoded, ParquetError> {
    rows.clear();
    fixes.gather(range, rows);
    encode(schema, props, rows, fixes.strings())
}

impl Encoders {
    fn start(schema: Arc<SchemaDescriptor>, props: WriterPropertiesPtr, n: usize) -> Encoders {
        // A row group is handed to a worker as it takes it.
        let (jobs, queue) = mpsc::sync_channel::<Job>(0);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = mpsc::channel::<Done>();
        let workers = (0..n)
            .filter_map(|i| {
                let (queue, done_tx) = (queue.clone(), done_tx.clone());
                let (schema, props) = (schema.clone(), props.clone());
                std::thread::Builder::new()
                    .name(format!("parquet-{i}"))
                    .spawn(move || {
                        // Reused from row group to row group (fresh pages cost more to fault
                        // in than to fill).
                        let mut rows: Vec<Row> = Vec::new();
                        loop {
                            let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            let Ok((seq, fixes, range)) = job else { return };
                            // A panic becomes this row group's error: the writer waiting for
                            // it in order must not wait forever.
                            let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                encode_range(&schema, &props, &fixes, range, &mut rows)
                            }))
                            .unwrap_or_else(|_| {
                                Err(ParquetError::General(
                                    "encoding a row group panicked".into(),
                                ))
                            });
                            drop(fixes);
                            if done_tx.send((seq, encoded)).is_err() {
                                return;
                            }
                        }
                    })
                    .ok()
            })
            .collect::<Vec<_>>();
        Encoders {
            jobs: (!workers.is_empty()).then_some(jobs),
            done,
            workers,
            sent: 0,
            next: 0,
            ready: BTreeMap::new(),
        }
    }
}

pub struct Parquet {
    writer: SerializedFileWriter<Box<dyn Write + Send>>,
    schema: Arc<SchemaDescriptor>,
    props: WriterPropertiesPtr,
    /// Rows written and not yet sent to an encoder: a range of one table's order.
    pending: Option<(Arc<Sorted>, Range<usize>)>,
    row_group_rows: usize,
    encoders: Encoders,
    /// Rows gathered here when there is no encoding thread.
    rows: Vec<Row>,
}

impl Parquet {
    pub fn new(out: Box<dyn Write + Send>, row_group_rows: usize) -> Result<Parquet, ReplayError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Parquet::with_workers(out, row_group_rows, cores.clamp(1, MAX_WORKERS))
    }

    fn with_workers(
        out: Box<dyn Write + Send>,
        row_group_rows: usize,
        workers: usize,
    ) -> Result<Parquet, ReplayError> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(row_group_rows)
            .set_created_by(format!("locus replay {}", env!("CARGO_PKG_VERSION")));
        // Nearly every value of these is new: a dictionary is built and then given up. Times
        // and sequences climb within a user, so deltas store them in a few bits each.
        for (column, encoding) in [
            ("seq", Some(Encoding::DELTA_BINARY_PACKED)),
            ("ts", Some(Encoding::DELTA_BINARY_PACKED)),
            ("received_at", Some(Encoding::DELTA_BINARY_PACKED)),
            ("lat", None),
            ("lon", None),
            ("altitude_m", None),
        ] {
            let path = ColumnPath::from(column);
            props = props.set_column_dictionary_enabled(path.clone(), false);
            if let Some(e) = encoding {
                props = props.set_column_encoding(path, e);
            }
        }
        let props = Arc::new(props.build());
        let descr = Arc::new(SchemaDescriptor::new(schema.clone()));
        Ok(Parquet {
            writer: SerializedFileWriter::new(out, schema, props.clone())?,
            encoders: Encoders::start(descr.clone(), props.clone(), workers),
            schema: descr,
            props,
            pending: None,
            row_group_rows: row_group_rows.max(1),
            rows: Vec::new(),
        })
    }

    /// Hands rows `range` of `fixes` to a worker as one row group (or encodes them here
    /// without one).
    fn send_row_group(
        &mut self,
        fixes: Arc<Sorted>,
        range: Range<usize>,
    ) -> Result<(), ReplayError> {
        if range.is_empty() {
            return Ok(());
        }
        let e = &mut self.encoders;
        let seq = e.sent;
        e.sent += 1;
        let unsent = match &e.jobs {
            Some(jobs) => jobs
                .send((seq, fixes, range))
                .err()
                .map(|mpsc::SendError((_, f, r))| (f, r)),
            None => Some((fixes, range)),
        };
        if let Some((fixes, range)) = unsent {
            let encoded = encode_range(&self.schema, &self.props, &fixes, range, &mut self.rows);
            e.ready.insert(seq, encoded);
        }
        self.append_ready(false)
    }

    /// Appends the row groups that are done, in order; with `all`, waits for every one.
    fn append_ready(&mut self, all: bool) -> Result<(), ReplayError> {
        let e = &mut self.encoders;
        loop {
            while let Ok((seq, r)) = e.done.try_recv() {
                e.ready.insert(seq, r);
            }
            while let Some(encoded) = e.ready.remove(&e.next) {
                let mut rg = self.writer.next_row_group()?;
                for (bytes, close) in encoded? {
                    rg.append_column(&bytes, close)?;
                }
                rg.close()?;
                e.next += 1;
            }
            if !all || e.next == e.sent {
                return Ok(());
            }
            match e.done.recv() {
                Ok((seq, r)) => {
                    e.ready.insert(seq, r);
                }
                Err(_) => {
                    return Err(ReplayError::Internal(
                        "a Parquet encoding thread stopped".into(),
                    ));
                }
            }
        }
    }
}

impl FixWriter for Parquet {
    fn write(&mut self, fixes: &Arc<Sorted>, range: Range<usize>) -> Result<(), ReplayError> {
        let mut range = match self.pending.take() {
            Some((f, p)) if Arc::ptr_eq(&f, fixes) && p.end == range.start => p.start..range.end,
            Some((f, p)) => {
                // Not a continuation: what was pending is a row group of its own.
                self.send_row_group(f, p)?;
                range
            }
            None => range,
        };
        while range.len() >= self.row_group_rows {
            let group = range.start..range.start + self.row_group_rows;
            range.start = group.end;
            self.send_row_group(fixes.clone(), group)?;
        }
        if !range.is_empty() {
            self.pending = Some((fixes.clone(), range));
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError> {
        if let Some((fixes, range)) = self.pending.take() {
            self.send_row_group(fixes, range)?;
        }
        // No more jobs: workers end once idle, so waiting for results cannot outlive them.
        self.encoders.jobs = None;
        self.append_ready(true)?;
        for w in self.encoders.workers.drain(..) {
            let _ = w.join();
        }
        Ok(self.writer.into_inner()?)
    }
}

impl Drop for Encoders {
    fn drop(&mut self) {
        // Workers end when the queue closes; an abandoned export does not wait for them.
        self.jobs = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Table;
    use locus_schemas::LocationFix;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    /// A shared buffer the writer can own.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn fix(i: i64) -> LocationFix {
        LocationFix {
            tenant: format!("t{}", i / 500),
            user_id: format!("u{}", i / 7),
            device_id: format!("d{}", i / 7),
            seq: i,
            ts: 1_700_000_000_000 + i * 1000,
            lat: -90.0 + (i as f64) * 1e-3,
            lon: 13.0,
            accuracy_m: (i % 3 == 0).then_some(5.0),
            altitude_m: (i % 4 == 0).then_some(i as f64),
            speed_mps: (i % 7 == 0).then_some(1.5),
            heading_deg: (i % 2 == 0).then_some(90.0),
            battery_pct: (i % 5 != 0).then_some((i % 100) as i32),
            activity: (i % 6 == 0).then(|| "walking".to_string()),
            source: Some(if i % 2 == 0 { "gps" } else { "network" }.into()),
            received_at: 1_700_000_000_500 + i * 1000,
        }
    }

    /// Row groups encoded on several threads come back in the order written, every value
    /// and null in its place, with the row groups' sizes as configured, whatever ranges the
    /// rows were written in.
    #[test]
    fn row_groups_encoded_in_parallel_keep_their_order() {
        let n = 2_503;
        let mut fixes: Vec<LocationFix> = (0..n).map(fix).collect();
        let mut table = Table::default();
        for f in fixes.iter().rev() {
            table.push(f.as_fix_ref());
        }
        let sorted = Arc::new(table.sort());
        fixes.sort_by(crate::by_user_then_time);
        let out = Shared::default();
        let mut w: Box<dyn FixWriter> =
            Box::new(Parquet::with_workers(Box::new(out.clone()), 100, 4).unwrap());
        // Written in ranges that do not line up with row groups.
        let mut at = 0;
        while at < sorted.len() {
            let to = (at + 77).min(sorted.len());
            w.write(&sorted, at..to).unwrap();
            at = to;
        }
        drop(w.finish().unwrap());
        let bytes = Bytes::from(out.0.lock().unwrap().clone());
        let reader = SerializedFileReader::new(bytes).unwrap();
        let groups: Vec<i64> = (0..reader.num_row_groups())
            .map(|g| reader.metadata().row_group(g).num_rows())
            .collect();
        assert_eq!(groups.len(), 26);
        assert!(groups[..25].iter().all(|r| *r == 100) && groups[25] == 3);
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), n as usize);
        for (i, row) in rows.iter().enumerate() {
            let want = fixes[i].clone();
            let got: Vec<(&String, &Field)> = row.get_column_iter().collect();
            let want = [
                ("tenant", Field::Str(want.tenant)),
                ("user_id", Field::Str(want.user_id)),
                ("device_id", Field::Str(want.device_id)),
                ("seq", Field::Long(want.seq)),
                ("ts", Field::TimestampMillis(want.ts)),
                ("lat", Field::Double(want.lat)),
                ("lon", Field::Double(want.lon)),
                (
                    "accuracy_m",
                    want.accuracy_m.map_or(Field::Null, Field::Float),
                ),
                (
                    "altitude_m",
                    want.altitude_m.map_or(Field::Null, Field::Double),
                ),
                (
                    "speed_mps",
                    want.speed_mps.map_or(Field::Null, Field::Float),
                ),
                (
                    "heading_deg",
                    want.heading_deg.map_or(Field::Null, Field::Float),
                ),
                (
                    "battery_pct",
                    want.battery_pct.map_or(Field::Null, Field::Int),
                ),
                ("activity", want.activity.map_or(Field::Null, Field::Str)),
                ("source", want.source.map_or(Field::Null, Field::Str)),
                ("received_at", Field::TimestampMillis(want.received_at)),
            ];
            assert_eq!(got.len(), want.len());
            for ((name, field), (want_name, want_field)) in got.iter().zip(&want) {
                assert_eq!((name.as_str(), *field), (*want_name, want_field), "row {i}");
            }
        }
    }
}
