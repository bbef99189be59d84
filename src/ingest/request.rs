//! Turns an HTTP write into a `NewMessage`: the path split into route and
//! rest, the headers spool gives a meaning to, the allow-listed ones kept,
//! and the body read within its limit.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::routes::Route;
use crate::outbox::NewMessage;
use crate::problem::ApiError;
use crate::upstream;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const ORDERING_KEY: HeaderName = HeaderName::from_static("spool-ordering-key");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest Idempotency-Key or Spool-Ordering-Key accepted.
const MAX_KEY_BYTES: usize = 255;

/// Headers spool sets or reads itself: never stored as request headers.
/// (Hop-by-hop headers are left out too, by `upstream::is_hop_by_hop`.)
static SET_BY_SPOOL: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::HOST,
    IDEMPOTENCY_KEY,
    ORDERING_KEY,
    TRACEPARENT,
    TRACESTATE,
];

/// `/orders/a/b` is route `orders` and rest `/a/b`; `/orders` has rest `/`.
pub fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.find('/') {
        Some(slash) => (&trimmed[..slash], &trimmed[slash..]),
        None => (trimmed, "/"),
    }
}

/// Refuses requests with more header fields or bytes than configured (431).
pub fn check_header_limits(
    headers: &HeaderMap,
    max_headers: usize,
    max_bytes: usize,
) -> Result<(), ApiError> {
    if headers.len() > max_headers {
        return Err(ApiError::HeadersTooLarge(format!(
            "the request has {} header fields; the limit is {max_headers}",
            headers.len()
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if bytes > max_bytes {
        return Err(ApiError::HeadersTooLarge(format!(
            "the request headers take {bytes} bytes; the limit is {max_bytes}"
        )));
    }
    Ok(())
}

/// Reads the body, refusing it from Content-Length before reading, or as
/// soon as a chunked body passes `limit`.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// Builds the message to store from a write's parts and body.
pub fn new_message(
    route: &Route,
    parts: &Parts,
    rest: &str,
    body: Bytes,
) -> Result<NewMessage, ApiError> {
    let headers = &parts.headers;
    let idempotency_key = key_header(headers, &IDEMPOTENCY_KEY)?;
    let ordering_key = key_header(headers, &ORDERING_KEY)?;
    let (traceparent, tracestate) = trace_context(headers);
    let method = method_str(&parts.method);
    let query = parts.uri.query().map(str::to_owned);
    let request_hash = request_hash(method, rest, query.as_deref(), &body);
    Ok(NewMessage {
        id: Uuid::now_v7(),
        route: Arc::clone(&route.name),
        targets: Arc::clone(&route.targets),
        method,
        path: rest.to_owned(),
        query,
        headers_json: stored_headers(route, headers)?,
        body,
        idempotency_key,
        request_hash,
        ordering_key,
        traceparent,
        tracestate,
    })
}

/// The write methods as static strings, so a message holds no allocation for it.
fn method_str(method: &http::Method) -> &'static str {
    match method.as_str() {
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => unreachable!("only configured write methods reach the write path"),
    }
}

fn key_header(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("{name} must be visible ASCII")))?;
    if text.is_empty() || text.len() > MAX_KEY_BYTES {
        return Err(ApiError::BadRequest(format!(
            "{name} must be 1 to {MAX_KEY_BYTES} bytes long"
        )));
    }
    Ok(Some(text.to_owned()))
}

/// W3C Trace Context: kept only when `traceparent` is well formed, and
/// `tracestate` only with it (as the specification says to do).
fn trace_context(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let parent = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v));
    let state = parent
        .and(headers.get(&TRACESTATE))
        .and_then(|v| v.to_str().ok());
    (parent.map(str::to_owned), state.map(str::to_owned))
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

/// The allow-listed headers (content-type always) as a JSON array of
/// [name, value] pairs, in request order.
fn stored_headers(route: &Route, headers: &HeaderMap) -> Result<String, ApiError> {
    let connection = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok());
    let mut kept: Vec<[&str; 2]> = Vec::new();
    for (name, value) in headers {
        if SET_BY_SPOOL.contains(name)
            || upstream::is_hop_by_hop(name.as_str(), connection)
            || !(name == header::CONTENT_TYPE || route.forward_headers.allows(name))
        {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
            ApiError::BadRequest(format!("header {name} has a value that is not UTF-8"))
        })?;
        kept.push([name.as_str(), value]);
    }
    Ok(serde_json::to_string(&kept).expect("strings serialize"))
}

/// What makes two requests "the same" for an Idempotency-Key.
fn request_hash(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        method.as_bytes(),
        path.as_bytes(),
        query.unwrap_or("").as_bytes(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_route_from_rest() {
        assert_eq!(split_path("/orders/a/b"), ("orders", "/a/b"));
        assert_eq!(split_path("/orders"), ("orders", "/"));
        assert_eq!(split_path("/orders/"), ("orders", "/"));
        assert_eq!(split_path("/"), ("", "/"));
    }

    #[test]
    fn traceparent_must_be_well_formed() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
        assert!(!is_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn request_hash_separates_fields() {
        assert_ne!(
            request_hash("POST", "/a", Some("b"), b""),
            request_hash("POST", "/ab", None, b"")
        );
    }
}
