//! `locus`: the Locus real-time location pipeline in one binary. Each stage runs alone as
//! its own subcommand (to scale it on its own); admin subcommands manage topics, schemas
//! and config. See README.md and `locus --help`.

mod admin;
mod config;
mod replay;
mod runtime;
mod stages;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

// The bridge allocates and frees per message on tokio's threads while librdkafka's threads
// free the records it took; glibc malloc spent ~20% of the bridge's CPU on that (perf).
// With the crate's `override` feature (pipeline/Cargo.toml) mimalloc also serves the C
// libraries' malloc/free: librdkafka allocates each record and each of its headers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "locus",
    version,
    about = "Locus: real-time location pipeline (MQTT → Kafka → Cassandra, Redis, SSE)"
)]
struct Cli {
    /// Config file (TOML). Without one, defaults apply; LOCUS_<SECTION>__<KEY> variables
    /// override either.
    #[arg(long, short, global = true, env = config::CONFIG_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every stage in one process (bridge, history, cache, push): a laptop, a small site, the demo.
    Run,
    /// MQTT → Kafka bridge: devices' fixes into the locations topic.
    Bridge {
        #[command(subcommand)]
        action: Option<BridgeAction>,
    },
    /// Last-position cache (Kafka → Redis) and the position / nearby query API.
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
    /// History writer (Kafka → Cassandra/Scylla) and the track query API.
    History {
        #[command(subcommand)]
        action: Option<HistoryAction>,
    },
    /// Live push (Kafka → Server-Sent Events) and the dashboard.
    Push {
        #[command(subcommand)]
        action: Option<PushAction>,
    },
    /// Read retained windows of locations by event time: export, re-run a sink, copy to a
    /// topic, move a stopped group (the live groups keep running).
    Replay {
        #[command(subcommand)]
        action: replay::ReplayAction,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Reconcile Kafka topics with topics.yaml.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Manage the Avro schemas in the Schema Registry.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
}

#[derive(Debug, Subcommand)]
enum BridgeAction {
    /// Empty and end the MQTT session of a removed replica (after scaling the bridge down):
    /// connect as its client id, stop new messages, bridge what the session holds, end it.
    Drain {
        /// The client id of the replica that was removed (e.g. locus-bridge-2).
        #[arg(long)]
        client_id: String,
        /// Stop once nothing has arrived for this long, ms.
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// Refill Redis from the topic's retained window (the live group is not disturbed).
    Rebuild,
}

#[derive(Debug, Subcommand)]
enum HistoryAction {
    /// Create the keyspace and the history table if missing, then exit.
    Migrate,
}

#[derive(Debug, Subcommand)]
enum PushAction {
    /// Print a dashboard token signed with push.jwt_hs256_secret (for development and tests;
    /// production tokens come from the identity provider).
    Token {
        /// Tenant the token is for.
        #[arg(long)]
        tenant: String,
        /// Users the holder may see (comma-separated; default, with no --groups: all of the
        /// tenant's).
        #[arg(long, value_delimiter = ',')]
        users: Option<Vec<String>>,
        /// Groups whose members the holder may see (comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
        /// Extra rights, space-separated (`groups:write` manages the tenant's groups).
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime, s.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate the config and print the effective values, secrets redacted.
    Check,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Print what differs between topics.yaml and the cluster.
    Plan,
    /// Create missing topics, add partitions, set configs. Never deletes or shrinks.
    Apply,
    /// Print topics.yaml as resources for a topic operator instead of applying it.
    Render {
        /// `strimzi`: kafka.strimzi.io/v1 KafkaTopics (k8s/base/kafka/kafkatopics.yaml).
        #[arg(long, value_parser = ["strimzi"])]
        format: String,
        /// The Strimzi cluster the topics belong to (label strimzi.io/cluster).
        #[arg(long, default_value = "locus")]
        cluster: String,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasAction {
    /// Register location.avsc under <locations topic>-value (no-op if present).
    Register,
    /// Print location.avsc.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("locus: {e}");
            return ExitCode::from(2);
        }
    };
    runtime::telemetry::init(&config.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Run => stages::run(&config, stages::Stage::ALL).await,
            Command::Bridge { action: None } => {
                stages::run(&config, &[stages::Stage::Bridge]).await
            }
            Command::Bridge {
                action: Some(BridgeAction::Drain { client_id, idle_ms }),
            } => admin::bridge_drain(&config, client_id, idle_ms).await,
            Command::Cache { action: None } => stages::run(&config, &[stages::Stage::Cache]).await,
            Command::Cache {
                action: Some(CacheAction::Rebuild),
            } => admin::cache_rebuild(&config).await,
            Command::History { action: None } => {
                stages::run(&config, &[stages::Stage::History]).await
            }
            Command::History {
                action: Some(HistoryAction::Migrate),
            } => admin::history_migrate(&config).await,
            Command::Push { action: None } => stages::run(&config, &[stages::Stage::Push]).await,
            Command::Push {
                action:
                    Some(PushAction::Token {
                        tenant,
                        users,
                        groups,
                        scope,
                        ttl_s,
                    }),
            } => {
                let claims = locus_sse::Claims {
                    tenant,
                    users,
                    groups,
                    scope,
                    ..Default::default()
                };
                admin::push_token(&config, claims, ttl_s)
            }
            Command::Replay { action } => replay::run(&config, action).await,
            Command::Config {
                action: ConfigAction::Check,
            } => admin::config_check(&config),
            Command::Topics {
                action: TopicsAction::Plan,
            } => admin::topics_plan(&config).await,
            Command::Topics {
                action: TopicsAction::Apply,
            } => admin::topics_apply(&config).await,
            Command::Topics {
                action: TopicsAction::Render { format: _, cluster },
            } => admin::topics_render(&config, &cluster),
            Command::Schemas {
                action: SchemasAction::Register,
            } => admin::schemas_register(&config).await,
            Command::Schemas {
                action: SchemasAction::Show,
            } => {
                print!("{}", locus_schemas::LOCATION_AVSC);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locus: {e:#}");
            ExitCode::FAILURE
        }
    }
}
