//! `locus bridge`: MQTT → Kafka (connectors/mqtt).

use anyhow::Context;

use super::{StageContext, StageParts};
use crate::config::Config;

pub fn build(config: &Config, ctx: StageContext) -> anyhow::Result<StageParts> {
    locus_mqtt::init_metrics();
    let (bridge, health) = locus_mqtt::Bridge::build(
        &config.bridge,
        &config.kafka,
        &config.registry,
        &config.topics.locations,
        &config.topics.dlq,
        ctx.grace,
    )
    .context("building the bridge")?;
    let cancel = ctx.cancel;
    Ok(
        StageParts::new(async move { bridge.run(cancel).await.map_err(Into::into) }).check(
            "mqtt",
            move || {
                let h = health.clone();
                async move { h.check() }
            },
        ),
    )
}
