//! Admin subcommands: `config check`, `topics plan|apply`, `schemas register`.

use anyhow::Context;
use locus_topics::TopicsFile;

use crate::config::Config;

pub fn config_check(config: &Config) -> anyhow::Result<()> {
    println!("# effective config (valid); secrets redacted");
    print!("{}", config.redacted_toml());
    Ok(())
}

fn topics_file(config: &Config) -> anyhow::Result<TopicsFile> {
    Ok(TopicsFile::load(&config.topics.file)?)
}

/// The declarations as this cluster gets them (`topics.max_partitions`), planned against it;
/// a refused shrink under the cap says where the smaller count comes from (a topic made
/// before the cap, on an older local stack).
async fn cluster_plan(config: &Config) -> anyhow::Result<locus_topics::Plan> {
    let file = topics_file(config)?.with_max_partitions(config.topics.max_partitions);
    let mut plan =
        locus_topics::plan(&config.kafka, &file, config.topics.max_replication_factor).await?;
    if let Some(max) = config.topics.max_partitions
        && plan.refusals.iter().any(|r| r.contains("cannot shrink"))
    {
        plan.notes.push(format!(
            "topics.max_partitions = {max} caps the declared partitions here; a topic made \
             with more before the cap (an older local stack: `dev/stack down kafka && rm -rf \
             .stack/kafka && dev/stack up`) keeps them"
        ));
    }
    Ok(plan)
}

pub async fn topics_plan(config: &Config) -> anyhow::Result<()> {
    let plan = cluster_plan(config).await?;
    print!("{plan}");
    Ok(())
}

/// `locus bridge drain`: the bridge of `client_id`, draining its session (no HTTP server:
/// a one-shot command, like `cache rebuild`).
pub async fn bridge_drain(config: &Config, client_id: String, idle_ms: u64) -> anyhow::Result<()> {
    let mut cfg = config.bridge.clone();
    cfg.client_id = client_id;
    let (bridge, _health) = locus_mqtt::Bridge::build(
        &cfg,
        &config.kafka,
        &config.registry,
        &config.topics.locations,
        &config.topics.dlq,
        std::time::Duration::from_millis(config.http.shutdown_grace_ms),
    )?;
    let acked = bridge
        .drain(std::time::Duration::from_millis(idle_ms))
        .await?;
    println!(
        "drained {acked} messages; the session of {} is ended",
        cfg.client_id
    );
    Ok(())
}

pub fn topics_render(config: &Config, cluster: &str) -> anyhow::Result<()> {
    print!(
        "{}",
        locus_topics::render_strimzi(&topics_file(config)?, cluster)?
    );
    Ok(())
}

pub async fn topics_apply(config: &Config) -> anyhow::Result<()> {
    let plan = cluster_plan(config).await?;
    print!("{plan}");
    if plan.is_empty() {
        return Ok(());
    }
    for line in locus_topics::apply(&config.kafka, &plan).await? {
        println!("applied: {line}");
    }
    Ok(())
}

pub async fn schemas_register(config: &Config) -> anyhow::Result<()> {
    let codec = locus_schemas::Codec::new(&config.registry, &config.topics.locations)?;
    let id = codec
        .register()
        .await
        .with_context(|| format!("registering location.avsc at {}", config.registry.url))?;
    println!(
        "location.avsc is schema id {id} under subject {}",
        locus_schemas::value_subject(&config.topics.locations)
    );
    Ok(())
}

pub async fn history_migrate(config: &Config) -> anyhow::Result<()> {
    let session = locus_scylla::connect(&config.scylla).await?;
    locus_scylla::migrate(&session, &config.scylla, &config.history).await?;
    println!(
        "history schema ready: {}.{}",
        config.scylla.keyspace, config.history.table
    );
    Ok(())
}

pub async fn cache_rebuild(config: &Config) -> anyhow::Result<()> {
    let store = locus_redis::CacheStore::connect(&config.cache).await?;
    let codec = locus_schemas::Codec::new(&config.registry, &config.topics.locations)?;
    let sink = locus_redis::CacheSink::new(store, codec, locus_kafka::DeadLetter::skip());
    let started = std::time::Instant::now();
    let n = locus_redis::rebuild(&config.kafka, &config.topics.locations, &sink, |p| {
        eprintln!(
            "[rebuild] {} / {} records ({:.0}%)",
            p.records,
            p.total,
            100.0 * p.records as f64 / p.total.max(1) as f64
        );
    })
    .await?;
    println!(
        "cache rebuilt from {}: {n} records in {:.1} s",
        config.topics.locations,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `locus push token`: an HS256 dashboard token for development and tests.
pub fn push_token(config: &Config, claims: locus_sse::Claims, ttl_s: u64) -> anyhow::Result<()> {
    let secret = config.push.jwt_hs256_secret.expose();
    if secret.is_empty() {
        anyhow::bail!("push.jwt_hs256_secret is not set: no key to sign with");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = locus_sse::Claims {
        exp: now + ttl_s,
        sub: Some("locus-cli".into()),
        iss: (!config.push.jwt_issuer.is_empty()).then(|| config.push.jwt_issuer.clone()),
        aud: (!config.push.jwt_audience.is_empty()).then(|| config.push.jwt_audience.clone()),
        ..claims
    };
    println!("{}", locus_sse::mint_hs256(secret, &claims)?);
    Ok(())
}
