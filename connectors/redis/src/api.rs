//! Position queries on the shared HTTP server:
//!
//! - `GET /v1/tenants/{t}/users/{u}/position`
//! - `GET /v1/tenants/{t}/positions?bbox=minLon,minLat,maxLon,maxLat&status=&limit=`
//! - `GET /v1/tenants/{t}/nearby?lat=&lon=&radius_m=&limit=` (nearest first, with distance)

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::{CacheConfig, CacheStore, Presence};

/// What the routes need; the store is set once the stage has connected (503 until then).
#[derive(Debug, Clone)]
pub struct PositionsApi {
    pub store: Arc<OnceLock<CacheStore>>,
    pub config: CacheConfig,
}

pub fn router(api: PositionsApi) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/users/{user}/position", get(position))
        .route("/v1/tenants/{tenant}/positions", get(positions))
        .route("/v1/tenants/{tenant}/nearby", get(nearby))
        .with_state(Arc::new(api))
}

/// Why a request was not answered.
#[derive(Debug)]
enum Reject {
    Bad(String),
    Unavailable,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        match self {
            Reject::Bad(m) => {
                (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": m }))).into_response()
            }
            Reject::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(json!({ "error": "the position cache did not answer; retry" })),
            )
                .into_response(),
        }
    }
}

fn bad(message: impl Into<String>) -> Reject {
    Reject::Bad(message.into())
}

fn unavailable(e: impl std::fmt::Display) -> Reject {
    tracing::warn!(error = %e, "position query failed");
    Reject::Unavailable
}

fn store(api: &PositionsApi) -> Result<&CacheStore, Reject> {
    api.store
        .get()
        .ok_or_else(|| unavailable("not connected yet"))
}

type Params = Query<HashMap<String, String>>;

fn only(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Reject> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(format!(
            "unknown parameter '{k}' (allowed: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn number(
    q: &HashMap<String, String>,
    name: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, Reject> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(n) if n.is_finite() && (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(bad(format!(
                "{name} must be a number in [{min}, {max}], got '{v}'"
            ))),
        },
    }
}

fn limit(q: &HashMap<String, String>, max: usize) -> Result<usize, Reject> {
    match q.get("limit") {
        None => Ok(max.min(100)),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(format!("limit must be a number from 1 to {max}"))),
        },
    }
}

async fn position(
    State(api): State<Arc<PositionsApi>>,
    Path((tenant, user)): Path<(String, String)>,
) -> Response {
    let s = match store(&api) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match s.position(&tenant, &user).await {
        Ok(Some(p)) => axum::Json(p).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({ "error": format!("no position for user '{user}' of tenant '{tenant}'") }),
            ),
        )
            .into_response(),
        Err(e) => unavailable(e).into_response(),
    }
}

async fn positions(
    State(api): State<Arc<PositionsApi>>,
    Path(tenant): Path<String>,
    Query(q): Params,
) -> Response {
    let run = async {
        only(&q, &["bbox", "status", "limit"])?;
        let bbox = q
            .get("bbox")
            .ok_or_else(|| bad("bbox=minLon,minLat,maxLon,maxLat is required"))?;
        let parts: Vec<f64> = bbox
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                bad(format!(
                    "bbox '{bbox}' must be four numbers: minLon,minLat,maxLon,maxLat"
                ))
            })?;
        let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
            return Err(bad(format!(
                "bbox '{bbox}' must be four numbers: minLon,minLat,maxLon,maxLat"
            )));
        };
        if !(-180.0..=180.0).contains(&min_lon)
            || !(-180.0..=180.0).contains(&max_lon)
            || !(-90.0..=90.0).contains(&min_lat)
            || !(-90.0..=90.0).contains(&max_lat)
            || min_lon >= max_lon
            || min_lat >= max_lat
        {
            return Err(bad(
                "bbox must have -180 <= minLon < maxLon <= 180 and -90 <= minLat < maxLat <= 90",
            ));
        }
        let status = match q.get("status") {
            None => None,
            Some(s) => Some(
                Presence::parse(s)
                    .ok_or_else(|| bad(format!("status '{s}' is not online, stale or offline")))?,
            ),
        };
        let limit = limit(&q, api.config.query_max_results)?;
        let s = store(&api)?;
        let found = s
            .in_bbox(&tenant, (min_lon, min_lat, max_lon, max_lat), status, limit)
            .await
            .map_err(unavailable)?;
        Ok(
            axum::Json(json!({ "tenant": tenant, "count": found.len(), "positions": found }))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn nearby(
    State(api): State<Arc<PositionsApi>>,
    Path(tenant): Path<String>,
    Query(q): Params,
) -> Response {
    let run = async {
        only(&q, &["lat", "lon", "radius_m", "limit"])?;
        let lat = number(&q, "lat", -90.0, 90.0)?.ok_or_else(|| bad("lat is required"))?;
        let lon = number(&q, "lon", -180.0, 180.0)?.ok_or_else(|| bad("lon is required"))?;
        let radius = number(&q, "radius_m", 0.0, api.config.query_max_radius_m)?.unwrap_or(1000.0);
        if radius <= 0.0 {
            return Err(bad("radius_m must be > 0"));
        }
        let limit = limit(&q, api.config.query_max_results)?;
        let s = store(&api)?;
        let found = s
            .nearby(&tenant, lat, lon, radius, limit)
            .await
            .map_err(unavailable)?;
        Ok(
            axum::Json(json!({ "tenant": tenant, "count": found.len(), "positions": found }))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// The routes with no store: a request that passes validation answers 503, so a 400 is
    /// decided before Redis is asked.
    async fn get(uri: &str) -> (StatusCode, String) {
        let app = router(PositionsApi {
            store: Arc::new(OnceLock::new()),
            config: CacheConfig::default(),
        });
        let resp = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn bad_queries_are_a_400_that_says_why() {
        for (uri, says) in [
            ("/v1/tenants/a/positions", "bbox"),
            ("/v1/tenants/a/positions?bbox=1,2,3", "bbox"),
            (
                "/v1/tenants/a/positions?bbox=0,0,1,1&nope=1",
                "unknown parameter 'nope'",
            ),
            (
                "/v1/tenants/a/positions?bbox=0,0,1,1&status=asleep",
                "status 'asleep'",
            ),
            ("/v1/tenants/a/positions?bbox=0,0,1,1&limit=0", "limit"),
            ("/v1/tenants/a/positions?bbox=0,0,1,1&limit=x", "limit"),
            ("/v1/tenants/a/nearby?lon=1", "lat is required"),
            ("/v1/tenants/a/nearby?lat=91&lon=1", "lat must be a number"),
            ("/v1/tenants/a/nearby?lat=1&lon=NaN", "lon must be a number"),
            (
                "/v1/tenants/a/nearby?lat=1&lon=1&radius_m=0",
                "radius_m must be > 0",
            ),
            (
                "/v1/tenants/a/nearby?lat=1&lon=1&radius_m=1e12",
                "radius_m must be a number",
            ),
        ] {
            let (status, body) = get(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains(says), "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn a_valid_query_without_a_store_is_a_503() {
        let (status, _) = get("/v1/tenants/a/nearby?lat=1&lon=1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
