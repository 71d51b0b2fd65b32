//! `GET /v1/stream`: one Server-Sent Events stream per dashboard.
//!
//! Events: `snapshot` (current positions from the cache), `fix` (live), `gap` (a resume that
//! could not replay; a fresh snapshot follows), `expired` (the token ran out; the stream
//! ends), `overflow` (the client fell too far behind; the stream ends and the client
//! resumes). Heartbeat comments every `push.heartbeat_s`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use locus_kafka::KafkaConfig;
use locus_schemas::Codec;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::hub::{Client, Filter, Hub};
use crate::metrics::{M, STAGE};
use crate::snapshot::{SnapshotQuery, Snapshots};
use crate::source::{ReplayItem, replay};
use crate::{PushConfig, cursor};

/// Everything the stream route needs.
#[derive(Debug)]
pub struct PushApi {
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub config: PushConfig,
    pub kafka: KafkaConfig,
    pub topic: String,
    pub codec: Codec,
    /// Where snapshots come from (set once connected; until then snapshots are empty and
    /// say they are incomplete).
    pub snapshots: Arc<OnceLock<Arc<dyn Snapshots>>>,
    /// Cancelled at shutdown: every stream ends.
    pub cancel: CancellationToken,
    pub(crate) connections: AtomicUsize,
    /// Open streams per tenant (only while `max_connections_per_tenant` is set).
    pub(crate) per_tenant: std::sync::Mutex<HashMap<Arc<str>, usize>>,
    pub(crate) resumes: Semaphore,
}

impl PushApi {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Arc<Hub>,
        auth: Authenticator,
        config: PushConfig,
        kafka: KafkaConfig,
        topic: String,
        codec: Codec,
        snapshots: Arc<OnceLock<Arc<dyn Snapshots>>>,
        cancel: CancellationToken,
    ) -> PushApi {
        let resumes = Semaphore::new(config.max_concurrent_resumes);
        PushApi {
            hub,
            auth,
            config,
            kafka,
            topic,
            codec,
            snapshots,
            cancel,
            connections: AtomicUsize::new(0),
            per_tenant: std::sync::Mutex::default(),
            resumes,
        }
    }
}

fn reject(status: StatusCode, outcome: &str, message: impl Into<String>) -> Response {
    M.requests.with_label_values(&[outcome]).inc();
    let mut r = (status, axum::Json(json!({ "error": message.into() }))).into_response();
    match status {
        StatusCode::UNAUTHORIZED => {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        _ => {}
    }
    r
}

const PARAMS: &[&str] = &["access_token", "users", "bbox", "tenant", "last_event_id"];

fn parse_bbox(s: &str) -> Result<[f64; 4], String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bbox must be minLon,minLat,maxLon,maxLat numbers, got '{s}'"))?;
    match v[..] {
        [x0, y0, x1, y1]
            if v.iter().all(|n| n.is_finite())
                && (-180.0..=180.0).contains(&x0)
                && (-180.0..=180.0).contains(&x1)
                && (-90.0..=90.0).contains(&y0)
                && (-90.0..=90.0).contains(&y1)
                && x0 <= x1
                && y0 <= y1 =>
        {
            Ok([x0, y0, x1, y1])
        }
        _ => Err(format!(
            "bbox must be minLon,minLat,maxLon,maxLat within [-180,180] x [-90,90] with min <= max, got '{s}'"
        )),
    }
}

/// Frees the connection slot and the subscription when the stream ends, however it ends.
struct Guard {
    api: Arc<PushApi>,
    client: Arc<Client>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.api.hub.unsubscribe(&self.client);
        self.api.connections.fetch_sub(1, Ordering::Relaxed);
        M.connections.dec();
        if self.api.config.max_connections_per_tenant > 0 {
            let mut t = self
                .api
                .per_tenant
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = t.get_mut(&self.client.tenant) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&self.client.tenant);
                }
            }
        }
    }
}

pub async fn stream(
    State(api): State<Arc<PushApi>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(k) = q.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("unknown parameter '{k}' (allowed: {})", PARAMS.join(", ")),
        );
    }
    // Auth first: nothing about the stream is told to an anonymous caller.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer.or(q.get("access_token").map(String::as_str)) else {
        return reject(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a token is required (Authorization: Bearer, or ?access_token=)",
        );
    };
    let claims = match api.auth.check(token.trim()) {
        Ok(c) => c,
        Err(e) => return reject(StatusCode::UNAUTHORIZED, "unauthorized", e),
    };
    if let Some(t) = q.get("tenant")
        && *t != claims.tenant
    {
        return reject(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token is for tenant '{}', not '{t}'", claims.tenant),
        );
    }
    let allowed = claims.allowed_users();
    let users: Option<HashSet<String>> = match q.get("users") {
        Some(list) => {
            let asked: HashSet<String> = list
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            if asked.is_empty() {
                return reject(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "users must list at least one user id",
                );
            }
            if let Some(a) = &allowed
                && let Some(u) = asked.iter().find(|u| !a.contains(u.as_str()))
            {
                return reject(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("this token does not allow user '{u}'"),
                );
            }
            Some(asked)
        }
        None => allowed.map(|a| a.into_iter().map(String::from).collect()),
    };
    let bbox = match q.get("bbox").map(|b| parse_bbox(b)) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return reject(StatusCode::BAD_REQUEST, "bad_request", e),
    };
    if !api.hub.is_ready() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the push reader has not reached Kafka yet; retry",
        );
    }
    if api.connections.fetch_add(1, Ordering::Relaxed) >= api.config.max_connections {
        api.connections.fetch_sub(1, Ordering::Relaxed);
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "full",
            format!(
                "this replica holds its maximum of {} streams; retry",
                api.config.max_connections
            ),
        );
    }
    let tenant_cap = api.config.max_connections_per_tenant;
    if tenant_cap > 0 {
        let mut t = api.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(Arc::from(claims.tenant.as_str())).or_default();
        if *n >= tenant_cap {
            drop(t);
            api.connections.fetch_sub(1, Ordering::Relaxed);
            return reject(
                StatusCode::TOO_MANY_REQUESTS,
                "tenant_full",
                format!(
                    "tenant '{}' holds its maximum of {tenant_cap} streams on this replica \
                     (push.max_connections_per_tenant); retry",
                    claims.tenant
                ),
            );
        }
        *n += 1;
    }
    M.connections.inc();
    M.requests.with_label_values(&["accepted"]).inc();

    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("last_event_id").cloned())
        .filter(|s| !s.trim().is_empty());
    let resume_from = last_id.as_deref().map(cursor::decode);
    let skip_below = match &resume_from {
        Some(Ok(from)) => Some(from.clone()),
        _ => None,
    };
    let filter = Filter { users, bbox };
    let client = Arc::new(Client::new(
        &claims.tenant,
        filter,
        skip_below,
        api.config.user_rate_per_s,
        api.config.max_pending_users,
    ));
    let live_from = api.hub.subscribe(&client);
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The authenticator refuses an exp past the year 9999; a cap of 100 years keeps the sum sane.
    let until_exp = Duration::from_secs(claims.exp.saturating_sub(now_s));
    let expires_at = Instant::now() + until_exp.min(Duration::from_secs(366 * 86_400 * 100));

    let opening = match resume_from {
        None => Opening::Snapshot { gap: None },
        Some(Err(e)) => {
            M.resumes.inc();
            Opening::Snapshot {
                gap: Some(format!("Last-Event-ID not understood: {e}")),
            }
        }
        Some(Ok(from)) if from.len() > live_from.len() => {
            M.resumes.inc();
            Opening::Snapshot {
                gap: Some(format!(
                    "Last-Event-ID names {} partitions; the topic has {}",
                    from.len(),
                    live_from.len()
                )),
            }
        }
        Some(Ok(mut from)) => {
            M.resumes.inc();
            // Partitions the id does not know (added since) are replayed from the start.
            from.resize(live_from.len(), 0);
            let from: Vec<i64> = from.into_iter().map(|o| o.max(0)).collect();
            if let Some((p, (f, l))) = from
                .iter()
                .zip(&live_from)
                .enumerate()
                .find(|(_, (f, l))| f > l)
            {
                // Positions this log has not reached: the id is from another topic or
                // cluster, or the topic was recreated. Nothing can be replayed from it.
                Opening::Snapshot {
                    gap: Some(format!(
                        "Last-Event-ID is ahead of the log (partition {p}: {f} > {l}); \
                         it belongs to another topic or a recreated one"
                    )),
                }
            } else if from.iter().zip(&live_from).all(|(f, l)| f >= l) {
                Opening::Live
            } else {
                let (tx, rx) = mpsc::channel(512);
                let api2 = api.clone();
                let c2 = client.clone();
                let until = live_from.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = api2.resumes.acquire().await else {
                        return;
                    };
                    replay(
                        api2.kafka.clone(),
                        api2.topic.clone(),
                        &api2.codec,
                        c2,
                        from,
                        until,
                        api2.config.resume_max_records,
                        tx,
                    )
                    .await;
                });
                Opening::Replay(rx)
            }
        }
    };
    let session = Session {
        guard: Guard {
            api: api.clone(),
            client,
        },
        live_from,
        opening: Some(opening),
        heartbeat: Duration::from_secs(api.config.heartbeat_s),
        expires_at,
        last_write: Instant::now(),
        replay: None,
        done: false,
        sent_retry: false,
    };
    let body = Body::from_stream(futures::stream::unfold(session, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

enum Opening {
    Snapshot { gap: Option<String> },
    Replay(mpsc::Receiver<ReplayItem>),
    Live,
}

struct Session {
    guard: Guard,
    /// Positions from which the live queue has every fix.
    live_from: Vec<i64>,
    opening: Option<Opening>,
    heartbeat: Duration,
    expires_at: Instant,
    last_write: Instant,
    replay: Option<mpsc::Receiver<ReplayItem>>,
    done: bool,
    sent_retry: bool,
}

const MAX_EVENTS_PER_WRITE: usize = 256;

fn event(buf: &mut BytesMut, kind: &str, id: Option<&str>, data: &[u8]) {
    buf.put_slice(b"event: ");
    buf.put_slice(kind.as_bytes());
    if let Some(id) = id {
        buf.put_slice(b"\nid: ");
        buf.put_slice(id.as_bytes());
    }
    buf.put_slice(b"\ndata: ");
    buf.put_slice(data);
    buf.put_slice(b"\n\n");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Session {
    fn api(&self) -> &PushApi {
        &self.guard.api
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut buf = BytesMut::new();
        if !self.sent_retry {
            self.sent_retry = true;
            buf.put_slice(format!("retry: {}\n\n", self.api().config.retry_ms).as_bytes());
        }
        match self.opening.take() {
            Some(Opening::Snapshot { gap }) => {
                if let Some(reason) = gap {
                    self.gap(&mut buf, &reason);
                }
                // Boxed: the Redis query is large and runs once; an idle stream should not
                // carry its space for its whole life.
                Box::pin(self.snapshot(&mut buf)).await;
                return Some(self.wrote(buf));
            }
            Some(Opening::Replay(rx)) => self.replay = Some(rx),
            Some(Opening::Live) => {}
            None => {}
        }
        if self.replay.is_some() {
            return Some(Box::pin(self.replay_chunk(buf)).await);
        }
        loop {
            let client = self.guard.client.clone();
            let batch = client.take(&self.guard.api.hub, MAX_EVENTS_PER_WRITE);
            if !batch.events.is_empty() {
                let now = now_ms();
                for (f, id) in &batch.events {
                    event(&mut buf, "fix", Some(id), &f.json);
                    M.latency
                        .observe(((now - f.received_at).max(0) as f64) / 1000.0);
                }
                STAGE.applied(batch.events.len() as u64);
                STAGE.fresh(batch.events.iter().map(|(f, _)| f.ts));
                M.events
                    .with_label_values(&["fix"])
                    .inc_by(batch.events.len() as u64);
                return Some(self.wrote(buf));
            }
            if batch.overflow {
                M.closed.with_label_values(&["overflow"]).inc();
                M.events.with_label_values(&["overflow"]).inc();
                event(
                    &mut buf,
                    "overflow",
                    None,
                    br#"{"error":"this stream fell too far behind; reconnect to resume"}"#,
                );
                self.done = true;
                return Some(buf.freeze());
            }
            if !buf.is_empty() {
                return Some(self.wrote(buf));
            }
            let heartbeat_at = self.last_write + self.heartbeat;
            let due = batch.next_due.map(Instant::from_std);
            tokio::select! {
                _ = client.notify.notified() => {}
                _ = async { if let Some(d) = due { tokio::time::sleep_until(d).await } else { std::future::pending::<()>().await } } => {}
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    return Some(self.wrote(Bytes::from_static(b":\n\n").into()));
                }
                _ = tokio::time::sleep_until(self.expires_at) => {
                    M.closed.with_label_values(&["expired"]).inc();
                    M.events.with_label_values(&["expired"]).inc();
                    event(&mut buf, "expired", None, br#"{"error":"the token expired; reconnect with a fresh one"}"#);
                    self.done = true;
                    return Some(buf.freeze());
                }
                _ = self.guard.api.cancel.cancelled() => {
                    M.closed.with_label_values(&["shutdown"]).inc();
                    return None;
                }
            }
        }
    }

    fn wrote(&mut self, buf: BytesMut) -> Bytes {
        self.last_write = Instant::now();
        buf.freeze()
    }

    fn gap(&mut self, buf: &mut BytesMut, reason: &str) {
        let kind = if reason.contains("resume_max_records") {
            "too_far_behind"
        } else if reason.contains("retention") {
            "retention"
        } else if reason.contains("ahead of the log") {
            "ahead_of_log"
        } else {
            "unknown_id"
        };
        M.gaps.with_label_values(&[kind]).inc();
        M.events.with_label_values(&["gap"]).inc();
        let data = json!({ "reason": reason }).to_string();
        event(buf, "gap", None, data.as_bytes());
    }

    async fn snapshot(&mut self, buf: &mut BytesMut) {
        let api = self.guard.api.clone();
        let c = &self.guard.client;
        let max = api.config.snapshot_max;
        let (positions, complete) = match api.snapshots.get() {
            None => (vec![], false),
            Some(source) => {
                let users: Option<Vec<String>> = c.filter.users.as_ref().map(|users| {
                    let mut u: Vec<String> = users.iter().cloned().collect();
                    u.sort();
                    u.truncate(max);
                    u
                });
                let query = match (&users, c.filter.bbox) {
                    (Some(u), _) => SnapshotQuery::Users(u),
                    (None, Some(b)) => SnapshotQuery::BBox(b),
                    (None, None) => SnapshotQuery::Recent,
                };
                match source.snapshot(&c.tenant, query, max).await {
                    Ok(p) => {
                        let p: Vec<serde_json::Value> = p
                            .into_iter()
                            .filter(|p| {
                                c.filter.bbox.is_none_or(|[x0, y0, x1, y1]| {
                                    p.lon >= x0 && p.lon <= x1 && p.lat >= y0 && p.lat <= y1
                                })
                            })
                            .map(|p| p.json)
                            .collect();
                        let complete = p.len() < max;
                        (p, complete)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot: the position cache did not answer");
                        (vec![], false)
                    }
                }
            }
        };
        let mut id = self.live_from.clone();
        c.raise_to_skip(&mut id);
        let data = json!({ "positions": positions, "complete": complete }).to_string();
        M.events.with_label_values(&["snapshot"]).inc();
        event(buf, "snapshot", Some(&cursor::encode(&id)), data.as_bytes());
    }

    async fn replay_chunk(&mut self, mut buf: BytesMut) -> Bytes {
        let Some(rx) = self.replay.as_mut() else {
            return buf.freeze();
        };
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = tokio::time::sleep_until(self.last_write + self.heartbeat) => {
                buf.put_slice(b":\n\n");
                return self.wrote(buf);
            }
        };
        let mut item = first;
        let mut n = 0;
        loop {
            match item {
                Some(ReplayItem::Fix(f, id)) => {
                    event(&mut buf, "fix", Some(&id), &f.json);
                    // Sent, but not fresh: a resume replays fixes that may be minutes old, and
                    // freshness is the live path's.
                    STAGE.applied(1);
                    n += 1;
                }
                Some(ReplayItem::Done) | None => {
                    self.replay = None;
                    break;
                }
                Some(ReplayItem::Gap(reason)) => {
                    self.replay = None;
                    self.gap(&mut buf, &reason);
                    Box::pin(self.snapshot(&mut buf)).await;
                    break;
                }
                Some(ReplayItem::Failed(e)) => {
                    tracing::warn!(error = e, "resume replay failed; closing the stream");
                    M.closed.with_label_values(&["replay_failed"]).inc();
                    self.replay = None;
                    self.done = true;
                    break;
                }
            }
            if n >= MAX_EVENTS_PER_WRITE {
                break;
            }
            item = match self.replay.as_mut().map(|rx| rx.try_recv()) {
                Some(Ok(i)) => Some(i),
                _ => break,
            };
        }
        M.events.with_label_values(&["replay"]).inc_by(n as u64);
        self.wrote(buf)
    }
}
