//! Every error spool answers over HTTP, and the one place each is mapped to a
//! status and an RFC 9457 `application/problem+json` body.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use uuid::Uuid;

/// An error answered to a client. Handlers return it with `?`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route named `{0}` is configured")]
    UnknownRoute(String),
    #[error("route `{route}` has no target named `{target}`")]
    UnknownTarget { route: String, target: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not accepted on route `{route}`; it accepts {allow}")]
    MethodNotAllowed {
        route: String,
        method: String,
        allow: String,
    },
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadPath(String),
    #[error(
        "Idempotency-Key `{key}` was first used for message {id} with a different request; use a new key for a new request"
    )]
    IdempotencyConflict { key: String, id: Uuid },
    #[error("{detail}")]
    Unavailable { detail: String, retry_after_s: u64 },
    #[error("a valid bearer token is required for this call")]
    Unauthorized,
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("{0}")]
    UpstreamTimeout(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownRoute(_) | ApiError::UnknownTarget { .. } | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BadRequest(_) | ApiError::BadPath(_) => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyConflict { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `type` URI's last part; stable, so clients may match on it.
    fn slug(&self) -> &'static str {
        match self {
            ApiError::UnknownRoute(_) => "unknown-route",
            ApiError::UnknownTarget { .. } => "unknown-target",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed { .. } => "method-not-allowed",
            ApiError::BodyTooLarge { .. } => "body-too-large",
            ApiError::HeadersTooLarge(_) => "headers-too-large",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::BadPath(_) => "bad-path",
            ApiError::IdempotencyConflict { .. } => "idempotency-key-reused",
            ApiError::Unavailable { .. } => "outbox-unavailable",
            ApiError::Unauthorized => "unauthorized",
            ApiError::UpstreamUnavailable(_) => "upstream-unavailable",
            ApiError::UpstreamTimeout(_) => "upstream-timeout",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "type": format!("urn:spool:problem:{}", self.slug()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unavailable { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(value) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, value);
                }
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
