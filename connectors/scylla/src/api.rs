//! `GET /v1/tenants/{tenant}/users/{user}/track?from=&to=&limit=&cursor=&format=`
//!
//! Fixes of one user in event-time order across time buckets, a page at a time. `from` and
//! `to` are RFC 3339 or ms since the epoch (`to` exclusive; defaults: the last 24 hours);
//! `format` is `json` (default), `geojson` or `csv`. The next page's cursor is in the body
//! (`next_cursor`) and in the `X-Next-Cursor` header; absent on the last page.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use locus_api::{ApiError, Query};
use locus_schemas::LocationFix;
use serde::Deserialize;
use serde_json::json;

use crate::{Cursor, HistoryConfig, HistoryStore};

/// What the track route needs. The store is set once the stage has connected; until then
/// the route answers 503.
#[derive(Debug, Clone)]
pub struct TrackApi {
    pub store: Arc<std::sync::OnceLock<HistoryStore>>,
    pub config: HistoryConfig,
}

pub fn router(api: TrackApi) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/users/{user}/track", get(track))
        .with_state(Arc::new(api))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    format: Option<String>,
}

/// The times a query may name: years 1 to 9999, so no arithmetic on them can overflow.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// ms since the epoch from RFC 3339 or a number; the error is the message for a 400.
fn parse_time(name: &str, v: &str) -> Result<i64, String> {
    let ms = match v.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                format!(
                    "{name}: '{v}' is neither RFC 3339 (2026-01-31T12:00:00Z) nor ms since the epoch"
                )
            })?,
    };
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return Err(format!(
            "{name}: {ms} is outside the years 1 to 9999 ({MIN_MS} to {MAX_MS} ms)"
        ));
    }
    Ok(ms)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn track(
    State(api): State<Arc<TrackApi>>,
    Path((tenant, user)): Path<(String, String)>,
    Query(q): Query<TrackQuery>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    let to =
        q.to.as_deref()
            .map(|v| parse_time("to", v))
            .transpose()
            .map_err(bad)?;
    let to = to.unwrap_or_else(now_ms);
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()
        .map_err(bad)?;
    let from = from.unwrap_or(to.saturating_sub(86_400_000));
    if from >= to {
        return Err(bad(format!("from ({from}) must be before to ({to})")));
    }
    let max_range = i64::from(api.config.query_max_range_days).saturating_mul(86_400_000);
    if to.checked_sub(from).is_none_or(|range| range > max_range) {
        return Err(bad(format!(
            "the range is longer than {} days; page through shorter ranges",
            api.config.query_max_range_days
        )));
    }
    let limit = match q.limit {
        None => api.config.query_default_limit,
        Some(n) if (1..=api.config.query_max_limit).contains(&n) => n,
        Some(_) => {
            return Err(bad(format!(
                "limit must be a number from 1 to {}",
                api.config.query_max_limit
            )));
        }
    };
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        // A cursor points into the range asked for and skips at most one page of fixes that
        // share a millisecond: anything else is not one this API returned (a time outside the
        // range would walk buckets outside it; a larger skip would lift the limit).
        Some(c) => match Cursor::decode(c) {
            Some(c) if c.skip <= api.config.query_max_limit && (from..to).contains(&c.ts) => {
                Some(c)
            }
            _ => return Err(bad("cursor is not one this API returned".into())),
        },
    };
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "geojson" | "csv") {
        return Err(bad(format!(
            "format '{format}' is not json, geojson or csv"
        )));
    }
    if tenant.is_empty() || user.is_empty() || tenant.len() > 128 || user.len() > 128 {
        return Err(bad("tenant and user must be 1 to 128 bytes".into()));
    }
    let store = api
        .store
        .get()
        .ok_or_else(|| ApiError::unavailable("the history store is not connected yet; retry", 1))?;
    let (fixes, next) = store
        .track(&tenant, &user, from, to, cursor, limit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "track query failed");
            ApiError::unavailable("the history store did not answer; retry", 1)
        })?;
    let next = next.map(|c| c.encode());
    let mut resp = match format {
        "geojson" => geojson(&fixes, next.as_deref()),
        "csv" => csv(&fixes),
        _ => axum::Json(json!({
            "tenant": tenant, "user_id": user, "from": from, "to": to,
            "count": fixes.len(), "fixes": fixes, "next_cursor": next,
        }))
        .into_response(),
    };
    if let Some(n) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-next-cursor", n);
    }
    Ok(resp)
}

fn geojson(fixes: &[LocationFix], next: Option<&str>) -> Response {
    let features: Vec<serde_json::Value> = fixes
        .iter()
        .map(|f| {
            json!({
                "type": "Feature",
                "geometry": { "type": "Point", "coordinates": [f.lon, f.lat] },
                "properties": {
                    "ts": f.ts, "device_id": f.device_id, "seq": f.seq,
                    "accuracy_m": f.accuracy_m, "altitude_m": f.altitude_m, "speed_mps": f.speed_mps,
                    "heading_deg": f.heading_deg, "battery_pct": f.battery_pct,
                    "activity": f.activity, "source": f.source,
                },
            })
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/geo+json")],
        axum::Json(
            json!({ "type": "FeatureCollection", "features": features, "next_cursor": next }),
        ),
    )
        .into_response()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn csv(fixes: &[LocationFix]) -> Response {
    let mut out = String::from(
        "ts,device_id,seq,lat,lon,accuracy_m,altitude_m,speed_mps,heading_deg,battery_pct,activity,source\n",
    );
    for f in fixes {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            f.ts,
            csv_field(&f.device_id),
            f.seq,
            f.lat,
            f.lon,
            opt(&f.accuracy_m),
            opt(&f.altitude_m),
            opt(&f.speed_mps),
            opt(&f.heading_deg),
            opt(&f.battery_pct),
            csv_field(&opt(&f.activity)),
            csv_field(&opt(&f.source)),
        ));
    }
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// The route with no store: every request that passes validation answers 503.
    async fn get(uri: &str) -> (StatusCode, String) {
        let app = router(TrackApi {
            store: Arc::new(std::sync::OnceLock::new()),
            config: HistoryConfig::default(),
        });
        locus_api::get(app, uri).await
    }

    const TRACK: &str = "/v1/tenants/acme/users/u1/track";

    #[tokio::test]
    async fn times_whose_difference_overflows_are_a_clean_400() {
        for q in [
            "from=-4611686018427387904&to=4611686018427387904",
            "from=-9223372036854775808&to=9223372036854775807",
            "to=-9223372036854775808",
            "from=9223372036854775807",
        ] {
            let (status, body) = get(&format!("{TRACK}?{q}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        }
    }

    #[tokio::test]
    async fn a_crafted_cursor_cannot_lift_the_limit() {
        let max = HistoryConfig::default().query_max_limit;
        let (status, body) = get(&format!("{TRACK}?cursor=0.{:x}", max + 1)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = get(&format!("{TRACK}?cursor=0.ffffffffffffffff")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // A cursor time outside [from, to) would walk buckets outside the range.
        let (status, body) =
            get(&format!("{TRACK}?from=0&to=1000&cursor=7fffffffffffffff.0")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // A cursor this API could have returned passes validation (503: no store here).
        let (status, _) = get(&format!("{TRACK}?from=0&to=1000&cursor=1f4.{max:x}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn bad_parameters_are_400_with_a_message() {
        for q in [
            "from=yesterday",
            "from=2&to=1",
            "limit=0",
            "limit=abc",
            "format=xml",
            "cursor=zz",
            "colour=red",
        ] {
            let (status, body) = get(&format!("{TRACK}?{q}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
            assert!(body.contains("\"error\""), "{q}: {body}");
        }
    }
}
