//! `locus push`: Kafka → Server-Sent Events, the dashboard, and its playback (connectors/sse,
//! replay). Snapshots come from the last-position cache through [`locus_sse::Snapshots`].

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use futures::future::BoxFuture;
use locus_redis::CacheStore;
use locus_sse::{SnapshotError, SnapshotPosition, SnapshotQuery, Snapshots};

use super::{StageContext, StageParts, connect_until, data_auth, warn_if_fd_limit_below};
use crate::config::Config;

pub fn build(config: &Config, ctx: StageContext) -> anyhow::Result<StageParts> {
    locus_sse::init_metrics();
    warn_if_fd_limit_below(config.push.max_connections);
    let auth = locus_sse::Authenticator::from_config(&config.push)
        .context("starting the push stage")?
        .with_groups(ctx.groups.clone());
    let hub = Arc::new(locus_sse::Hub::default());
    let snapshots: Arc<OnceLock<Arc<dyn Snapshots>>> = Arc::new(OnceLock::new());
    let api = Arc::new(locus_sse::PushApi::new(
        hub.clone(),
        auth,
        config.push.clone(),
        config.kafka.clone(),
        config.topics.locations.clone(),
        locus_schemas::Codec::new(&config.registry, &config.topics.locations)?,
        snapshots.clone(),
        ctx.cancel.clone(),
    ));
    // The dashboard's playback: a window of the tenant's fixes, paced.
    let replay = data_auth(
        config,
        &ctx,
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
    )?;
    let routes = locus_sse::router(api.clone(), (config.cache.online_s, config.cache.offline_s))
        .merge(replay);
    Ok(StageParts::new(run(config.clone(), api, snapshots, ctx))
        .routes(routes)
        .check("push-reader", move || {
            let ready = hub.is_ready();
            async move {
                if ready {
                    Ok(())
                } else {
                    Err("not assigned yet".to_string())
                }
            }
        }))
}

/// The live reader feeds the hub (with the API's codec, so live reads and resumes share one
/// schema cache); the snapshot source connects beside it (streams start without it and say
/// their snapshot is incomplete). Both stop on the stage's token.
async fn run(
    config: Config,
    api: Arc<locus_sse::PushApi>,
    snapshots: Arc<OnceLock<Arc<dyn Snapshots>>>,
    ctx: StageContext,
) -> anyhow::Result<()> {
    // Connecting to Redis stops with the stage, and also when the live reader ends on its own
    // (an error): the stage must end then, so the process stops loudly.
    let connect_stop = ctx.cancel.child_token();
    let connect = async {
        if let Some(store) = connect_until(&connect_stop, "Redis", || {
            CacheStore::connect(&config.cache)
        })
        .await
        {
            let _ = snapshots.set(Arc::new(CacheSnapshots(store)));
        }
    };
    let live = async {
        let r = locus_sse::source::run_live(
            api.kafka.clone(),
            api.topic.clone(),
            api.hub.clone(),
            &api.codec,
            ctx.cancel.clone(),
        )
        .await;
        connect_stop.cancel();
        r
    };
    let ((), live) = tokio::join!(connect, live);
    live?;
    Ok(())
}

/// Snapshots from the last-position cache.
#[derive(Debug)]
struct CacheSnapshots(CacheStore);

impl Snapshots for CacheSnapshots {
    fn snapshot<'a>(
        &'a self,
        tenant: &'a str,
        query: SnapshotQuery<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SnapshotPosition>, SnapshotError>> {
        Box::pin(async move {
            let found = match query {
                SnapshotQuery::Users(users) => self.0.positions(tenant, users).await,
                SnapshotQuery::BBox([x0, y0, x1, y1]) => {
                    self.0.in_bbox(tenant, (x0, y0, x1, y1), None, limit).await
                }
                SnapshotQuery::Recent => self.0.recent(tenant, limit).await,
            }?;
            Ok(found
                .into_iter()
                .map(|p| SnapshotPosition {
                    lat: p.lat,
                    lon: p.lon,
                    json: serde_json::to_value(&p).unwrap_or_default(),
                })
                .collect())
        })
    }
}
