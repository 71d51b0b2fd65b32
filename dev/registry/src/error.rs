//! Errors in the Confluent shape: `{"error_code": 40401, "message": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::CONTENT_TYPE;

#[derive(Debug, thiserror::Error)]
#[error("{message} (error code {code})")]
pub struct ApiError {
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn subject_not_found(subject: &str) -> ApiError {
        ApiError::new(40401, format!("Subject '{subject}' not found."))
    }

    pub fn conflict(message: String) -> ApiError {
        ApiError::new(409, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "registry storage failed");
        ApiError::new(50001, format!("Error in the backend data store: {error}"))
    }

    fn status(&self) -> StatusCode {
        match self.code {
            409 => StatusCode::CONFLICT,
            40000..=40099 => StatusCode::BAD_REQUEST,
            40400..=40499 => StatusCode::NOT_FOUND,
            42200..=42299 => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code, "message": self.message });
        (
            self.status(),
            [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
            Json(body),
        )
            .into_response()
    }
}
