//! The history table: schema, prepared writes, and track queries.

use std::sync::Arc;

use locus_schemas::LocationFix;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::{HistoryConfig, ScyllaConfig, ScyllaError};

const COLUMNS: &str = "tenant, user_id, bucket, ts, device_id, seq, lat, lon, accuracy_m, altitude_m, \
                       speed_mps, heading_deg, battery_pct, activity, source, received_at";

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
    insert: PreparedStatement,
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
        let insert = prepare(format!(
            "INSERT INTO {table} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await?;
        let select = prepare(format!(
            "SELECT {COLUMNS} FROM {table} WHERE tenant = ? AND user_id = ? AND bucket = ? \
             AND ts >= ? AND ts < ? ORDER BY ts ASC LIMIT ?"
        ))
        .await?;
        Ok(HistoryStore {
            session,
            insert,
            select,
            bucket_ms: history.bucket_ms(),
        })
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

    /// One plain prepared insert (no batch): the benchmark's ceiling path.
    pub async fn write_one(&self, f: &LocationFix) -> Result<(), ScyllaError> {
        self.session
            .execute_unpaged(&self.insert, self.row(f))
            .await
            .map(|_| ())
            .map_err(ScyllaError::query("inserting a row"))
    }

    fn row<'a>(&self, f: &'a LocationFix) -> InsertRow<'a> {
        InsertRow {
            tenant: &f.tenant,
            user_id: &f.user_id,
            bucket: self.bucket_of(f.ts),
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

    /// Writes fixes of ONE partition (tenant, user, bucket) as one unlogged batch, each row
    /// `USING TIMESTAMP` = its event time (µs): a replay or a duplicate is a no-op, and an
    /// older write never overwrites a newer one.
    pub async fn write_partition(&self, fixes: &[&LocationFix]) -> Result<(), ScyllaError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(fixes.len());
        for f in fixes {
            batch.append_statement(self.insert.clone());
            values.push(self.row(f));
        }
        self.session
            .batch(&batch, values)
            .await
            .map(|_| ())
            .map_err(ScyllaError::query("writing a batch of rows"))
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

/// The values of one insert, in bind-marker order (the 16 columns, then USING TIMESTAMP).
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
