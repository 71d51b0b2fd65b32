//! `locus history`: Kafka → Cassandra/Scylla, and the track API (connectors/scylla).

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use locus_scylla::HistoryStore;

use super::{StageContext, StageParts, connect_until, data_auth};
use crate::config::Config;

pub fn build(config: &Config, ctx: StageContext) -> anyhow::Result<StageParts> {
    locus_scylla::init_metrics();
    // Set once connected: the API answers 503 and /readyz says "connecting" until then.
    let store: Arc<OnceLock<HistoryStore>> = Arc::new(OnceLock::new());
    let routes = data_auth(
        config,
        &ctx,
        locus_scylla::router(locus_scylla::TrackApi {
            store: store.clone(),
            config: config.history.clone(),
        }),
    )?;
    let ready = store.clone();
    Ok(StageParts::new(run(config.clone(), store, ctx))
        .routes(routes)
        .check_store("cassandra", ready, |s: HistoryStore| async move {
            s.ping().await
        }))
}

/// Connects (retrying while Cassandra is away), migrates if configured, then consumes
/// `locations` into the history table until cancelled.
async fn run(
    config: Config,
    slot: Arc<OnceLock<HistoryStore>>,
    ctx: StageContext,
) -> anyhow::Result<()> {
    let Some(session) = connect_until(&ctx.cancel, "Cassandra/Scylla", || {
        locus_scylla::connect(&config.scylla)
    })
    .await
    else {
        return Ok(());
    };
    let session = Arc::new(session);
    if config.history.migrate_on_start {
        locus_scylla::migrate(&session, &config.scylla, &config.history)
            .await
            .context("migrating the history schema")?;
    }
    let store = HistoryStore::prepare(session, &config.scylla, &config.history)
        .await
        .context("preparing history statements")?;
    let _ = slot.set(store.clone());
    let sink = Arc::new(locus_scylla::HistorySink::new(
        store,
        locus_schemas::Codec::new(&config.registry, &config.topics.locations)?,
        locus_kafka::DeadLetter::to(
            locus_kafka::Producer::new(&config.kafka, "history")?,
            &config.topics.dlq,
        ),
        config.history.concurrency,
        config.history.rows_per_batch,
        config.history.batch_grouping,
    ));
    let settings = locus_kafka::RunnerSettings {
        group: config.history.group.clone(),
        topic: config.topics.locations.clone(),
        max_batch: config.history.max_batch,
        max_batch_wait_ms: config.history.max_batch_wait_ms,
        max_in_flight_batches: config.history.max_in_flight_batches,
    };
    locus_kafka::run_consumer(&config.kafka, "history", &settings, sink, ctx.cancel).await?;
    Ok(())
}
