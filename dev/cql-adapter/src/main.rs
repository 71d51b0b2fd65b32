//! `locus-cql-adapter`: lets the `scylla` Rust driver (CQL protocol v4 only) talk to the local
//! stack's Apache Cassandra 2.1 (protocol v3 only). It sits on the CQL port, forwards every
//! frame, and rewrites the few places where v3 and v4 differ (see `rewrite.rs`).
//!
//! Development tooling for the local stack and CI. Production connects the driver straight to
//! ScyllaDB or Cassandra 4+, which speak v4 themselves.

mod frame;
mod rewrite;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::frame::Frame;
use crate::rewrite::{Outcome, Pending, PreparedPatches};

/// Bytes buffered per direction and socket.
const BUFFER: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "CQL v4 → v3 adapter in front of the local stack's Cassandra 2.1"
)]
struct Args {
    /// Address the driver connects to.
    #[arg(long, env = "LOCUS_CQL_LISTEN", default_value = "127.0.0.1:9042")]
    listen: SocketAddr,
    /// Cassandra's native-protocol address.
    #[arg(long, env = "LOCUS_CQL_UPSTREAM", default_value = "127.0.0.1:19042")]
    upstream: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, upstream = %args.upstream, "CQL adapter serving");
    let prepared: Arc<PreparedPatches> = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, peer) = match accepted {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let upstream = args.upstream;
                let prepared = prepared.clone();
                tokio::spawn(async move {
                    if let Err(error) = proxy(client, upstream, prepared).await {
                        tracing::warn!(%peer, error = format!("{error:#}"), "connection ended with an error");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

async fn proxy(
    client: TcpStream,
    upstream: SocketAddr,
    prepared: Arc<PreparedPatches>,
) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let adapter_ip = client.local_addr()?.ip();
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to Cassandra at {upstream}"))?;
    server.set_nodelay(true)?;
    // Buffered both ways: a read takes in what has arrived (up to BUFFER), and a write goes
    // out once nothing more is ready to go with it (many frames per system call under load).
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let mut client_rd = BufReader::with_capacity(BUFFER, client_rd);
    let mut client_wr = BufWriter::with_capacity(BUFFER, client_wr);
    let mut server_rd = BufReader::with_capacity(BUFFER, server_rd);
    let mut server_wr = BufWriter::with_capacity(BUFFER, server_wr);
    let pending: Arc<Mutex<HashMap<i16, Pending>>> = Arc::default();

    // Frames to the client come from both directions (answers from Cassandra, and errors
    // the adapter gives itself), so one writer task owns the client socket.
    let (to_client, mut to_client_rx) = mpsc::channel::<Frame>(1024);
    let mut writer = tokio::spawn(async move {
        while let Some(f) = to_client_rx.recv().await {
            f.write(&mut client_wr).await?;
            if to_client_rx.is_empty() {
                client_wr.flush().await?;
            }
        }
        client_wr.flush().await?;
        Ok::<_, frame::ProtoError>(())
    });

    let up_pending = pending.clone();
    let up_prepared = prepared.clone();
    let up_to_client = to_client.clone();
    let upward = async move {
        let forwarded = async {
            while let Some(f) = Frame::read(&mut client_rd).await? {
                match rewrite::request(f, &up_prepared)? {
                    Outcome::Forward(f, p) => {
                        if let Some(p) = p {
                            lock(&up_pending).insert(f.stream, p);
                        }
                        f.write(&mut server_wr).await?;
                    }
                    Outcome::Reply(e) => {
                        if up_to_client.send(e).await.is_err() {
                            break;
                        }
                    }
                }
                // Out before the next read could wait for the client.
                if !Frame::is_whole(client_rd.buffer()) {
                    server_wr.flush().await?;
                }
            }
            Ok::<_, frame::ProtoError>(())
        }
        .await;
        // What was forwarded goes out even when the client's stream ends or breaks after it.
        let flushed = server_wr.flush().await;
        forwarded.and(flushed.map_err(Into::into))
    };
    let downward = async move {
        while let Some(f) = Frame::read(&mut server_rd).await? {
            let p = if f.stream >= 0 {
                lock(&pending).remove(&f.stream)
            } else {
                None
            };
            let f = rewrite::response(f, p, &prepared, adapter_ip)?;
            if to_client.send(f).await.is_err() {
                break;
            }
        }
        Ok::<_, frame::ProtoError>(())
    };
    let result = tokio::select! {
        r = upward => r.context("client → Cassandra"),
        r = downward => r.context("Cassandra → client"),
    };
    // Both directions are done and their senders dropped: the writer sends what it holds
    // (answers already received) and ends, unless the client stops reading.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    result
}

fn lock(m: &Mutex<HashMap<i16, Pending>>) -> std::sync::MutexGuard<'_, HashMap<i16, Pending>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
