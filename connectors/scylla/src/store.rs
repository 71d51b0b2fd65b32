//! The history table: schema, prepared writes, and track queries.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use locus_schemas::LocationFix;
use scylla::client::session::Session;
use scylla::cluster::ClusterState;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::routing::partitioner::{Murmur3Partitioner, Partitioner};
use scylla::routing::{Shard, Token};
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::{HistoryConfig, ScyllaConfig, ScyllaError};

const COLUMNS: &str = "tenant, user_id, bucket, ts, device_id, seq, lat, lon, accuracy_m, altitude_m, \
                       speed_mps, heading_deg, battery_pct, activity, source, received_at";

/// The columns every row has, in bind order.
const REQUIRED: [&str; 9] = [
    "tenant",
    "user_id",
    "bucket",
    "ts",
    "device_id",
    "seq",
    "lat",
    "lon",
    "received_at",
];

/// The columns a fix may lack, in bind order after [`REQUIRED`]; bit `i` of a [`Shape`] is
/// set when the fix has `OPTIONAL[i]`.
const OPTIONAL: [&str; 7] = [
    "accuracy_m",
    "altitude_m",
    "speed_mps",
    "heading_deg",
    "battery_pct",
    "activity",
    "source",
];

/// Which optional columns a row binds (a bit each, in [`OPTIONAL`] order).
type Shape = u8;

/// Every optional column present.
const FULL: Shape = (1 << OPTIONAL.len()) - 1;

/// The insert for the rows of one shape: only the columns they have. Binding a null instead
/// would write a tombstone for each absent cell (CQL protocol v3 has no "unset"), which every
/// later read of the partition steps over and Cassandra counts against its tombstone limits.
fn insert_statement(table: &str, shape: Shape) -> String {
    let columns: Vec<&str> = REQUIRED
        .iter()
        .chain(
            OPTIONAL
                .iter()
                .enumerate()
                .filter(|(i, _)| shape & (1 << i) != 0)
                .map(|(_, c)| c),
        )
        .copied()
        .collect();
    let markers = vec!["?"; columns.len()].join(", ");
    format!(
        "INSERT INTO {table} ({}) VALUES ({markers}) USING TIMESTAMP ?",
        columns.join(", ")
    )
}

/// The Murmur3 token of a history partition (tenant, user_id, bucket), as Cassandra and
/// Scylla compute it: the key in the composite encoding (each component a big-endian 2-byte
/// length, its bytes and a 0 byte), hashed. It only groups rows into batches (the driver
/// routes every request itself), so an id too long for its length field (the stages take at
/// most 1,024 bytes) gets some token rather than an error.
pub fn token_of(tenant: &str, user_id: &str, bucket: i32) -> Token {
    let bucket = bucket.to_be_bytes();
    let mut key = Vec::with_capacity(tenant.len() + user_id.len() + bucket.len() + 9);
    for part in [tenant.as_bytes(), user_id.as_bytes(), &bucket] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        key.extend_from_slice(&len.to_be_bytes());
        key.extend_from_slice(part);
        key.push(0);
    }
    Murmur3Partitioner.hash_one(&key)
}

/// Creates the keyspace and table if missing (idempotent).
pub async fn migrate(
    session: &Session,
    scylla: &ScyllaConfig,
    history: &HistoryConfig,
) -> Result<(), ScyllaError> {
    scylla.validate()?;
    history.validate()?;
    let replication = history
        .replication
        .iter()
        .map(|(k, v)| format!("'{k}': '{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let ks = &scylla.keyspace;
    let statements = [
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{{replication}}}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{table} (\
               tenant text, user_id text, bucket int, ts timestamp, device_id text, seq bigint, \
               lat double, lon double, accuracy_m float, altitude_m double, speed_mps float, \
               heading_deg float, battery_pct int, activity text, source text, received_at timestamp, \
               PRIMARY KEY ((tenant, user_id, bucket), ts, device_id, seq)\
             ) WITH CLUSTERING ORDER BY (ts DESC, device_id ASC, seq ASC) \
               AND default_time_to_live = {ttl} \
               AND comment = 'Locus: every fix, partitioned by tenant, user and a {hours}-hour bucket'",
            table = history.table,
            ttl = u64::from(history.ttl_days) * 86_400,
            hours = history.bucket_hours,
        ),
    ];
    for s in statements {
        session
            .query_unpaged(s.clone(), ())
            .await
            .map_err(ScyllaError::query(format!("creating the schema ({s})")))?;
    }
    Ok(())
}

/// One stored row (the columns in [`COLUMNS`] order).
type Row = (
    String,
    String,
    i32,
    CqlTimestamp,
    String,
    i64,
    f64,
    f64,
    Option<f32>,
    Option<f64>,
    Option<f32>,
    Option<f32>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
);

fn to_fix(r: Row) -> LocationFix {
    LocationFix {
        tenant: r.0,
        user_id: r.1,
        device_id: r.4,
        seq: r.5,
        ts: r.3.0,
        lat: r.6,
        lon: r.7,
        accuracy_m: r.8,
        altitude_m: r.9,
        speed_mps: r.10,
        heading_deg: r.11,
        battery_pct: r.12,
        activity: r.13,
        source: r.14,
        received_at: r.15.map_or(0, |t| t.0),
    }
}

/// Prepared statements over one session.
#[derive(Debug, Clone)]
pub struct HistoryStore {
    session: Arc<Session>,
    table: String,
    /// The keyspace and table as the nodes name them (CQL folds unquoted names to lower
    /// case), for looking up their replicas in the driver's metadata.
    names: Arc<(String, String)>,
    /// Inserts by shape, prepared the first time a row of that shape is written.
    inserts: Arc<RwLock<HashMap<Shape, PreparedStatement>>>,
    select: PreparedStatement,
    bucket_ms: i64,
}

impl HistoryStore {
    pub async fn prepare(
        session: Arc<Session>,
        scylla: &ScyllaConfig,
        history: &HistoryConfig,
    ) -> Result<HistoryStore, ScyllaError> {
        let table = format!("{}.{}", scylla.keyspace, history.table);
        let prepare = |q: String| {
            let session = session.clone();
            async move {
                session
                    .prepare(q.clone())
                    .await
                    .map_err(ScyllaError::query(format!("preparing {q}")))
            }
        };
        // The full shape at start-up, so a table without the expected columns fails here.
        let insert = prepare(insert_statement(&table, FULL)).await?;
        let names = match insert.get_table_spec() {
            Some(spec) => (spec.ks_name().to_owned(), spec.table_name().to_owned()),
            None => (scylla.keyspace.to_lowercase(), history.table.to_lowercase()),
        };
        let select = prepare(format!(
            "SELECT {COLUMNS} FROM {table} WHERE tenant = ? AND user_id = ? AND bucket = ? \
             AND ts >= ? AND ts < ? ORDER BY ts ASC LIMIT ?"
        ))
        .await?;
        Ok(HistoryStore {
            session,
            table,
            names: Arc::new(names),
            inserts: Arc::new(RwLock::new(HashMap::from([(FULL, insert)]))),
            select,
            bucket_ms: history.bucket_ms(),
        })
    }

    /// The insert for rows of `shape`, prepared on first use.
    async fn insert(&self, shape: Shape) -> Result<PreparedStatement, ScyllaError> {
        if let Some(p) = read(&self.inserts).get(&shape) {
            return Ok(p.clone());
        }
        let q = insert_statement(&self.table, shape);
        let p = self
            .session
            .prepare(q.clone())
            .await
            .map_err(ScyllaError::query(format!("preparing {q}")))?;
        write(&self.inserts).insert(shape, p.clone());
        Ok(p)
    }

    /// A cheap query, for `/readyz`.
    pub async fn ping(&self) -> Result<(), ScyllaError> {
        self.session
            .query_unpaged(
                "SELECT release_version FROM system.local WHERE key = 'local'",
                (),
            )
            .await
            .map(|_| ())
            .map_err(ScyllaError::query("ping"))
    }

    pub fn bucket_of(&self, ts_ms: i64) -> i32 {
        ts_ms.div_euclid(self.bucket_ms) as i32
    }

    pub fn bucket_start(&self, bucket: i32) -> i64 {
        i64::from(bucket) * self.bucket_ms
    }

    /// One plain prepared insert (no batch).
    pub async fn write_one(&self, f: &LocationFix) -> Result<(), ScyllaError> {
        let row = self.row(f);
        let insert = self.insert(row.shape()).await?;
        let written = self.session.execute_unpaged(&insert, row).await;
        self.written(written, "inserting a row")
    }

    /// A write's outcome. When the statement itself failed (the table changed under the
    /// prepared inserts, or a value no longer fits its marker), every prepared insert is
    /// dropped, so the retry prepares against the table as it is now.
    fn written<T>(
        &self,
        r: Result<T, ExecutionError>,
        what: &'static str,
    ) -> Result<(), ScyllaError> {
        r.map(|_| ()).map_err(|e| {
            if statement_failed(&e) {
                write(&self.inserts).clear();
                return ScyllaError::Refused {
                    what: what.into(),
                    source: Box::new(e),
                };
            }
            ScyllaError::query(what)(e)
        })
    }

    fn row<'a>(&self, f: &'a LocationFix) -> InsertRow<'a> {
        InsertRow::of(f, self.bucket_of(f.ts))
    }

    /// Writes rows, each `USING TIMESTAMP` = its event time (µs): a replay or a duplicate is
    /// a no-op, and an older write never overwrites a newer one. One row is one plain insert;
    /// several are one unlogged batch, so they should share a partition or a replica set
    /// ([`HistoryStore::replica_set`]). Absent optional fields are left out, never null.
    pub async fn write_rows(&self, fixes: &[&LocationFix]) -> Result<(), ScyllaError> {
        if let [f] = fixes {
            return self.write_one(f).await;
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(fixes.len());
        for f in fixes {
            let row = self.row(f);
            batch.append_statement(self.insert(row.shape()).await?);
            values.push(row);
        }
        let written = self.session.batch(&batch, values).await;
        self.written(written, "writing a batch of rows")
    }

    /// The driver's view of the cluster now (ring, keyspaces, shards), for
    /// [`HistoryStore::replica_set`]; taken once per consumer batch.
    pub fn cluster(&self) -> Arc<ClusterState> {
        self.session.get_cluster_state()
    }

    /// The replicas (node and shard) that own a partition of the table, in a stable order,
    /// or none when they cannot be told reliably: a tablet keyspace (tablets move, and a
    /// batch does not teach the driver where they went), or a cluster of several nodes whose
    /// keyspace the driver has no metadata for (`scylla.fetch_schema_metadata = false`).
    /// A single node without metadata owns everything (the local stack).
    pub fn replica_set(
        &self,
        cluster: &ClusterState,
        tenant: &str,
        user_id: &str,
        bucket: i32,
    ) -> Vec<(uuid::Uuid, Shard)> {
        let (keyspace, table) = (&self.names.0, &self.names.1);
        match cluster.get_keyspace(keyspace) {
            Some(k) if k.tablet_based => return Vec::new(),
            None if cluster.get_nodes_info().len() != 1 => return Vec::new(),
            _ => {}
        }
        let mut replicas: Vec<(uuid::Uuid, Shard)> = cluster
            .get_token_endpoints(keyspace, table, token_of(tenant, user_id, bucket))
            .into_iter()
            .map(|(node, shard)| (node.host_id, shard))
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// Fixes of one user with `from <= ts < to`, in event-time order, starting after
    /// `skip` rows at `start_ts` (the cursor), at most `limit`.
    pub async fn track(
        &self,
        tenant: &str,
        user: &str,
        from: i64,
        to: i64,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<LocationFix>, Option<Cursor>), ScyllaError> {
        let (mut bucket, mut lower, mut skip) = match cursor {
            Some(c) => (self.bucket_of(c.ts.max(from)), c.ts.max(from), c.skip),
            None => (self.bucket_of(from), from, 0),
        };
        let last_bucket = self.bucket_of(to - 1);
        let mut out: Vec<LocationFix> = Vec::with_capacity(limit.min(4096));
        while bucket <= last_bucket && out.len() < limit {
            let upper = to.min(self.bucket_start(bucket + 1));
            let want = i32::try_from((limit - out.len()).saturating_add(skip)).unwrap_or(i32::MAX);
            let rows = self
                .session
                .execute_unpaged(
                    &self.select,
                    (
                        tenant,
                        user,
                        bucket,
                        CqlTimestamp(lower),
                        CqlTimestamp(upper),
                        want,
                    ),
                )
                .await
                .map_err(ScyllaError::query("reading a track"))?
                .into_rows_result()
                .map_err(ScyllaError::query("reading a track's rows"))?;
            let mut got = 0usize;
            for row in rows
                .rows::<Row>()
                .map_err(ScyllaError::query("typing a track's rows"))?
            {
                let row = row.map_err(ScyllaError::query("decoding a track row"))?;
                got += 1;
                if row.3.0 == lower && skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(to_fix(row));
            }
            if got < want as usize {
                // This bucket is exhausted: on to the next.
                bucket += 1;
                lower = self.bucket_start(bucket).max(from);
                skip = 0;
            }
        }
        let next = if out.len() >= limit {
            out.last().map(|last| {
                let ties = out.iter().rev().take_while(|f| f.ts == last.ts).count();
                // If the page started inside a run of equal timestamps, count those too.
                let carried = cursor.filter(|c| c.ts == last.ts).map_or(0, |c| c.skip);
                Cursor {
                    ts: last.ts,
                    skip: ties + carried,
                }
            })
        } else {
            None
        };
        Ok((out, next))
    }
}

/// Where the next page starts: after `skip` rows with event time `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: i64,
    pub skip: usize,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{:x}.{:x}", self.ts, self.skip)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (a, b) = s.split_once('.')?;
        Some(Cursor {
            ts: i64::from_str_radix(a, 16).ok()?,
            skip: usize::from_str_radix(b, 16).ok()?,
        })
    }
}

/// Whether a write failed because of its statement rather than the cluster.
fn statement_failed(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::BadQuery(_)
            | ExecutionError::PrepareError(_)
            | ExecutionError::LastAttemptError(
                RequestAttemptError::SerializationError(_)
                    | RequestAttemptError::CqlRequestSerialization(_)
                    | RequestAttemptError::DbError(
                        DbError::Invalid | DbError::SyntaxError | DbError::Unprepared { .. },
                        _
                    )
            )
    )
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The values of one insert of [`insert_statement`]`(table, row.shape())`: the required
/// columns, the optional ones the fix has, then USING TIMESTAMP.
struct InsertRow<'a> {
    tenant: &'a str,
    user_id: &'a str,
    bucket: i32,
    ts: CqlTimestamp,
    device_id: &'a str,
    seq: i64,
    lat: f64,
    lon: f64,
    accuracy_m: Option<f32>,
    altitude_m: Option<f64>,
    speed_mps: Option<f32>,
    heading_deg: Option<f32>,
    battery_pct: Option<i32>,
    activity: Option<&'a str>,
    source: Option<&'a str>,
    received_at: CqlTimestamp,
    write_time_us: i64,
}

impl InsertRow<'_> {
    fn of(f: &LocationFix, bucket: i32) -> InsertRow<'_> {
        InsertRow {
            tenant: &f.tenant,
            user_id: &f.user_id,
            bucket,
            ts: CqlTimestamp(f.ts),
            device_id: &f.device_id,
            seq: f.seq,
            lat: f.lat,
            lon: f.lon,
            accuracy_m: f.accuracy_m,
            altitude_m: f.altitude_m,
            speed_mps: f.speed_mps,
            heading_deg: f.heading_deg,
            battery_pct: f.battery_pct,
            activity: f.activity.as_deref(),
            source: f.source.as_deref(),
            received_at: CqlTimestamp(f.received_at),
            write_time_us: f.ts.saturating_mul(1000),
        }
    }

    /// The values of [`REQUIRED`], in that order.
    fn required(&self) -> [&dyn SerializeValue; REQUIRED.len()] {
        [
            &self.tenant,
            &self.user_id,
            &self.bucket,
            &self.ts,
            &self.device_id,
            &self.seq,
            &self.lat,
            &self.lon,
            &self.received_at,
        ]
    }

    /// The values of [`OPTIONAL`], in that order (`None`: the fix lacks it).
    fn optional(&self) -> [Option<&dyn SerializeValue>; OPTIONAL.len()] {
        [
            self.accuracy_m.as_ref().map(|v| v as _),
            self.altitude_m.as_ref().map(|v| v as _),
            self.speed_mps.as_ref().map(|v| v as _),
            self.heading_deg.as_ref().map(|v| v as _),
            self.battery_pct.as_ref().map(|v| v as _),
            self.activity.as_ref().map(|v| v as _),
            self.source.as_ref().map(|v| v as _),
        ]
    }

    fn shape(&self) -> Shape {
        self.optional()
            .iter()
            .enumerate()
            .fold(0, |m, (i, v)| m | (Shape::from(v.is_some()) << i))
    }

    /// The columns the row binds, with their values, in bind order (USING TIMESTAMP apart).
    fn values(&self) -> impl Iterator<Item = (&'static str, &dyn SerializeValue)> {
        REQUIRED.into_iter().zip(self.required()).chain(
            OPTIONAL
                .into_iter()
                .zip(self.optional())
                .filter_map(|(name, v)| Some((name, v?))),
        )
    }
}

/// The statement's bind markers did not name the row's columns (a statement of another shape).
#[derive(Debug, thiserror::Error)]
#[error("an insert row of columns {row:?} bound to a statement of markers {statement:?}")]
struct Mismatch {
    row: Vec<&'static str>,
    statement: Vec<String>,
}

impl SerializeRow for InsertRow<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        // Every column by name (three float columns would take each other's values without
        // a complaint from the types), then the USING TIMESTAMP marker.
        let mismatch = || {
            SerializationError::new(Mismatch {
                row: self.values().map(|(name, _)| name).collect(),
                statement: ctx.columns().iter().map(|c| c.name().to_owned()).collect(),
            })
        };
        let mut columns = ctx.columns().iter();
        for (name, value) in self.values() {
            let column = columns
                .next()
                .filter(|c| c.name() == name)
                .ok_or_else(mismatch)?;
            value.serialize(column.typ(), writer.make_cell_writer())?;
        }
        let timestamp = columns.next().ok_or_else(mismatch)?;
        if columns.next().is_some() {
            return Err(mismatch());
        }
        self.write_time_us
            .serialize(timestamp.typ(), writer.make_cell_writer())?;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_tokens_are_the_ones_cassandra_computes() {
        // Read back from Cassandra 2.1 with `SELECT token(tenant, user_id, bucket)`
        // (tests/store.rs checks every row it writes the same way).
        assert_eq!(
            token_of("acme", "user-007", 3).value(),
            -3928194364908417625
        );
        assert_eq!(token_of("acme", "user-007", 4).value(), 6430851815753102220);
        assert_eq!(
            token_of("acme", "user-100", -1).value(),
            7875714859163884920
        );
        assert_eq!(
            token_of("acme", "user-100", -2).value(),
            8790863966035277007
        );
    }

    #[test]
    fn an_insert_binds_only_the_columns_its_shape_has() {
        assert_eq!(
            insert_statement("ks.t", 0),
            "INSERT INTO ks.t (tenant, user_id, bucket, ts, device_id, seq, lat, lon, received_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(
            insert_statement("ks.t", 0b100_0100),
            "INSERT INTO ks.t (tenant, user_id, bucket, ts, device_id, seq, lat, lon, received_at, \
             speed_mps, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(insert_statement("ks.t", FULL).matches('?').count(), 17);
        let f = LocationFix {
            tenant: "t".into(),
            user_id: "u".into(),
            device_id: "d".into(),
            seq: 1,
            ts: 2,
            lat: 0.0,
            lon: 0.0,
            accuracy_m: None,
            altitude_m: None,
            speed_mps: Some(1.0),
            heading_deg: None,
            battery_pct: None,
            activity: None,
            source: Some("gps".into()),
            received_at: 3,
        };
        let row = InsertRow::of(&f, 0);
        assert_eq!(row.shape(), 0b100_0100);
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = Cursor {
            ts: 1_760_000_000_123,
            skip: 3,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode("12.xyz"), None);
    }
}
