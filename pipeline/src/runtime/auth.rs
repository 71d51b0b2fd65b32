//! One auth model for every data route under `/v1/tenants/{tenant}/…` (the track, position,
//! positions and nearby APIs): the same JWT as the live stream, from `Authorization: Bearer …`
//! or, for browsers, an `access_token` query parameter (removed before the route sees the
//! query). No token or an invalid one → 401; a token of another tenant → 403; a token limited
//! to some users (listed, or as groups) may ask only for those users, one by one
//! (`…/users/{user}/…`) → else 403; a token naming groups before they are loaded → 503. The
//! claims go on to the route in the request's extensions.
//! `/healthz`, `/readyz` and `/metrics` are not behind it. The stream checks the same tokens
//! itself (it filters what it sends by the token's users).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use locus_api::ApiError;
use locus_sse::Authenticator;

/// `router` with every request checked against `auth` first.
pub fn require_token(router: Router, auth: Arc<Authenticator>) -> Router {
    // Only the matched routes: other paths (the dashboard, health) fall through untouched.
    router.route_layer(from_fn_with_state(auth, check))
}

async fn check(State(auth): State<Arc<Authenticator>>, mut req: Request, next: Next) -> Response {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let (uri, from_query) = without_access_token(req.uri());
    let Some(token) = from_header.or(from_query) else {
        return ApiError::unauthorized(
            "a token is required: Authorization: Bearer <jwt>, or access_token=<jwt>",
        )
        .into_response();
    };
    let claims = match auth.check(&token) {
        Ok(c) => c,
        Err(m) => return ApiError::unauthorized(m).into_response(),
    };
    let segments: Vec<String> = req.uri().path().split('/').map(percent_decode).collect();
    // ["", "v1", "tenants", tenant, "users", user, …]
    if segments.get(3) != Some(&claims.tenant) {
        return ApiError::forbidden("this token is not for this tenant").into_response();
    }
    let access = match auth.access(&claims) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !access.is_all() {
        let user = match (segments.get(4).map(String::as_str), segments.get(5)) {
            (Some("users"), Some(user)) => Some(user.as_str()),
            _ => None,
        };
        if !user.is_some_and(|u| access.allows(u)) {
            return ApiError::forbidden(
                "this token may see only some users of the tenant: ask for each of them \
                 (/v1/tenants/{tenant}/users/{user}/…)",
            )
            .into_response();
        }
    }
    // The routes that need more than the tenant (changing groups) read the claims.
    req.extensions_mut().insert(claims);
    *req.uri_mut() = uri;
    next.run(req).await
}

/// The URI without its `access_token` parameter, and that parameter's value.
fn without_access_token(uri: &Uri) -> (Uri, Option<String>) {
    let Some(query) = uri.query() else {
        return (uri.clone(), None);
    };
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("access_token=") {
            Some(t) => {
                token = Some(percent_decode(t));
                false
            }
            None => true,
        })
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let uri = Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .unwrap_or_else(|_| uri.clone());
    (uri, token)
}

/// `%XX` escapes decoded (as the routes' own path extraction does); anything malformed is
/// kept as it is, so it can only fail to match.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use locus_schemas::Secret;
    use locus_sse::{Claims, PushConfig, mint_hs256};
    use tower::ServiceExt;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn app() -> Router {
        app_with(locus_sse::groups::Groups::preloaded(
            "groups",
            &[("acme", "north", &["n1"]), ("other", "north", &["x1"])],
        ))
    }

    fn app_with(groups: Arc<locus_sse::groups::Groups>) -> Router {
        let cfg = PushConfig {
            jwt_hs256_secret: Secret::new(SECRET),
            ..PushConfig::default()
        };
        let auth = Arc::new(
            Authenticator::from_config(&cfg)
                .unwrap()
                .with_groups(groups),
        );
        let inner = Router::new()
            .route(
                "/v1/tenants/{tenant}/users/{user}/track",
                get(|req: Request| async move { req.uri().to_string() }),
            )
            .route(
                "/v1/tenants/{tenant}/positions",
                get(|req: Request| async move { req.uri().to_string() }),
            );
        require_token(inner, auth)
    }

    fn token(tenant: &str, users: Option<&[&str]>) -> String {
        token_with(tenant, users, None)
    }

    fn token_with(tenant: &str, users: Option<&[&str]>, groups: Option<&[&str]>) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let list = |l: Option<&[&str]>| l.map(|u| u.iter().map(|s| s.to_string()).collect());
        let claims = Claims {
            tenant: tenant.into(),
            users: list(users),
            groups: list(groups),
            exp,
            ..Default::default()
        };
        mint_hs256(SECRET, &claims).unwrap()
    }

    async fn call(uri: &str, bearer: Option<&str>) -> (StatusCode, String) {
        call_on(app(), uri, bearer).await
    }

    async fn call_on(app: Router, uri: &str, bearer: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(uri);
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn no_token_or_a_bad_one_is_401() {
        let (s, _) = call("/v1/tenants/acme/positions", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call("/v1/tenants/acme/positions", Some("not.a.token")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call("/v1/tenants/acme/positions?access_token=garbage", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn another_tenant_is_403() {
        let t = token("other", None);
        let (s, _) = call("/v1/tenants/acme/positions", Some(&t)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // An escaped tenant name is compared as the route reads it.
        let t = token("a:b", None);
        let (s, _) = call("/v1/tenants/a%3Ab/positions", Some(&t)).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_token_for_some_users_sees_only_them() {
        let t = token("acme", Some(&["u1"]));
        let (s, _) = call("/v1/tenants/acme/users/u1/track", Some(&t)).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call("/v1/tenants/acme/users/u2/track", Some(&t)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = call("/v1/tenants/acme/positions", Some(&t)).await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "a multi-user answer needs a tenant-wide token"
        );
    }

    #[tokio::test]
    async fn a_token_naming_a_group_sees_its_members_once_loaded() {
        let t = token_with("acme", Some(&["u1"]), Some(&["north"]));
        for (user, want) in [
            ("u1", StatusCode::OK),
            ("n1", StatusCode::OK),
            ("x1", StatusCode::FORBIDDEN),
            ("n2", StatusCode::FORBIDDEN),
        ] {
            let (s, _) = call(&format!("/v1/tenants/acme/users/{user}/track"), Some(&t)).await;
            assert_eq!(s, want, "{user}");
        }
        let (s, _) = call("/v1/tenants/acme/positions", Some(&t)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a group is not the whole tenant");
        // Not loaded yet: 503 rather than a guess.
        let loading = app_with(locus_sse::groups::Groups::new("groups"));
        let (s, _) = call_on(loading, "/v1/tenants/acme/users/n1/track", Some(&t)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn the_query_token_is_taken_out_before_the_route_sees_it() {
        let t = token("acme", None);
        let (s, body) = call(
            &format!("/v1/tenants/acme/users/u1/track?from=1&access_token={t}&to=2"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, "/v1/tenants/acme/users/u1/track?from=1&to=2");
    }
}
