//! The process's HTTP server: `/metrics`, `/healthz`, `/readyz`, plus whatever routes the
//! stages add (query APIs, SSE).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use super::metrics::HTTP;
use super::streaming::{self, Opening};

/// What one connection may cost before and while it is served (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a connection may take to send a request head.
    pub header_timeout: Duration,
    /// Most connections still sending their first request head at once.
    pub max_pending_heads: usize,
    /// How long a streaming response may wait for its client to take a write.
    pub stall_timeout: Duration,
}

impl Limits {
    pub fn from_config(http: &crate::config::HttpSection) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            max_pending_heads: http.max_pending_heads.max(1),
            stall_timeout: Duration::from_millis(http.stall_timeout_ms),
        }
    }
}

/// A readiness check: `Ok` when the dependency answers, `Err(why)` when not.
pub type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Named dependency checks, re-run in the background; `/readyz` serves their last results.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::Mutex<Vec<(String, CheckFn)>>>,
    results: Arc<RwLock<BTreeMap<String, Result<(), String>>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    /// Adds a check; the process is ready only when every check passed its last run.
    pub fn add<F, Fut, E>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let check = Arc::new(check);
        let f: CheckFn = Arc::new(move || {
            let check = check.clone();
            Box::pin(async move { check().await.map_err(|e| e.to_string()) })
        });
        if let Ok(mut c) = self.checks.lock() {
            c.push((name.to_string(), f));
        }
    }

    /// Adds a check already boxed (a stage's [`crate::stages::StageParts`]).
    pub fn add_boxed(&self, name: &str, check: CheckFn) {
        if let Ok(mut c) = self.checks.lock() {
            c.push((name.to_string(), check));
        }
    }

    async fn run_once(&self) {
        let checks: Vec<(String, CheckFn)> = match self.checks.lock() {
            Ok(c) => c.clone(),
            Err(_) => return,
        };
        for (name, check) in checks {
            let result = check().await;
            if let Err(error) = &result {
                tracing::debug!(check = name, error, "not ready");
            }
            self.results.write().await.insert(name, result);
        }
    }

    /// Re-runs the checks every `every` until `cancel`.
    pub fn spawn(&self, every: Duration, cancel: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.run_once().await;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    async fn report(&self) -> (bool, serde_json::Value) {
        let results = self.results.read().await;
        let expected = self.checks.lock().map(|c| c.len()).unwrap_or(0);
        let ready = results.len() == expected && results.values().all(Result::is_ok);
        let checks: BTreeMap<&String, String> = results
            .iter()
            .map(|(k, v)| (k, v.as_ref().map_or_else(|e| e.clone(), |_| "ok".into())))
            .collect();
        (ready, json!({ "ready": ready, "checks": checks }))
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(),
    )
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    let (ready, body) = r.report().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// The health and metrics routes, to merge with the stages' own routes.
pub fn base_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Serves `router` on `listen` until `cancel`, then lets open requests finish.
///
/// HTTP/1.1 only, one task per connection. Requests for `streaming_paths` (long-lived
/// event streams) take the lean path of [`super::streaming`], which holds no per-connection
/// buffers while a stream idles; everything else is served by hyper.
/// Binds `listen` (named `key` in the config for the error), before anything is served, so
/// a port that cannot be had stops the process at start-up.
pub async fn bind(listen: SocketAddr, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} ({key}): {e}"))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    streaming_paths: &'static [&'static str],
    limits: Limits,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    if let Ok(listen) = listener.local_addr() {
        tracing::info!(%listen, "HTTP server listening");
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Connections still sending their first request head: bounded in number (here) and in
    // time (the timeout below), before anything about them is known.
    let heads = Arc::new(tokio::sync::Semaphore::new(limits.max_pending_heads));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => {
                let mut stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let Ok(head_slot) = heads.clone().try_acquire_owned() else {
                    HTTP.refused.with_label_values(&["pending_heads"]).inc();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let http = http.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let opening = tokio::time::timeout(
                        limits.header_timeout,
                        streaming::open(&mut stream, streaming_paths),
                    )
                    .await;
                    let prefix = match opening {
                        Ok(Ok(Opening::Stream(req))) => {
                            drop(head_slot);
                            return streaming::respond(stream, router, *req, limits.stall_timeout)
                                .await;
                        }
                        Ok(Ok(Opening::Refused(status))) => {
                            return streaming::refuse(stream, status).await;
                        }
                        Ok(Ok(Opening::Other(prefix))) => prefix,
                        Err(_) => {
                            HTTP.refused.with_label_values(&["head_timeout"]).inc();
                            return;
                        }
                        Ok(Ok(Opening::Closed)) | Ok(Err(_)) => return,
                    };
                    // The slot is held until hyper has read the first request's head and
                    // hands it to the router (or the connection ends).
                    let head_slot = Arc::new(std::sync::Mutex::new(Some(head_slot)));
                    let router = router.layer(axum::middleware::map_request(
                        move |req: axum::extract::Request| {
                            let slot = head_slot.lock().ok().and_then(|mut s| s.take());
                            drop(slot);
                            async move { req }
                        },
                    ));
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let io = hyper_util::rt::TokioIo::new(streaming::Rewind::new(
                        prefix,
                        stream,
                        limits.stall_timeout,
                    ));
                    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open 10 s after shutdown; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until the server closes (Ok(0)) or `wait` passes; true if it closed.
    async fn closed_within(c: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Connections that never finish their head are bounded in number (more are closed at
    /// accept) and in time (then closed, their slots free again).
    #[tokio::test]
    async fn silent_connections_are_bounded_in_number_and_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(800),
            max_pending_heads: 2,
            stall_timeout: Duration::from_secs(5),
        };
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            base_router(Readiness::default()),
            &["/v1/stream"],
            limits,
            cancel.clone(),
        ));
        let before = HTTP.refused.with_label_values(&["pending_heads"]).get();
        let mut silent = vec![];
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // One with a request line for another path but not the rest of its head: it holds a
        // slot until hyper has the whole head, too.
        silent[1]
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut third, Duration::from_millis(300)).await,
            "a third pending head is closed at once"
        );
        assert!(HTTP.refused.with_label_values(&["pending_heads"]).get() > before);
        for c in &mut silent {
            assert!(
                closed_within(c, Duration::from_secs(2)).await,
                "closed after the head timeout"
            );
        }
        // The slots are free again: a real request is served.
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        cancel.cancel();
        let _ = server.await;
    }

    /// A stream that reaches hyper (here: the second request of a kept-alive connection)
    /// gets the stall bound too: its client stops reading and the connection is closed.
    #[tokio::test]
    async fn a_stream_served_by_hyper_is_closed_when_its_client_stops_reading() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endless = || async {
            let chunk = axum::body::Bytes::from(vec![b'x'; 8192]);
            let body = futures::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            axum::body::Body::from_stream(body)
        };
        let router = base_router(Readiness::default()).route("/v1/stream", get(endless));
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            max_pending_heads: 16,
            stall_timeout: Duration::from_millis(800),
        };
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router,
            &["/v1/stream"],
            limits,
            cancel.clone(),
        ));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut c = socket.connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let before = HTTP.stalled.get();
        c.write_all(b"GET /v1/stream HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // Never read again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while HTTP.stalled.get() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stalled response was not given up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cancel.cancel();
        let _ = server.await;
    }
}
