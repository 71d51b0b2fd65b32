//! `GET /v1/tenants/{tenant}/replay?from=&to=&speed=&users=&bbox=&lateness=`: a window of one
//! tenant's fixes as Server-Sent Events, in event-time order, at `speed` × real time (the
//! dashboard's playback). The same tokens and tenant scoping as every data route (the
//! pipeline puts the auth layer in front). The window is read whole (at most
//! `replay.http_max_fixes`) before the first event, so a bad or too large window is a plain
//! 400/413; at most `replay.max_concurrent` replays run per process (503 beyond). A client
//! that leaves stops its replay: the read or the pacing is dropped with the request.
//!
//! Events: `fix` (the fix as JSON), then `end` (the window's report); `error` if the read
//! failed after the stream began.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use locus_api::{ApiError, Query};
use locus_kafka::KafkaConfig;
use locus_schemas::{Codec, LocationFix};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::time::{parse_duration, parse_time};
use crate::{BBox, Filter, ReplayConfig, ReplayError, Scan, Window};

/// What the route needs.
#[derive(Debug)]
pub struct ReplayApi {
    pub kafka: KafkaConfig,
    pub topic: String,
    pub codec: Arc<Codec>,
    pub config: ReplayConfig,
    /// The bridge's `max_future_ms` (device clock skew) and `max_age_ms` (bound on lateness).
    pub skew_ms: i64,
    pub max_age_ms: i64,
    pub permits: Arc<Semaphore>,
}

impl ReplayApi {
    pub fn new(
        kafka: KafkaConfig,
        topic: String,
        codec: Arc<Codec>,
        config: ReplayConfig,
        skew_ms: i64,
        max_age_ms: i64,
    ) -> ReplayApi {
        let permits = Arc::new(Semaphore::new(config.max_concurrent));
        ReplayApi {
            kafka,
            topic,
            codec,
            config,
            skew_ms,
            max_age_ms,
            permits,
        }
    }
}

pub fn router(api: Arc<ReplayApi>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/replay", get(replay))
        .with_state(api)
}

/// The query; unknown parameters are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    from: String,
    to: String,
    #[serde(default)]
    speed: Option<f64>,
    #[serde(default)]
    users: Option<String>,
    #[serde(default)]
    bbox: Option<String>,
    #[serde(default)]
    lateness: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Most users one replay may name.
const MAX_USERS: usize = 1000;

async fn replay(
    State(api): State<Arc<ReplayApi>>,
    Path(tenant): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let parsed = (|| -> Result<(Window, Filter, f64), ReplayError> {
        let from = parse_time(&q.from, now).map_err(ReplayError::Invalid)?;
        let to = parse_time(&q.to, now).map_err(ReplayError::Invalid)?;
        // Over HTTP the lateness cannot exceed the configured one (it bounds what is read).
        let lateness = match &q.lateness {
            Some(l) => parse_duration(l).map_err(ReplayError::Invalid)?,
            None => api.config.lateness_ms,
        };
        let window = Window::new(from, to, lateness, api.skew_ms, api.config.lateness_ms)?;
        let max_span = api.config.http_max_span_ms;
        let span = to.saturating_sub(from);
        if span > max_span {
            return Err(ReplayError::Invalid(format!(
                "the window is longer than replay.http_max_span_ms ({} h): narrow it",
                max_span / 3_600_000
            )));
        }
        let speed = q.speed.unwrap_or(1.0);
        // The playback may not take longer than the longest window either.
        let min_speed = span as f64 / max_span as f64;
        if !(speed.is_finite() && speed >= min_speed && speed > 0.0 && speed <= 1e6) {
            return Err(ReplayError::Invalid(format!(
                "speed must be in [{min_speed:.3}, 1000000] for this window (a playback takes \
                 at most replay.http_max_span_ms)"
            )));
        }
        let users = match &q.users {
            None => None,
            Some(u) => {
                let set: HashSet<String> = u
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect();
                if set.is_empty() || set.len() > MAX_USERS {
                    return Err(ReplayError::Invalid(format!(
                        "users must name 1 to {MAX_USERS} users"
                    )));
                }
                Some(set)
            }
        };
        let filter = Filter {
            tenant: Some(tenant.clone()),
            users,
            bbox: q.bbox.as_deref().map(BBox::parse).transpose()?,
        };
        Ok((window, filter, speed))
    })();
    let (window, filter, speed) = parsed.map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Ok(permit) = api.permits.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            format!(
                "{} replays are running (replay.max_concurrent); retry later",
                api.config.max_concurrent
            ),
            5,
        ));
    };
    // Dropped with the request if the client leaves while the window is read.
    let cancel = CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let scan = Scan::open(
        &api.kafka,
        api.codec.clone(),
        &api.topic,
        // One consumer a stream: the API serves several at once, each paced for a viewer.
        locus_kafka::Split::ONE,
        window,
        filter,
        std::future::ready(Ok(-1)),
        now,
        cancel.clone(),
    )
    .await;
    let mut scan = match scan {
        Ok(s) => s,
        Err(e @ ReplayError::Invalid(_)) => return Err(ApiError::bad_request(e.to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "HTTP replay cannot read the window");
            return Err(ApiError::unavailable(e.to_string(), 5));
        }
    };
    // Played in event time order: sorted once here, not by user first.
    let collected =
        crate::window::collect_with(&mut scan, api.config.http_max_fixes, |_| {}, |k| k.fix);
    let mut fixes = match collected.await {
        Ok(f) => f,
        Err(ReplayError::TooLarge { max }) => {
            return Err(ApiError::too_large(format!(
                "the window holds more than {max} fixes (replay.http_max_fixes): \
                 narrow it by time, users or bbox"
            )));
        }
        Err(e) => return Err(ApiError::unavailable(e.to_string(), 5)),
    };
    fixes.sort_by(|a, b| (a.ts, &a.user_id, a.seq).cmp(&(b.ts, &b.user_id, b.seq)));
    // Only what is the tenant's own: records read, filtered out or outside the window count
    // every tenant's traffic, so they stay on the server.
    let r = scan.report();
    let report = json!({
        "window_from": r.window_from,
        "window_to": r.window_to,
        "in_window": r.in_window,
        "duplicates_removed": r.duplicates_removed,
        "latest_lateness_ms": r.latest_lateness_ms,
    });
    let stream = paced(fixes, speed, report, permit);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The fixes at `speed` × their event-time spacing, then `end`. Holds the permit until the
/// stream ends or is dropped.
fn paced(
    fixes: Vec<LocationFix>,
    speed: f64,
    report: serde_json::Value,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let started = Instant::now();
    let t0 = fixes.first().map_or(0, |f| f.ts);
    let state = (fixes.into_iter(), Some(report), permit);
    futures::stream::unfold(state, move |(mut it, mut report, permit)| async move {
        match it.next() {
            Some(f) => {
                let after = crate::copy::pace((f.ts - t0).max(0), speed);
                if let Some(due) = started.checked_add(after) {
                    tokio::time::sleep_until(due.into()).await;
                }
                let data = serde_json::to_string(&f).unwrap_or_default();
                Some((
                    Ok(Event::default().event("fix").data(data)),
                    (it, report, permit),
                ))
            }
            None => {
                let data = report.take()?.to_string();
                Some((
                    Ok(Event::default().event("end").data(data)),
                    (it, None, permit),
                ))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// The route with a Kafka nobody listens on: every request that passes validation would
    /// have to read, so a 400 here is decided before any read.
    async fn get(uri: &str) -> (StatusCode, String) {
        let kafka = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        let codec = Codec::new(&locus_schemas::RegistryConfig::default(), "locations").unwrap();
        let api = ReplayApi::new(
            kafka,
            "locations".into(),
            Arc::new(codec),
            ReplayConfig::default(),
            300_000,
            7 * 86_400_000,
        );
        locus_api::get(router(Arc::new(api)), uri).await
    }

    #[tokio::test]
    async fn bad_queries_are_a_400_that_says_why() {
        let now = now_ms();
        let hour = format!("from={}&to={}", now - 3_600_000, now);
        for (q, says) in [
            ("to=now".to_string(), "from"),
            (format!("{hour}&nope=1"), "unknown field"),
            (format!("from={now}&to={}", now - 1), "must be after"),
            ("from=yesterday&to=now".to_string(), "RFC 3339"),
            (format!("{hour}&speed=0"), "speed"),
            (format!("{hour}&speed=NaN"), "speed"),
            (format!("{hour}&speed=0.0000001"), "speed"),
            (
                format!("from={}&to={now}", now - 8 * 86_400_000),
                "http_max_span_ms",
            ),
            (format!("{hour}&lateness=7d"), "lateness"),
            (format!("{hour}&lateness=-1h"), "duration"),
            (format!("{hour}&bbox=1,2,3"), "bbox"),
            (format!("{hour}&bbox=0,95,1,96"), "bbox"),
            (format!("{hour}&users="), "users"),
        ] {
            let (status, body) = get(&format!("/v1/tenants/acme/replay?{q}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
            assert!(body.contains(says), "{q}: {body}");
            assert!(
                body.starts_with("{\"error\":"),
                "{q}: JSON error, got {body}"
            );
        }
    }
}
