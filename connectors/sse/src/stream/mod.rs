//! `GET /v1/stream`: one Server-Sent Events stream per dashboard.
//!
//! Events: `snapshot` (current positions from the cache), `fix` (live), `gap` (a resume that
//! could not replay; a fresh snapshot follows), `expired` (the token ran out; the stream
//! ends), `overflow` (the client fell too far behind; the stream ends and the client
//! resumes). Heartbeat comments every `push.heartbeat_s`.

mod session;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use locus_api::{ApiError, Query};
use locus_kafka::KafkaConfig;
use locus_schemas::Codec;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::hub::{Client, Filter, Hub};
use crate::metrics::M;
use crate::snapshot::Snapshots;
use crate::source::replay;
use crate::{PushConfig, cursor};
use session::{Guard, Opening, Session};

/// Most users a stream opened with a token of groups may follow (its filter is a set of
/// them, copied per stream).
pub const MAX_STREAM_USERS: usize = 100_000;

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

/// A refused stream: counted by `outcome`, answered as every API answers a refusal.
fn reject(outcome: &str, error: ApiError) -> Response {
    M.requests.with_label_values(&[outcome]).inc();
    error.into_response()
}

/// The stream's query string; anything else is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    access_token: Option<String>,
    users: Option<String>,
    bbox: Option<String>,
    tenant: Option<String>,
    last_event_id: Option<String>,
}

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

pub async fn stream(
    State(api): State<Arc<PushApi>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, ApiError>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return reject("bad_request", e),
    };
    // Auth first: nothing about the stream is told to an anonymous caller.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer.or(q.access_token.as_deref()) else {
        return reject(
            "unauthorized",
            ApiError::unauthorized(
                "a token is required (Authorization: Bearer, or ?access_token=)",
            ),
        );
    };
    let claims = match api.auth.check(token.trim()) {
        Ok(c) => c,
        Err(e) => return reject("unauthorized", ApiError::unauthorized(e)),
    };
    if let Some(t) = &q.tenant
        && *t != claims.tenant
    {
        return reject(
            "forbidden",
            ApiError::forbidden(format!(
                "this token is for tenant '{}', not '{t}'",
                claims.tenant
            )),
        );
    }
    let access = match api.auth.access(&claims) {
        Ok(a) => a,
        Err(e) => {
            let outcome = match e.status().as_u16() {
                401 => "unauthorized",
                503 => "not_ready",
                _ => "forbidden",
            };
            return reject(outcome, e);
        }
    };
    let users: Option<HashSet<String>> = match &q.users {
        Some(list) => {
            let asked: HashSet<String> = locus_api::list(list).map(str::to_owned).collect();
            if asked.is_empty() {
                return reject(
                    "bad_request",
                    ApiError::bad_request("users must list at least one user id"),
                );
            }
            if let Some(u) = asked.iter().find(|u| !access.allows(u)) {
                return reject(
                    "forbidden",
                    ApiError::forbidden(format!("this token does not allow user '{u}'")),
                );
            }
            Some(asked)
        }
        None if access.size_bound().is_some_and(|n| n > MAX_STREAM_USERS) => {
            return reject(
                "forbidden",
                ApiError::forbidden(format!(
                    "this token's groups hold more than {MAX_STREAM_USERS} users: name fewer \
                     groups, or pick users with users="
                )),
            );
        }
        None => access.users(),
    };
    let bbox = match q.bbox.as_deref().map(parse_bbox) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return reject("bad_request", ApiError::bad_request(e)),
    };
    if !api.hub.is_ready() {
        return reject(
            "not_ready",
            ApiError::unavailable("the push reader has not reached Kafka yet; retry", 5),
        );
    }
    if api.connections.fetch_add(1, Ordering::Relaxed) >= api.config.max_connections {
        api.connections.fetch_sub(1, Ordering::Relaxed);
        return reject(
            "full",
            ApiError::unavailable(
                format!(
                    "this replica holds its maximum of {} streams; retry",
                    api.config.max_connections
                ),
                5,
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
                "tenant_full",
                ApiError::too_many(
                    format!(
                        "tenant '{}' holds its maximum of {tenant_cap} streams on this replica \
                         (push.max_connections_per_tenant); retry",
                        claims.tenant
                    ),
                    5,
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
        .or(q.last_event_id)
        .filter(|s| !s.trim().is_empty());
    let resume_from = last_id.as_deref().map(cursor::decode);
    let log = api.hub.log();
    // Positions of this log only: another log's say nothing about what was delivered.
    let skip_below = match &resume_from {
        Some(Ok((l, from))) if l.is_none_or(|l| l == log) => Some(from.clone()),
        _ => None,
    };
    let filter = Filter { users, bbox };
    let client = Arc::new(
        Client::new(
            &claims.tenant,
            filter,
            skip_below,
            api.config.user_rate_per_s,
            api.config.max_pending_users,
        )
        .with_log(log),
    );
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
        Some(Ok((Some(log), _))) if log != client.log => {
            M.resumes.inc();
            Opening::Snapshot {
                gap: Some(
                    "Last-Event-ID belongs to another topic or cluster: nothing to resume from"
                        .into(),
                ),
            }
        }
        Some(Ok((_, from))) if from.len() > live_from.len() => {
            M.resumes.inc();
            Opening::Snapshot {
                gap: Some(format!(
                    "Last-Event-ID names {} partitions; the topic has {}",
                    from.len(),
                    live_from.len()
                )),
            }
        }
        Some(Ok((_, mut from))) => {
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
                    // A client that leaves while its resume waits for a reader never gets one.
                    let _permit = tokio::select! {
                        p = api2.resumes.acquire() => match p {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                        _ = tx.closed() => return,
                    };
                    M.resumes_running.inc();
                    let _running = scopeguard(|| M.resumes_running.dec());
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

/// Runs `f` when dropped (however the task ends: done, client gone, or aborted).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Claims;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use locus_schemas::{RegistryConfig, Secret};
    use tower::ServiceExt;

    const SECRET: &str = "in-process-test-secret";

    fn api(ready: bool, max_connections: usize) -> Arc<PushApi> {
        api_with(ready, max_connections, |_| {})
    }

    fn api_with(
        ready: bool,
        max_connections: usize,
        tune: impl FnOnce(&mut PushConfig),
    ) -> Arc<PushApi> {
        api_full(ready, max_connections, tune, None)
    }

    fn api_full(
        ready: bool,
        max_connections: usize,
        tune: impl FnOnce(&mut PushConfig),
        groups: Option<Arc<crate::groups::Groups>>,
    ) -> Arc<PushApi> {
        let mut config = PushConfig {
            jwt_hs256_secret: Secret::new(SECRET),
            max_connections,
            ..PushConfig::default()
        };
        tune(&mut config);
        let hub = Arc::new(Hub::default());
        if ready {
            hub.start_at(&[0, 0]);
        }
        let mut auth = Authenticator::from_config(&config).unwrap();
        if let Some(g) = groups {
            auth = auth.with_groups(g);
        }
        Arc::new(PushApi::new(
            hub,
            auth,
            config,
            KafkaConfig::default(),
            "locations".into(),
            Codec::new(&RegistryConfig::default(), "locations").unwrap(),
            Arc::new(OnceLock::new()),
            CancellationToken::new(),
        ))
    }

    fn token(users: Option<&[&str]>) -> String {
        token_for(users, 600)
    }

    fn token_for(users: Option<&[&str]>, ttl_s: u64) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + ttl_s;
        let claims = Claims {
            tenant: "acme".into(),
            users: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
            exp,
            sub: None,
            ..Default::default()
        };
        crate::mint_hs256(SECRET, &claims).unwrap()
    }

    /// The status and, for a refusal, the body; for an open stream, its first chunk.
    async fn open(api: Arc<PushApi>, query: &str) -> (StatusCode, String) {
        let app = crate::router(api, (60, 600));
        let req = Request::get(format!("{}?{query}", crate::STREAM_PATH))
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let mut body = resp.into_body();
        let chunk = body.frame().await.and_then(|f| f.ok()?.into_data().ok());
        let text = chunk.map(|b| String::from_utf8_lossy(&b).into_owned());
        (status, text.unwrap_or_default())
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_anything_is_opened() {
        let t = token(None);
        let limited = token(Some(&["u1"]));
        for (query, status, says) in [
            (
                "".to_string(),
                StatusCode::UNAUTHORIZED,
                "token is required",
            ),
            (
                "access_token=x.y.z".into(),
                StatusCode::UNAUTHORIZED,
                "bad token",
            ),
            (
                format!("access_token={t}&nope=1"),
                StatusCode::BAD_REQUEST,
                "unknown field `nope`",
            ),
            (
                format!("access_token={t}&tenant=other"),
                StatusCode::FORBIDDEN,
                "not 'other'",
            ),
            (
                format!("access_token={t}&users=,"),
                StatusCode::BAD_REQUEST,
                "at least one user",
            ),
            (
                format!("access_token={limited}&users=u2"),
                StatusCode::FORBIDDEN,
                "'u2'",
            ),
            (
                format!("access_token={t}&bbox=1,2,3"),
                StatusCode::BAD_REQUEST,
                "bbox",
            ),
            (
                format!("access_token={t}&bbox=0,0,1,91"),
                StatusCode::BAD_REQUEST,
                "bbox",
            ),
        ] {
            let (got, body) = open(api(true, 10), &query).await;
            assert_eq!(got, status, "{query}: {body}");
            assert!(body.contains(says), "{query}: {body}");
            assert!(body.starts_with("{\"error\":"), "{query}: {body}");
        }
    }

    #[tokio::test]
    async fn a_token_of_groups_opens_a_stream_of_their_members_only() {
        let big: Vec<String> = (0..=MAX_STREAM_USERS).map(|i| format!("b{i}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        let groups = crate::groups::Groups::preloaded(
            "groups",
            &[
                ("acme", "north", &["n1", "n2"][..]),
                ("other", "north", &["x1"][..]),
                ("acme", "everyone", &big[..]),
            ],
        );
        let api = || api_full(true, 10, |_| {}, Some(groups.clone()));
        let of = |names: &[&str]| {
            let claims = Claims {
                tenant: "acme".into(),
                groups: Some(names.iter().map(|s| s.to_string()).collect()),
                exp: claims_exp(),
                ..Default::default()
            };
            crate::mint_hs256(SECRET, &claims).unwrap()
        };
        let north = of(&["north", "north", "nosuch"]);
        let (status, body) = open(api(), &format!("access_token={north}&users=n1,n2")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for other in ["x1", "u1", "b1"] {
            let (status, body) = open(api(), &format!("access_token={north}&users={other}")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{other}: {body}");
        }
        let (status, body) = open(api(), &format!("access_token={north}")).await;
        assert_eq!(status, StatusCode::OK, "the whole group: {body}");
        // Groups holding more users than one stream may follow: name some of them.
        let everyone = of(&["everyone"]);
        let (status, body) = open(api(), &format!("access_token={everyone}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("more than 100000 users"), "{body}");
        let (status, _) = open(api(), &format!("access_token={everyone}&users=b7")).await;
        assert_eq!(status, StatusCode::OK);
        // Before the groups are loaded: 503, to retry.
        let loading = api_full(true, 10, |_| {}, Some(crate::groups::Groups::new("groups")));
        let (status, body) = open(loading, &format!("access_token={north}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        // A server that does not resolve groups refuses such a token.
        let (status, body) =
            open(api_with(true, 10, |_| {}), &format!("access_token={north}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    fn claims_exp() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    #[tokio::test]
    async fn a_stream_that_cannot_be_served_now_is_a_503_to_retry() {
        let t = token(None);
        let (status, body) = open(api(false, 10), &format!("access_token={t}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("not reached Kafka"), "{body}");
        let (status, body) = open(api(true, 0), &format!("access_token={t}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("maximum of 0 streams"), "{body}");
    }

    #[tokio::test]
    async fn a_valid_stream_opens_with_the_retry_and_a_snapshot_that_says_it_is_incomplete() {
        let t = token(Some(&["u1"]));
        let (status, first) = open(api(true, 10), &format!("access_token={t}&users=u1")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(first.starts_with("retry: "), "{first}");
        assert!(first.contains("event: snapshot\nid: "), "{first}");
        assert!(first.contains(r#""complete":false"#), "{first}");
    }

    #[tokio::test]
    async fn a_busy_stream_still_ends_when_its_token_expires() {
        // No rate cap: every fix is queued for the stream; with a burst of 512 users every 2 ms
        // and a reader taking a chunk every 20 ms, its queue is never empty when it is asked
        // for the next chunk.
        let api = api_with(true, 10, |c| c.user_rate_per_s = 0.0);
        let app = crate::router(api.clone(), (60, 600));
        let t = token_for(None, 2);
        let req = Request::get(format!("{}?access_token={t}", crate::STREAM_PATH))
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let hub = api.hub.clone();
        let feeder = tokio::spawn(async move {
            for o in 0.. {
                hub.route(Arc::new(crate::hub::FixEvent {
                    partition: 0,
                    offset: o,
                    tenant: "acme".into(),
                    user: format!("u{}", o % 512).into(),
                    lat: 1.0,
                    lon: 2.0,
                    received_at: 0,
                    ts: 0,
                    json: Bytes::from_static(b"{}"),
                }));
                if o % 512 == 511 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        let mut body = resp.into_body();
        let mut fixes = 0;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                let text = String::from_utf8_lossy(&chunk);
                fixes += text.matches("event: fix").count();
                if text.contains("event: expired") {
                    return true;
                }
                // A slow reader: fixes pile up between its reads.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        })
        .await;
        feeder.abort();
        assert!(fixes > 0, "the stream was busy");
        assert_eq!(
            ended,
            Ok(true),
            "an expired token ends even a busy stream ({fixes} fixes sent)"
        );
    }
}
