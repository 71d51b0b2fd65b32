//! `locus cache`: Kafka → Redis, the sweeper, and the position API (connectors/redis).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use locus_redis::CacheStore;

use super::{StageContext, StageParts, connect_until, data_auth};
use crate::config::Config;

pub fn build(config: &Config, ctx: StageContext) -> anyhow::Result<StageParts> {
    locus_redis::init_metrics();
    let store: Arc<OnceLock<CacheStore>> = Arc::new(OnceLock::new());
    let routes = data_auth(
        config,
        &ctx,
        locus_redis::router(locus_redis::PositionsApi {
            store: store.clone(),
            config: config.cache.clone(),
        }),
    )?;
    let ready = store.clone();
    Ok(StageParts::new(run(config.clone(), store, ctx))
        .routes(routes)
        .check_store(
            "redis",
            ready,
            |s: CacheStore| async move { s.ping().await },
        ))
}

/// Connects (retrying while Redis is away), then runs the sweeper and consumes `locations`
/// into Redis until cancelled; both stop on the same token.
async fn run(
    config: Config,
    slot: Arc<OnceLock<CacheStore>>,
    ctx: StageContext,
) -> anyhow::Result<()> {
    let Some(store) =
        connect_until(&ctx.cancel, "Redis", || CacheStore::connect(&config.cache)).await
    else {
        return Ok(());
    };
    let _ = slot.set(store.clone());
    // The sweeper stops with the stage, and also when the consumer ends on its own (an
    // error): the stage must end then, so the process stops loudly.
    let sweep_stop = ctx.cancel.child_token();
    let sweeper = locus_redis::sweep_loop(
        store.clone(),
        Duration::from_secs(config.cache.sweep_interval_s),
        sweep_stop.clone(),
    );
    let sink = Arc::new(locus_redis::CacheSink::new(
        store,
        locus_schemas::Codec::new(&config.registry, &config.topics.locations)?,
        locus_kafka::DeadLetter::to(
            locus_kafka::Producer::new(&config.kafka, "cache")?,
            &config.topics.dlq,
        ),
    ));
    let settings = locus_kafka::RunnerSettings {
        group: config.cache.group.clone(),
        topic: config.topics.locations.clone(),
        max_batch: config.cache.max_batch,
        max_batch_wait_ms: config.cache.max_batch_wait_ms,
        max_in_flight_batches: config.cache.max_in_flight_batches,
    };
    let consumer = async {
        let r =
            locus_kafka::run_consumer(&config.kafka, "cache", &settings, sink, ctx.cancel).await;
        sweep_stop.cancel();
        r
    };
    let ((), consumed) = tokio::join!(sweeper, consumer);
    consumed?;
    Ok(())
}
