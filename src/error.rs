//! The one error type of the HTTP layer, rendered in Cloudinary's shape:
//! `{"error":{"message":"..."}}` with the status the SDKs understand.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    RateLimited(String),
    /// A delivery (CDN-style) error: the status and the reason in an `X-Cld-Error` header.
    #[error("{1}")]
    Delivery(StatusCode, String),
    #[error("{0}")]
    Internal(String),
    /// An answer the control API's fault rules asked for: status, message, extra headers.
    #[error("{1}")]
    Injected(
        StatusCode,
        String,
        Vec<(axum::http::HeaderName, HeaderValue)>,
    ),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A request's `X-Request-Id`: 32 random hex digits, held without an allocation.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 32]);

impl RequestId {
    pub fn new() -> RequestId {
        let mut random = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut random[..]);
        let mut text = [b'0'; 32];
        // 16 bytes always fit 32 hex digits.
        let _ = hex::encode_to_slice(random, &mut text);
        RequestId(text)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

tokio::task_local! {
    /// The `X-Request-Id` of the request being answered (set by the HTTP layer).
    pub static REQUEST_ID: RequestId;
}

fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.as_str().to_string())
        .unwrap_or_else(|_| "-".into())
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    pub fn missing(param: &str) -> Self {
        ApiError::BadRequest(format!("Missing required parameter - {param}"))
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        ApiError::Internal(err.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited(_) => {
                StatusCode::from_u16(420).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
            }
            ApiError::Delivery(status, _) => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Injected(status, _, _) => *status,
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(format!("I/O error: {e}"))
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::Internal(format!("database error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(msg) = &self {
            // The detail stays in the log; the client gets the id to quote.
            let id = current_request_id();
            tracing::error!(error = %msg, request_id = %id, "internal error");
            crate::control::log::capture_error(msg);
            let body = serde_json::json!({ "error": {
                "message": format!("Internal server error (request id {id})")
            }});
            return (status, Json(body)).into_response();
        }
        if let ApiError::Delivery(_, reason) = &self {
            crate::control::log::capture_error(reason);
            let mut resp = (status, reason.clone()).into_response();
            if let Ok(v) = HeaderValue::from_str(&sanitize_header(reason)) {
                resp.headers_mut().insert("x-cld-error", v);
            }
            return resp;
        }
        let message = self.to_string();
        crate::control::log::capture_error(&message);
        let body = serde_json::json!({ "error": { "message": message } });
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::Injected(_, _, headers) = self {
            for (k, v) in headers {
                resp.headers_mut().insert(k, v);
            }
        }
        resp
    }
}

fn sanitize_header(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}
