//! The history writer: Kafka records → rows, through the shared at-least-once runner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use locus_kafka::{Backoff, DECODE_REASONS, DeadLetter, Record, Sink, StageMetrics};
use locus_schemas::{Codec, CodecError, LocationFix};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::metrics::M;
use crate::{BatchGrouping, HistoryStore, ScyllaError};

/// The history stage's core metrics (every series at zero from the start).
pub fn stage_metrics() -> StageMetrics {
    StageMetrics::new(
        "history",
        DECODE_REASONS,
        &["cassandra_write", "registry", "kafka"],
    )
}

/// Writes each batch of records durably before the runner stores their offsets.
#[derive(Debug)]
pub struct HistorySink {
    store: HistoryStore,
    codec: Codec,
    dead_letter: DeadLetter,
    stage: StageMetrics,
    permits: Arc<Semaphore>,
    rows_per_batch: usize,
    grouping: BatchGrouping,
}

/// What the rows of one unlogged batch share.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Group<'a> {
    /// The replicas (node, shard) of every row's partition.
    Replicas(Vec<(uuid::Uuid, scylla::routing::Shard)>),
    /// One partition: (tenant, user, bucket).
    Partition(&'a str, &'a str, i32),
}

impl HistorySink {
    pub fn new(
        store: HistoryStore,
        codec: Codec,
        dead_letter: DeadLetter,
        concurrency: usize,
        rows_per_batch: usize,
        grouping: BatchGrouping,
    ) -> HistorySink {
        HistorySink {
            store,
            codec,
            dead_letter,
            stage: stage_metrics(),
            permits: Arc::new(Semaphore::new(concurrency)),
            rows_per_batch,
            grouping,
        }
    }

    /// One batch of rows (a partition's, or a replica set's), written before it returns: the
    /// runner reads no further meanwhile (back-pressure), and nothing is skipped. A batch the
    /// nodes refuse (too large for `batch_size_fail_threshold_in_kb`, say) is written again
    /// row by row, side by side, so rows of other partitions are never held back by one.
    async fn write(&self, rows: Vec<&LocationFix>) {
        let _permit = self.permits.acquire().await;
        if !self.write_retrying(&rows).await {
            // Side by side, so a row that is refused again (and retried) holds no other.
            let singles: FuturesUnordered<_> = rows
                .iter()
                .map(|row| self.write_retrying(std::slice::from_ref(row)))
                .collect();
            singles.collect::<Vec<bool>>().await;
        }
    }

    /// Writes `rows`, retrying with backoff until they are written (true), except a batch of
    /// several rows that the nodes refused (false).
    async fn write_retrying(&self, rows: &[&LocationFix]) -> bool {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.store.write_rows(rows).await {
                Ok(()) => {
                    M.write_latency.observe(started.elapsed().as_secs_f64());
                    M.batch_rows.observe(rows.len() as f64);
                    M.rows.inc_by(rows.len() as u64);
                    self.stage.applied(rows.len() as u64);
                    self.stage.fresh(rows.iter().map(|r| r.ts));
                    return true;
                }
                Err(error) => {
                    self.stage.error("cassandra_write");
                    if rows.len() > 1 && matches!(error, ScyllaError::Refused { .. }) {
                        warn!(%error, rows = rows.len(), "Cassandra refused a batch; writing its rows one by one");
                        return false;
                    }
                    self.stage.retry();
                    warn!(%error, retry_in = ?backoff.current(), rows = rows.len(), "Cassandra write failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

impl HistorySink {
    /// Decodes a batch, dead-lettering records that are not fixes. A registry outage fails
    /// the whole batch (not the records' fault: nothing may be committed past them).
    pub async fn decode_batch(&self, batch: &[Record]) -> Result<Vec<LocationFix>, CodecError> {
        self.dead_letter
            .decode_fixes(&self.codec, batch, &self.stage)
            .await
    }

    /// Writes decoded fixes in unlogged batches of up to `rows_per_batch` rows that share a
    /// partition or a replica set (`history.batch_grouping`), retrying until written.
    pub async fn apply_fixes(&self, fixes: &[LocationFix]) {
        let mut partitions: HashMap<(&str, &str, i32), Vec<&LocationFix>> = HashMap::new();
        for f in fixes {
            partitions
                .entry((&f.tenant, &f.user_id, self.store.bucket_of(f.ts)))
                .or_default()
                .push(f);
        }
        let mut groups: HashMap<Group, Vec<&LocationFix>> = HashMap::new();
        let cluster = (self.grouping == BatchGrouping::ReplicaSet).then(|| self.store.cluster());
        for ((tenant, user, bucket), rows) in partitions {
            let replicas = cluster
                .as_deref()
                .map(|c| self.store.replica_set(c, tenant, user, bucket))
                .unwrap_or_default();
            let group = if replicas.is_empty() {
                Group::Partition(tenant, user, bucket)
            } else {
                Group::Replicas(replicas)
            };
            groups.entry(group).or_default().extend(rows);
        }
        let mut writes = FuturesUnordered::new();
        for rows in groups.into_values() {
            for chunk in rows.chunks(self.rows_per_batch) {
                writes.push(self.write(chunk.to_vec()));
            }
        }
        while writes.next().await.is_some() {}
    }
}

impl Sink for HistorySink {
    type Error = CodecError;

    async fn apply(&self, batch: Vec<Record>) -> Result<(), CodecError> {
        // A registry outage fails the batch, so nothing is stored and the stage stops loudly
        // rather than dead-lettering good data.
        let fixes = self.decode_batch(&batch).await?;
        self.apply_fixes(&fixes).await;
        Ok(())
    }
}
