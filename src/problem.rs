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
    #[error("{0}")]
    CrossSite(String),
    #[error("{0}")]
    MisdirectedRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    RequestTimeout(String),
    /// Too much held at once (connections, body bytes): retry shortly.
    #[error("{detail}")]
    Overloaded { detail: String, retry_after_s: u64 },
    /// The commit's outcome could not be learnt in time: the write may or
    /// may not be stored; only a retry with the same Idempotency-Key is safe.
    #[error("{detail}")]
    OutcomeUnknown { detail: String, retry_after_s: u64 },
    /// The database would not keep an acknowledged write through a crash.
    #[error("{detail}")]
    NotDurable { detail: String, retry_after_s: u64 },
    /// An error from the HTTP framework (an extractor's rejection), given a
    /// problem body by `problem_bodies`.
    #[error("{detail}")]
    Other { status: StatusCode, detail: String },
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
            ApiError::CrossSite(_) => StatusCode::FORBIDDEN,
            ApiError::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. }
            | ApiError::OutcomeUnknown { .. }
            | ApiError::NotDurable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Other { status, .. } => *status,
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
            ApiError::CrossSite(_) => "cross-site-request",
            ApiError::MisdirectedRequest(_) => "misdirected-request",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::NotImplemented(_) => "not-implemented",
            ApiError::RequestTimeout(_) => "request-timeout",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::OutcomeUnknown { .. } => "outbox-outcome-unknown",
            ApiError::NotDurable { .. } => "outbox-not-durable",
            ApiError::Other { status, .. } => match status.as_u16() {
                400 => "bad-request",
                404 => "not-found",
                405 => "method-not-allowed",
                413 => "body-too-large",
                415 => "unsupported-media-type",
                422 => "unprocessable",
                _ => "error",
            },
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
            ApiError::Unavailable { retry_after_s, .. }
            | ApiError::Overloaded { retry_after_s, .. }
            | ApiError::OutcomeUnknown { retry_after_s, .. }
            | ApiError::NotDurable { retry_after_s, .. } => {
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

/// Gives every error answer a problem body: the framework's own rejections
/// (a bad path parameter, a method a path does not take) come as plain text
/// or empty, and a client must be able to read every error the same way.
pub async fn problem_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let typed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/"));
    if !(status.is_client_error() || status.is_server_error()) || typed {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let mut answer = ApiError::Other { status, detail }.into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}
