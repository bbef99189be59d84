//! What the admin port refuses before any handler runs: requests from a
//! web page (a browser on the operator's machine can reach 127.0.0.1),
//! requests for a host name that is not this spool's (DNS rebinding), state
//! changes that are not JSON (a form or `text/plain` POST needs no CORS
//! preflight, so a page could send one), and bodies past 64 KiB.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AdminPort;
use crate::problem::ApiError;
use crate::server::framing;

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;
/// How long an admin request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_SITE: &str = "sec-fetch-site";

pub async fn guard(State(admin): State<Arc<AdminPort>>, request: Request, next: Next) -> Response {
    match check(&admin, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn check(admin: &AdminPort, request: Request) -> Result<Request, ApiError> {
    framing::check(request.version(), request.headers())?;
    let headers = request.headers();
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::CrossSite(
            "the admin port does not answer requests from web pages (an Origin header was sent)"
                .into(),
        ));
    }
    if let Some(site) = headers.get(FETCH_SITE)
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(ApiError::CrossSite(format!(
            "the admin port does not answer requests from web pages (Sec-Fetch-Site: {})",
            String::from_utf8_lossy(site.as_bytes())
        )));
    }
    let host = request.uri().host().map(str::to_owned).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| host_of(h.to_str().ok()?))
    });
    if let Some(host) = host
        && !admin.allows_host(&host)
    {
        return Err(ApiError::MisdirectedRequest(format!(
            "this admin port answers for IP addresses, localhost and server.admin_hosts, not `{host}`"
        )));
    }
    let changes_state = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if changes_state && !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType(
            "admin calls that change state take Content-Type: application/json".into(),
        ));
    }
    bounded_body(request).await
}

/// The host part of a Host header value: `a:1` is `a`, `[::1]:1` is `::1`.
fn host_of(value: &str) -> Option<String> {
    let host = match value.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => value.rsplit_once(':').map_or(value, |(h, _)| h),
    };
    Some(host.to_owned())
}

fn is_json(value: Option<&http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

impl AdminPort {
    /// IP literals and `localhost` always, else the configured names.
    pub(super) fn allows_host(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || bare.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(bare))
    }
}

/// The body read whole (admin bodies are small), refused at once from
/// Content-Length or as soon as a chunked body passes the limit.
async fn bounded_body(request: Request) -> Result<Request, ApiError> {
    let too_large = ApiError::BodyTooLarge {
        limit: MAX_ADMIN_BODY as u64,
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_ADMIN_BODY as u64) {
        return Err(too_large);
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_ADMIN_BODY).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large),
        Ok(Err(e)) => {
            return Err(ApiError::BadRequest(format!(
                "the request body could not be read: {e}"
            )));
        }
        Err(_) => {
            return Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            )));
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_split_from_their_port() {
        assert_eq!(host_of("a.example:4001").as_deref(), Some("a.example"));
        assert_eq!(host_of("[::1]:4001").as_deref(), Some("::1"));
        assert_eq!(host_of("localhost").as_deref(), Some("localhost"));
    }

    #[test]
    fn json_media_types_with_parameters_count() {
        let json = |v: &str| is_json(Some(&http::HeaderValue::from_str(v).unwrap()));
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(!json("text/plain"));
        assert!(!json("application/json-seq"));
        assert!(!is_json(None));
    }
}
