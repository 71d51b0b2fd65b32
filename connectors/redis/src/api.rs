//! Position queries on the shared HTTP server:
//!
//! - `GET /v1/tenants/{t}/users/{u}/position`
//! - `GET /v1/tenants/{t}/positions?bbox=minLon,minLat,maxLon,maxLat&status=&limit=`
//! - `GET /v1/tenants/{t}/nearby?lat=&lon=&radius_m=&limit=` (nearest first, with distance)

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use locus_api::{ApiError, Query};
use serde::Deserialize;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionsQuery {
    bbox: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NearbyQuery {
    lat: Option<f64>,
    lon: Option<f64>,
    radius_m: Option<f64>,
    limit: Option<usize>,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "position query failed");
    ApiError::unavailable("the position cache did not answer; retry", 1)
}

fn store(api: &PositionsApi) -> Result<&CacheStore, ApiError> {
    api.store
        .get()
        .ok_or_else(|| unavailable("not connected yet"))
}

/// `value` if it is finite and in `[min, max]`.
fn within(name: &str, value: Option<f64>, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match value {
        Some(n) if !(n.is_finite() && (min..=max).contains(&n)) => Err(ApiError::bad_request(
            format!("{name} must be a number in [{min}, {max}], got '{n}'"),
        )),
        v => Ok(v),
    }
}

fn limit(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(max.min(100)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!(
            "limit must be a number from 1 to {max}"
        ))),
    }
}

/// `minLon,minLat,maxLon,maxLat`, non-empty and within the world.
fn bbox(v: &str) -> Result<(f64, f64, f64, f64), ApiError> {
    let shape = || {
        ApiError::bad_request(format!(
            "bbox '{v}' must be four numbers: minLon,minLat,maxLon,maxLat"
        ))
    };
    let parts: Vec<f64> = v
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| shape())?;
    let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
        return Err(shape());
    };
    if !(-180.0..=180.0).contains(&min_lon)
        || !(-180.0..=180.0).contains(&max_lon)
        || !(-90.0..=90.0).contains(&min_lat)
        || !(-90.0..=90.0).contains(&max_lat)
        || min_lon >= max_lon
        || min_lat >= max_lat
    {
        return Err(ApiError::bad_request(
            "bbox must have -180 <= minLon < maxLon <= 180 and -90 <= minLat < maxLat <= 90",
        ));
    }
    Ok((min_lon, min_lat, max_lon, max_lat))
}

async fn position(
    State(api): State<Arc<PositionsApi>>,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match store(&api)?.position(&tenant, &user).await {
        Ok(Some(p)) => Ok(axum::Json(p).into_response()),
        Ok(None) => Err(ApiError::not_found(format!(
            "no position for user '{user}' of tenant '{tenant}'"
        ))),
        Err(e) => Err(unavailable(e)),
    }
}

async fn positions(
    State(api): State<Arc<PositionsApi>>,
    Path(tenant): Path<String>,
    Query(q): Query<PositionsQuery>,
) -> Result<Response, ApiError> {
    let bbox =
        bbox(q.bbox.as_deref().ok_or_else(|| {
            ApiError::bad_request("bbox=minLon,minLat,maxLon,maxLat is required")
        })?)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Presence::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("status '{s}' is not online, stale or offline"))
        })?),
    };
    let limit = limit(q.limit, api.config.query_max_results)?;
    let found = store(&api)?
        .in_bbox(&tenant, bbox, status, limit)
        .await
        .map_err(unavailable)?;
    Ok(
        axum::Json(json!({ "tenant": tenant, "count": found.len(), "positions": found }))
            .into_response(),
    )
}

async fn nearby(
    State(api): State<Arc<PositionsApi>>,
    Path(tenant): Path<String>,
    Query(q): Query<NearbyQuery>,
) -> Result<Response, ApiError> {
    let lat = within("lat", q.lat, -90.0, 90.0)?
        .ok_or_else(|| ApiError::bad_request("lat is required"))?;
    let lon = within("lon", q.lon, -180.0, 180.0)?
        .ok_or_else(|| ApiError::bad_request("lon is required"))?;
    let radius =
        within("radius_m", q.radius_m, 0.0, api.config.query_max_radius_m)?.unwrap_or(1000.0);
    if radius <= 0.0 {
        return Err(ApiError::bad_request("radius_m must be > 0"));
    }
    let limit = limit(q.limit, api.config.query_max_results)?;
    let found = store(&api)?
        .nearby(&tenant, lat, lon, radius, limit)
        .await
        .map_err(unavailable)?;
    Ok(
        axum::Json(json!({ "tenant": tenant, "count": found.len(), "positions": found }))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// The routes with no store: a request that passes validation answers 503, so a 400 is
    /// decided before Redis is asked.
    async fn get(uri: &str) -> (StatusCode, String) {
        let app = router(PositionsApi {
            store: Arc::new(OnceLock::new()),
            config: CacheConfig::default(),
        });
        locus_api::get(app, uri).await
    }

    #[tokio::test]
    async fn bad_queries_are_a_400_that_says_why() {
        for (uri, says) in [
            ("/v1/tenants/a/positions", "bbox"),
            ("/v1/tenants/a/positions?bbox=1,2,3", "bbox"),
            (
                "/v1/tenants/a/positions?bbox=0,0,1,1&nope=1",
                "unknown field `nope`",
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
