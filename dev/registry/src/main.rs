//! `locus-registry`: a small Schema Registry for the Locus local stack, speaking the
//! Confluent REST API so that real Confluent clients (Rust, Python, Java) work against it.
//! Development and CI only; production uses Confluent Schema Registry, Karapace or Apicurio.

mod api;
mod error;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Confluent-compatible Schema Registry for the Locus local stack"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LOCUS_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Folder of the durable schema log.
    #[arg(long, env = "LOCUS_REGISTRY_DATA", default_value = ".stack/registry")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let store = store::Store::open(&args.data_dir)
        .with_context(|| format!("opening the schema log in {}", args.data_dir.display()))?;
    let app = api::router(Arc::new(Mutex::new(store)));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "schema registry serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        })
        .await?;
    Ok(())
}
