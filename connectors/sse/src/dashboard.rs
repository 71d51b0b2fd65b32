//! The dashboard: static files built by `make dashboard` (from `connectors/sse/dashboard`),
//! served at `/`, and `GET /dashboard/config.json` with what the page needs from config.

use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::json;
use tower_http::services::ServeDir;

use crate::PushConfig;

pub fn router(cfg: &PushConfig, (online_s, offline_s): (u64, u64)) -> Router {
    let settings = json!({
        "tile_url": cfg.tile_url,
        "tile_attribution": cfg.tile_attribution,
        "online_s": online_s,
        "offline_s": offline_s,
    });
    let dir = std::path::PathBuf::from(&cfg.dashboard_dir);
    let r = Router::new().route(
        "/dashboard/config.json",
        get(move || {
            let s = settings.clone();
            async move { axum::Json(s) }
        }),
    );
    if dir.join("index.html").is_file() {
        r.fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
    } else {
        tracing::warn!(
            dir = %dir.display(),
            "the dashboard is not built (make dashboard); / answers 404"
        );
        let msg = format!(
            "<!doctype html><title>Locus</title><p>The dashboard is not built: run <code>make \
             dashboard</code> (looked in <code>{}</code>, <code>push.dashboard_dir</code>).</p>",
            dir.display()
        );
        r.route(
            "/",
            get(move || {
                let m = msg.clone();
                async move { (StatusCode::NOT_FOUND, Html(m)).into_response() }
            }),
        )
    }
}
