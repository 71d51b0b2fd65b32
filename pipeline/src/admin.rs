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

pub async fn topics_plan(config: &Config) -> anyhow::Result<()> {
    let file = topics_file(config)?;
    let plan =
        locus_topics::plan(&config.kafka, &file, config.topics.max_replication_factor).await?;
    print!("{plan}");
    Ok(())
}

pub async fn topics_apply(config: &Config) -> anyhow::Result<()> {
    let file = topics_file(config)?;
    let plan =
        locus_topics::plan(&config.kafka, &file, config.topics.max_replication_factor).await?;
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
    let sink = locus_redis::CacheSink::new(store, codec, None);
    let started = std::time::Instant::now();
    let n = locus_redis::rebuild(
        &config.kafka,
        &config.topics.locations,
        &sink,
        |done, total| {
            eprintln!(
                "[rebuild] {done} / {total} records ({:.0}%)",
                100.0 * done as f64 / total.max(1) as f64
            );
        },
    )
    .await?;
    println!(
        "cache rebuilt from {}: {n} records in {:.1} s",
        config.topics.locations,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
