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
const SPOOL_CACHE: &str = "spool-cache";
/// RFC 9211.
const CACHE_STATUS: &str = "cache-status";

/// Where a read's answer came from: its `Spool-Cache` value and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Fresh,
    Stale,
    Miss,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fresh => "fresh",
            Source::Stale => "stale",
            Source::Miss => "miss",
        }
    }

    /// The source `mark` recorded on an answer.
    pub fn of(response: &Response) -> Source {
        match response
            .headers()
            .get(SPOOL_CACHE)
            .map(HeaderValue::as_bytes)
        {
            Some(b"fresh") => Source::Fresh,
            Some(b"stale") => Source::Stale,
            _ => Source::Miss,
        }
    }
}

/// Says where an answer came from, in `Spool-Cache` and `Cache-Status`.
fn mark(headers: &mut HeaderMap, source: Source, cache_status: HeaderValue) {
    headers.insert(SPOOL_CACHE, HeaderValue::from_static(source.as_str()));
    headers.append(CACHE_STATUS, cache_status);
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = upstream::connection_listed(headers);
    let doomed: Vec<_> = headers
        .keys()
        .filter(|n| upstream::is_hop_by_hop(n.as_str(), &listed))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The upstream's answer, streamed.
pub fn fresh(mut parts: Parts, body: Body, stored: bool) -> Response {
    let status = if stored {
        "spool; fwd=uri-miss; stored"
    } else {
        "spool; fwd=uri-miss"
    };
    mark(
        &mut parts.headers,
        Source::Fresh,
        HeaderValue::from_static(status),
    );
    Response::from_parts(parts, body)
}

/// A good answer another request fetched just now (single flight).
pub fn fresh_from_kept(kept: &KeptAnswer, head: bool) -> Response {
    let mut response = from_kept(kept, head);
    let collapsed = HeaderValue::from_static("spool; fwd=uri-miss; collapsed");
    mark(response.headers_mut(), Source::Fresh, collapsed);
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
    headers.insert(header::AGE, HeaderValue::from(age));
    mark(
        headers,
        Source::Stale,
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
    let miss = HeaderValue::from_static("spool; fwd=uri-miss");
    mark(response.headers_mut(), Source::Miss, miss);
    response
}
