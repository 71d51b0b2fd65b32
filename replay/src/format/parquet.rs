//! Parquet, the analysts' format (DuckDB, pandas, Spark): typed columns (times as
//! `TIMESTAMP(MILLIS, UTC)`, coordinates as doubles, optional fields nullable), snappy pages,
//! dictionary-encoded strings, min/max statistics per row group. Rows arrive ordered by
//! tenant, user and time, so a row group's statistics bound its users and times and readers
//! skip what a query does not need.

use std::io::Write;
use std::sync::Arc;

use locus_schemas::LocationFix;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::parser::parse_message_type;

use super::FixWriter;
use crate::ReplayError;

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

/// One row group's columns, buffered.
#[derive(Default)]
struct Columns {
    tenant: Vec<ByteArray>,
    user_id: Vec<ByteArray>,
    device_id: Vec<ByteArray>,
    seq: Vec<i64>,
    ts: Vec<i64>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    accuracy_m: Opt<f32>,
    altitude_m: Opt<f64>,
    speed_mps: Opt<f32>,
    heading_deg: Opt<f32>,
    battery_pct: Opt<i32>,
    activity: Opt<ByteArray>,
    source: Opt<ByteArray>,
    received_at: Vec<i64>,
}

/// A nullable column: the present values and a definition level per row.
struct Opt<T> {
    values: Vec<T>,
    levels: Vec<i16>,
}

impl<T> Default for Opt<T> {
    fn default() -> Self {
        Opt {
            values: vec![],
            levels: vec![],
        }
    }
}

impl<T> Opt<T> {
    fn push(&mut self, v: Option<T>) {
        self.levels.push(i16::from(v.is_some()));
        if let Some(v) = v {
            self.values.push(v);
        }
    }
}

pub struct Parquet {
    writer: SerializedFileWriter<Box<dyn Write + Send>>,
    cols: Columns,
    rows: usize,
    row_group_rows: usize,
}

impl Parquet {
    pub fn new(out: Box<dyn Write + Send>, row_group_rows: usize) -> Result<Parquet, ReplayError> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(row_group_rows)
            .set_created_by(format!("locus replay {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Parquet {
            writer: SerializedFileWriter::new(out, schema, Arc::new(props))?,
            cols: Columns::default(),
            rows: 0,
            row_group_rows,
        })
    }

    fn flush_row_group(&mut self) -> Result<(), ReplayError> {
        if self.rows == 0 {
            return Ok(());
        }
        let c = std::mem::take(&mut self.cols);
        let mut rg = self.writer.next_row_group()?;
        required::<ByteArrayType>(&mut rg, &c.tenant)?;
        required::<ByteArrayType>(&mut rg, &c.user_id)?;
        required::<ByteArrayType>(&mut rg, &c.device_id)?;
        required::<Int64Type>(&mut rg, &c.seq)?;
        required::<Int64Type>(&mut rg, &c.ts)?;
        required::<DoubleType>(&mut rg, &c.lat)?;
        required::<DoubleType>(&mut rg, &c.lon)?;
        optional::<FloatType>(&mut rg, &c.accuracy_m)?;
        optional::<DoubleType>(&mut rg, &c.altitude_m)?;
        optional::<FloatType>(&mut rg, &c.speed_mps)?;
        optional::<FloatType>(&mut rg, &c.heading_deg)?;
        optional::<Int32Type>(&mut rg, &c.battery_pct)?;
        optional::<ByteArrayType>(&mut rg, &c.activity)?;
        optional::<ByteArrayType>(&mut rg, &c.source)?;
        required::<Int64Type>(&mut rg, &c.received_at)?;
        rg.close()?;
        self.rows = 0;
        Ok(())
    }
}

fn required<T: parquet::data_type::DataType>(
    rg: &mut SerializedRowGroupWriter<'_, Box<dyn Write + Send>>,
    values: &[T::T],
) -> Result<(), ReplayError> {
    let mut col = rg
        .next_column()?
        .ok_or_else(|| ReplayError::Invalid("parquet schema has fewer columns".into()))?;
    col.typed::<T>().write_batch(values, None, None)?;
    col.close()?;
    Ok(())
}

fn optional<T: parquet::data_type::DataType>(
    rg: &mut SerializedRowGroupWriter<'_, Box<dyn Write + Send>>,
    values: &Opt<T::T>,
) -> Result<(), ReplayError> {
    let mut col = rg
        .next_column()?
        .ok_or_else(|| ReplayError::Invalid("parquet schema has fewer columns".into()))?;
    col.typed::<T>()
        .write_batch(&values.values, Some(&values.levels), None)?;
    col.close()?;
    Ok(())
}

impl FixWriter for Parquet {
    fn write(&mut self, f: &LocationFix) -> Result<(), ReplayError> {
        let c = &mut self.cols;
        c.tenant.push(f.tenant.as_str().into());
        c.user_id.push(f.user_id.as_str().into());
        c.device_id.push(f.device_id.as_str().into());
        c.seq.push(f.seq);
        c.ts.push(f.ts);
        c.lat.push(f.lat);
        c.lon.push(f.lon);
        c.accuracy_m.push(f.accuracy_m);
        c.altitude_m.push(f.altitude_m);
        c.speed_mps.push(f.speed_mps);
        c.heading_deg.push(f.heading_deg);
        c.battery_pct.push(f.battery_pct);
        c.activity.push(f.activity.as_deref().map(ByteArray::from));
        c.source.push(f.source.as_deref().map(ByteArray::from));
        c.received_at.push(f.received_at);
        self.rows += 1;
        if self.rows >= self.row_group_rows {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError> {
        self.flush_row_group()?;
        Ok(self.writer.into_inner()?)
    }
}
