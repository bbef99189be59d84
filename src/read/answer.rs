//! Building read answers: fresh (the upstream's), stale (a kept copy, with
//! `Age` and `Cache-Status`), or a 502/504 problem when nothing is kept.

use std::time::SystemTime;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::response::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::flight::Failure;
use super::store::KeptAnswer;
use crate::problem::ApiError;
use crate::upstream;

/// `fresh`, `stale` or `miss`: where an answer came from.
pub const SPOOL_CACHE: &str = "spool-cache";
/// RFC 9211.
const CACHE_STATUS: &str = "cache-status";

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let connection = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let doomed: Vec<_> = headers
        .keys()
        .filter(|n| upstream::is_hop_by_hop(n.as_str(), connection.as_deref()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The upstream's answer, streamed.
pub fn fresh(mut parts: Parts, body: Body, stored: bool) -> Response {
    parts
        .headers
        .insert(SPOOL_CACHE, HeaderValue::from_static("fresh"));
    let status = if stored {
        "spool; fwd=uri-miss; stored"
    } else {
        "spool; fwd=uri-miss"
    };
    parts
        .headers
        .append(CACHE_STATUS, HeaderValue::from_static(status));
    Response::from_parts(parts, body)
}

/// A good answer another request fetched just now (single flight).
pub fn fresh_from_kept(kept: &KeptAnswer, head: bool) -> Response {
    let mut response = from_kept(kept, head);
    let headers = response.headers_mut();
    headers.insert(SPOOL_CACHE, HeaderValue::from_static("fresh"));
    headers.append(
        CACHE_STATUS,
        HeaderValue::from_static("spool; fwd=uri-miss; collapsed"),
    );
    response
}

/// A kept copy served because the upstream failed.
pub fn stale(kept: &KeptAnswer, now: SystemTime, failure: Failure, head: bool) -> Response {
    let mut response = from_kept(kept, head);
    let age = kept.age(now).as_secs();
    let forwarded = match failure {
        Failure::Timeout => "; fwd=uri-miss; detail=\"upstream timeout\"".to_owned(),
        Failure::Unreachable => "; fwd=uri-miss; detail=\"upstream unreachable\"".to_owned(),
        Failure::Status(status) => format!("; fwd=uri-miss; fwd-status={status}"),
        Failure::BreakerOpen => "; detail=\"circuit open\"".to_owned(),
    };
    let cache_status = format!("spool; hit; ttl=-{age}{forwarded}");
    let headers = response.headers_mut();
    headers.insert(SPOOL_CACHE, HeaderValue::from_static("stale"));
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.append(
        CACHE_STATUS,
        HeaderValue::from_str(&cache_status).expect("ASCII"),
    );
    response
}

fn from_kept(kept: &KeptAnswer, head: bool) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(kept.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
    // Room for the headers spool adds, so that adding them does not regrow
    // a copy that is exactly full.
    let headers = response.headers_mut();
    headers.reserve(kept.headers.len() + 4);
    for (name, value) in &kept.headers {
        headers.append(name, value.clone());
    }
    response
}

/// 502 (504 after a timeout) when the upstream failed and nothing is kept.
pub fn problem_bad_gateway(detail: &str, timed_out: bool) -> Response {
    let error = if timed_out {
        ApiError::UpstreamTimeout(detail.to_owned())
    } else {
        ApiError::UpstreamUnavailable(detail.to_owned())
    };
    let mut response = error.into_response();
    let headers = response.headers_mut();
    headers.insert(SPOOL_CACHE, HeaderValue::from_static("miss"));
    headers.insert(
        CACHE_STATUS,
        HeaderValue::from_static("spool; fwd=uri-miss"),
    );
    response
}
