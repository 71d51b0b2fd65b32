//! The conventions every HTTP route of Locus follows, in one place:
//!
//! - [`ApiError`]: every refusal is a status and a JSON body `{"error": "…"}` that says why;
//!   401 carries `WWW-Authenticate: Bearer`, 429 and 503 carry `Retry-After`.
//! - [`Query`]: the query string parsed into a typed struct (declare it with
//!   `#[serde(deny_unknown_fields)]`); a parameter that is unknown or of the wrong type is a
//!   400 naming it.
//!
//! A handler returns `Result<impl IntoResponse, ApiError>` and rejects with `?`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Why a request was not answered: the status, and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_s: Option<u32>,
}

impl ApiError {
    /// Any status (the named constructors below cover the usual ones).
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400: the request itself is wrong; the message says what to change.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no token, or one that is not valid.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: a valid token that does not allow this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 413: the answer would be larger than this server gives at once.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 429: this caller holds its share; retry after `retry_after_s`.
    pub fn too_many(message: impl Into<String>, retry_after_s: u32) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).retry_after(retry_after_s)
    }

    /// 503: a store or Kafka did not answer, or the server is full; retry after
    /// `retry_after_s`.
    pub fn unavailable(message: impl Into<String>, retry_after_s: u32) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(retry_after_s)
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// A query string parsed into `T`; anything `T` does not accept is a 400 that names the
/// parameter (`limit: invalid digit found in string`, `unknown field `nope``).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(Query(q)),
            Err(e) => Err(ApiError::bad_request(format!(
                "bad query string: {}",
                e.body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}

/// For in-process tests of a router's refusals: `GET uri` through `router` (no server), and
/// the status and body it answered.
pub async fn get(router: axum::Router, uri: &str) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .expect("a GET request with an empty body");
    let Ok(response) = router.oneshot(request).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A comma-separated list parameter (`users=a,b`): trimmed, empty items dropped.
pub fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|x| !x.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        limit: Option<u32>,
    }

    async fn handler(Query(q): Query<Q>) -> Result<String, ApiError> {
        match q.limit {
            Some(0) => Err(ApiError::unavailable("try later", 7)),
            l => Ok(format!("{l:?}")),
        }
    }

    async fn get_(uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let app = Router::new().route("/", get(handler));
        let r = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_query_is_typed_and_a_bad_one_names_the_parameter() {
        assert_eq!(get_("/?limit=5").await.2, "Some(5)");
        let (s, _, body) = get_("/?limit=x").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with(r#"{"error":"bad query string: limit: "#),
            "{body}"
        );
        let (s, _, body) = get_("/?nope=1").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown field `nope`"), "{body}");
    }

    #[tokio::test]
    async fn a_retryable_refusal_says_when_and_a_401_asks_for_a_bearer_token() {
        let (s, h, body) = get_("/?limit=0").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h[header::RETRY_AFTER], "7");
        assert_eq!(body, r#"{"error":"try later"}"#);
        let r = ApiError::unauthorized("no token").into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn a_list_drops_empty_items() {
        assert_eq!(list(" a, ,b,").collect::<Vec<_>>(), ["a", "b"]);
    }
}
