//! Wiring of the long-running stages: each runs alone (`locus bridge`, ...) to scale on its
//! own, or together (`locus run`) on a laptop or a small site. Every process gets the same
//! runtime: one HTTP server (/metrics, /healthz, /readyz), graceful shutdown on SIGTERM.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use locus_kafka::Backoff;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::auth::require_token;
use crate::runtime::http::{Readiness, base_router, bind, serve};
use crate::runtime::shutdown;

/// Routes whose responses are long-lived streams (see `runtime::streaming`).
const STREAMING_PATHS: &[&str] = &[locus_sse::STREAM_PATH];

/// The stages this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Bridge,
    History,
    Cache,
    Push,
}

impl Stage {
    pub const ALL: &'static [Stage] = &[Stage::Bridge, Stage::History, Stage::Cache, Stage::Push];

    fn name(self) -> &'static str {
        match self {
            Stage::Bridge => "bridge",
            Stage::History => "history",
            Stage::Cache => "cache",
            Stage::Push => "push",
        }
    }
}

pub async fn run(config: &Config, stages: &[Stage]) -> anyhow::Result<()> {
    let cancel = shutdown::on_signal();
    let readiness = Readiness::default();
    let kafka = config.kafka.clone();
    readiness.add("kafka", move || {
        let kafka = kafka.clone();
        async move {
            locus_kafka::check_reachable(&kafka)
                .await
                .map_err(|e| e.to_string())
        }
    });

    let grace = Duration::from_millis(config.http.shutdown_grace_ms);
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let mut router = axum::Router::new();
    // Every data route takes the same tokens as the live stream (runtime/auth.rs).
    let data_auth = || -> anyhow::Result<Arc<locus_sse::Authenticator>> {
        Ok(Arc::new(
            locus_sse::Authenticator::from_config(&config.push)
                .context("the data routes check tokens with the push.jwt_* keys")?,
        ))
    };
    for stage in stages {
        match stage {
            Stage::Bridge => {
                let (bridge, health) = locus_mqtt::Bridge::build(
                    &config.bridge,
                    &config.kafka,
                    &config.registry,
                    &config.topics.locations,
                    &config.topics.dlq,
                    grace,
                )
                .context("building the bridge")?;
                readiness.add("mqtt", move || {
                    let h = health.clone();
                    async move { h.check() }
                });
                let c = cancel.child_token();
                tasks.spawn(async move { ("bridge", bridge.run(c).await.map_err(Into::into)) });
            }
            Stage::Cache => {
                let store = Arc::new(OnceLock::new());
                router = router.merge(require_token(
                    locus_redis::router(locus_redis::PositionsApi {
                        store: store.clone(),
                        config: config.cache.clone(),
                    }),
                    data_auth()?,
                ));
                let ready_store = store.clone();
                readiness.add("redis", move || {
                    let s: Option<locus_redis::CacheStore> = ready_store.get().cloned();
                    async move {
                        match s {
                            Some(s) => s.ping().await.map_err(|e| e.to_string()),
                            None => Err("connecting".to_string()),
                        }
                    }
                });
                let c = cancel.child_token();
                let cfg = config.clone();
                tasks.spawn(async move { ("cache", cache(cfg, store, c).await) });
            }
            Stage::Push => {
                warn_if_fd_limit_below(config.push.max_connections);
                let auth = locus_sse::Authenticator::from_config(&config.push)
                    .context("starting the push stage")?;
                let hub = Arc::new(locus_sse::Hub::default());
                let store = Arc::new(OnceLock::new());
                let api = Arc::new(locus_sse::PushApi::new(
                    hub.clone(),
                    auth,
                    config.push.clone(),
                    config.kafka.clone(),
                    config.topics.locations.clone(),
                    locus_schemas::Codec::new(&config.registry, &config.topics.locations)?,
                    store.clone(),
                    cancel.clone(),
                ));
                router = router.merge(locus_sse::router(
                    api.clone(),
                    (config.cache.online_s, config.cache.offline_s),
                ));
                // The dashboard's playback: a window of the tenant's fixes, paced.
                router = router.merge(require_token(
                    locus_replay::router(Arc::new(locus_replay::ReplayApi::new(
                        config.kafka.clone(),
                        config.topics.locations.clone(),
                        Arc::new(locus_schemas::Codec::new(
                            &config.registry,
                            &config.topics.locations,
                        )?),
                        config.replay.clone(),
                        config.bridge.max_future_ms,
                        config.bridge.max_age_ms,
                    ))),
                    data_auth()?,
                ));
                let ready_hub = hub.clone();
                readiness.add("push-reader", move || {
                    let ready = ready_hub.is_ready();
                    async move {
                        if ready {
                            Ok(())
                        } else {
                            Err("not assigned yet".to_string())
                        }
                    }
                });
                let c = cancel.child_token();
                let cfg = config.clone();
                tasks.spawn(async move { ("push", push(cfg, api, c).await) });
            }
            Stage::History => {
                let store = Arc::new(OnceLock::new());
                router = router.merge(require_token(
                    locus_scylla::router(locus_scylla::TrackApi {
                        store: store.clone(),
                        config: config.history.clone(),
                    }),
                    data_auth()?,
                ));
                let ready_store = store.clone();
                readiness.add("cassandra", move || {
                    let s: Option<locus_scylla::HistoryStore> = ready_store.get().cloned();
                    async move {
                        match s {
                            Some(s) => s.ping().await.map_err(|e| e.to_string()),
                            None => Err("connecting".to_string()),
                        }
                    }
                });
                let c = cancel.child_token();
                let cfg = config.clone();
                tasks.spawn(async move { ("history", history(cfg, store, c).await) });
            }
        }
    }
    readiness.spawn(
        Duration::from_millis(config.http.readiness_interval_ms),
        cancel.child_token(),
    );
    let http_cancel = CancellationToken::new();
    let listen = config.http.listen;
    // Health and metrics on their own port when http.admin_listen is set.
    let (router, admin) = match config.http.admin_listen {
        Some(admin_listen) => (router, Some((admin_listen, base_router(readiness)))),
        None => (base_router(readiness).merge(router), None),
    };
    let public_listener = bind(listen, "http.listen").await?;
    let admin = match admin {
        Some((addr, admin_router)) => Some((bind(addr, "http.admin_listen").await?, admin_router)),
        None => None,
    };
    let http_stop = http_cancel.clone();
    let http = tokio::spawn(async move {
        let admin = async {
            match admin {
                Some((listener, admin_router)) => {
                    serve(listener, admin_router, &[], http_stop.clone()).await
                }
                None => Ok(()),
            }
        };
        let public = serve(public_listener, router, STREAMING_PATHS, http_stop.clone());
        tokio::try_join!(public, admin).map(|_| ())
    });

    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    tracing::info!(stages = ?names, "locus running");

    // A stage that ends on its own (an error) stops the whole process.
    let mut failure = None;
    tokio::select! {
        _ = cancel.cancelled() => {}
        Some(done) = tasks.join_next() => {
            match done {
                Ok((name, Err(e))) => failure = Some(anyhow::anyhow!("stage {name} failed: {e:#}")),
                Ok((name, Ok(()))) => failure = Some(anyhow::anyhow!("stage {name} ended unexpectedly")),
                Err(e) => failure = Some(anyhow::anyhow!("a stage panicked: {e}")),
            }
            cancel.cancel();
        }
    }
    // Drain within the grace period (each stage flushes and commits what is done), then abort.
    let drained = tokio::time::timeout(grace + Duration::from_secs(2), async {
        while let Some(done) = tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(
                    stage = name,
                    error = format!("{e:#}"),
                    "stage stopped with an error"
                );
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("stages did not stop within the grace period; aborting them");
        tasks.abort_all();
    }
    http_cancel.cancel();
    match http.await {
        Ok(Err(e)) if failure.is_none() => failure = Some(e),
        _ => {}
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("locus stopped");
            Ok(())
        }
    }
}

/// The history stage: connect (retrying while Cassandra is away), migrate if configured,
/// then consume `locations` into the history table until cancelled.
async fn history(
    config: Config,
    store_slot: Arc<OnceLock<locus_scylla::HistoryStore>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Some(session) = connect_until(&cancel, "Cassandra/Scylla", || {
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
    let store = locus_scylla::HistoryStore::prepare(session, &config.scylla, &config.history)
        .await
        .context("preparing history statements")?;
    let _ = store_slot.set(store.clone());
    let sink = Arc::new(locus_scylla::HistorySink::new(
        store,
        locus_schemas::Codec::new(&config.registry, &config.topics.locations)?,
        locus_kafka::DeadLetter::to(
            locus_kafka::Producer::new(&config.kafka, "history")?,
            &config.topics.dlq,
        ),
        config.history.concurrency,
        config.history.rows_per_batch,
    ));
    let settings = locus_kafka::RunnerSettings {
        group: config.history.group.clone(),
        topic: config.topics.locations.clone(),
        max_batch: config.history.max_batch,
        max_batch_wait_ms: config.history.max_batch_wait_ms,
        max_in_flight_batches: config.history.max_in_flight_batches,
    };
    locus_kafka::run_consumer(&config.kafka, "history", &settings, sink, cancel).await?;
    Ok(())
}

/// The cache stage: connect (retrying while Redis is away), run the sweeper, and consume
/// `locations` into Redis until cancelled.
async fn cache(
    config: Config,
    store_slot: Arc<OnceLock<locus_redis::CacheStore>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Some(store) = connect_until(&cancel, "Redis", || {
        locus_redis::CacheStore::connect(&config.cache)
    })
    .await
    else {
        return Ok(());
    };
    let _ = store_slot.set(store.clone());
    tokio::spawn(locus_redis::sweep_loop(
        store.clone(),
        Duration::from_secs(config.cache.sweep_interval_s),
        cancel.clone(),
    ));
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
    locus_kafka::run_consumer(&config.kafka, "cache", &settings, sink, cancel).await?;
    Ok(())
}

/// The push stage: the live reader feeds the hub (with the API's codec, so live reads and
/// replays share one schema cache); the snapshot store connects in the background (streams
/// start without it and say their snapshot is incomplete).
async fn push(
    config: Config,
    api: Arc<locus_sse::PushApi>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let c = cancel.clone();
    let store_slot = api.store.clone();
    tokio::spawn(async move {
        if let Some(store) = connect_until(&c, "Redis", || {
            locus_redis::CacheStore::connect(&config.cache)
        })
        .await
        {
            let _ = store_slot.set(store);
        }
    });
    locus_sse::source::run_live(
        api.kafka.clone(),
        api.topic.clone(),
        api.hub.clone(),
        &api.codec,
        cancel,
    )
    .await?;
    Ok(())
}

/// Each stream is an open file: say so at start if the process cannot hold
/// `push.max_connections` of them (the OS would refuse connections before the 503 does).
fn warn_if_fd_limit_below(max_connections: usize) {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        });
    if let Some(limit) = soft
        && limit < max_connections + 256
    {
        tracing::warn!(
            open_file_limit = limit,
            max_connections,
            "the open-file limit is below push.max_connections + 256: raise it (ulimit -n, \
             LimitNOFILE) or lower push.max_connections"
        );
    }
}

/// Calls `connect` with backoff (200 ms doubling to 5 s) until it succeeds; `None` if
/// cancelled first. A stage starts even while its store is away.
async fn connect_until<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    cancel: &CancellationToken,
    what: &str,
    mut connect: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    loop {
        match connect().await {
            Ok(t) => return Some(t),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.current(), "cannot reach {what} yet");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.current()) => {}
                }
                backoff.grow();
            }
        }
    }
}
