//! The dashboard: static files built by `make dashboard` (from `connectors/sse/dashboard`),
//! served at `/`, and `GET /dashboard/config.json` with what the page needs from config.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::services::ServeDir;

use crate::PushConfig;

/// The page's Content-Security-Policy: its own scripts only (no inline script, no eval), data
/// only from this server, images from here and the tile server, no plugins, no framing.
/// Leaflet positions its elements with inline styles, hence `style-src 'unsafe-inline'`.
pub fn content_security_policy(tile_url: &str) -> String {
    // The tile server's origin: scheme and host of the template (`https://tile.example/{z}/…`).
    let tiles = tile_url
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let host = rest.split('/').next()?;
            let ok = matches!(scheme, "http" | "https")
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '{' | '}'));
            // A host template (`{s}.tile…`, `tile-{s}…`) is allowed as any host of the scheme:
            // CSP wildcards only stand for a whole leftmost label.
            ok.then(|| {
                if host.contains('{') {
                    format!(" {scheme}:")
                } else {
                    format!(" {scheme}://{host}")
                }
            })
        })
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:{tiles}; connect-src 'self'; font-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

pub fn router(cfg: &PushConfig, (online_s, offline_s): (u64, u64)) -> Router {
    let csp = HeaderValue::from_str(&content_security_policy(&cfg.tile_url))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    with_csp(router_inner(cfg, (online_s, offline_s)), csp)
}

fn with_csp(router: Router, csp: HeaderValue) -> Router {
    router.layer(axum::middleware::map_response(move |mut r: Response| {
        let csp = csp.clone();
        async move {
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, csp);
            r.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        }
    }))
}

fn router_inner(cfg: &PushConfig, (online_s, offline_s): (u64, u64)) -> Router {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_tile_server_and_nothing_inline_for_scripts() {
        let p = content_security_policy("https://{s}.tile.example.org/{z}/{x}/{y}.png");
        assert!(p.contains("img-src 'self' data: https:;"), "{p}");
        assert!(p.contains("script-src 'self';"), "{p}");
        let p = content_security_policy("");
        assert!(p.contains("img-src 'self' data:;"), "{p}");
        // A template that is not a plain http(s) URL adds nothing.
        let p = content_security_policy("javascript:alert(1)//x");
        assert!(p.contains("img-src 'self' data:;"), "{p}");
        let p = content_security_policy("https://a.example; script-src *");
        assert!(!p.contains("script-src *"), "{p}");
    }
}
