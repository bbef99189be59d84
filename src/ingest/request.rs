//! Turns an HTTP write into a `NewMessage`: the path split into route and
//! rest, the headers spool gives a meaning to, the allow-listed ones kept,
//! and the body read within its limit.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::routes::Route;
use crate::outbox::{NewMessage, stored_headers};
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
        headers_json: stored_headers(route, headers),
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
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // Which one the client meant is unknowable: keeping either could
        // merge two writes, or split one key's order.
        return Err(ApiError::BadRequest(format!(
            "{name} is given more than once; send it once"
        )));
    }
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

/// W3C Trace Context: `traceparent` kept only when there is one and it is
/// well formed (else the forwarder starts a trace), and `tracestate` only
/// with it (as the specification says to do), within its limits.
fn trace_context(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(only), None) => only.to_str().ok().filter(|v| is_traceparent(v)),
        _ => None,
    };
    let state = parent.and_then(|_| trace_state(headers));
    (parent.map(str::to_owned), state)
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version 00 has exactly four fields; a later version may add more.
    let fields_fit = parts.len() == 4 || (parts.len() > 4 && parts[0] != "00");
    fields_fit
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

/// Most list members in a `tracestate` (W3C Trace Context §3.3.1.1).
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// What a `tracestate` is cut down to: the size every vendor must pass on.
const TRACESTATE_MAX_BYTES: usize = 512;
/// Members longer than this are dropped first when cutting (§3.3.1.5).
const TRACESTATE_LONG_MEMBER: usize = 128;

/// Every `tracestate` field as one list, within W3C's limits: more than 32
/// members makes it invalid (dropped); past 512 bytes, long members go
/// first, then members from the end, as the specification suggests.
fn trace_state(headers: &HeaderMap) -> Option<String> {
    let mut members: Vec<&str> = Vec::new();
    for value in headers.get_all(&TRACESTATE) {
        let text = value.to_str().ok()?;
        members.extend(text.split(',').map(str::trim).filter(|m| !m.is_empty()));
    }
    if members.is_empty() || members.len() > TRACESTATE_MAX_MEMBERS {
        return None;
    }
    if !members.iter().all(|m| is_trace_state_member(m)) {
        return None;
    }
    let size = |members: &[&str]| members.iter().map(|m| m.len() + 1).sum::<usize>() - 1;
    if size(&members) > TRACESTATE_MAX_BYTES {
        members.retain(|m| m.len() <= TRACESTATE_LONG_MEMBER);
    }
    while !members.is_empty() && size(&members) > TRACESTATE_MAX_BYTES {
        members.pop();
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// `key=value` with a key of at most 256 characters and a value of at most
/// 256 printable characters other than `,` and `=`.
fn is_trace_state_member(member: &str) -> bool {
    let Some((key, value)) = member.split_once('=') else {
        return false;
    };
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b));
    let value_ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    key_ok && value_ok
}

/// The allow-listed headers (content-type always), in request order.
fn stored_headers(route: &Route, headers: &HeaderMap) -> String {
    let listed = upstream::connection_listed(headers);
    let kept = headers.iter().filter(|(name, _)| {
        !(SET_BY_SPOOL.contains(name)
            || upstream::is_hop_by_hop(name.as_str(), &listed)
            || !(*name == header::CONTENT_TYPE || route.forward_headers.allows(name)))
    });
    stored_headers::encode(kept.map(|(name, value)| (name.as_str(), value.as_bytes())))
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
        assert!(!is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        assert!(is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
    }

    fn trace_headers(parents: &[&str], states: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for p in parents {
            headers.append(&TRACEPARENT, p.parse().unwrap());
        }
        for s in states {
            headers.append(&TRACESTATE, s.parse().unwrap());
        }
        headers
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn two_traceparents_are_no_traceparent() {
        let (parent, state) = trace_context(&trace_headers(&[PARENT, PARENT], &["a=1"]));
        assert_eq!((parent, state), (None, None));
    }

    #[test]
    fn tracestate_fields_are_joined_and_kept_within_limits() {
        let (_, state) = trace_context(&trace_headers(&[PARENT], &["a=1, b=2", "c=3"]));
        assert_eq!(state.as_deref(), Some("a=1,b=2,c=3"));
        let long = format!("long={}", "x".repeat(200));
        let many: Vec<String> = (0..20)
            .map(|i| format!("k{i}={}", "v".repeat(30)))
            .collect();
        let text = format!("{long},{}", many.join(","));
        let (_, state) = trace_context(&trace_headers(&[PARENT], &[&text]));
        let state = state.unwrap();
        assert!(state.len() <= TRACESTATE_MAX_BYTES, "{}", state.len());
        assert!(
            state.starts_with("k0="),
            "the long member goes first: {state}"
        );
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let (_, state) = trace_context(&trace_headers(&[PARENT], &[&too_many.join(",")]));
        assert_eq!(state, None);
        let (_, state) = trace_context(&trace_headers(&[PARENT], &["no-equals"]));
        assert_eq!(state, None);
    }

    #[test]
    fn request_hash_separates_fields() {
        assert_ne!(
            request_hash("POST", "/a", Some("b"), b""),
            request_hash("POST", "/ab", None, b"")
        );
    }
}
