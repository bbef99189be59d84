//! Sending one attempt of a delivery to its target over a keep-alive pool
//! (https through rustls, certificates verified), within the route's
//! timeout. Redirects are not followed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::outbox::{DueDelivery, stored_headers};
use crate::retry::parse_retry_after;
use crate::upstream::{self, BaseUrl, UpstreamClient, error_chain};

/// How much of an error answer's body is kept as `last_error`.
const ERROR_SNIPPET_BYTES: usize = 512;
/// Most of an answer's body read (so the connection can be reused).
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// Headers never forwarded from the stored request, besides hop-by-hop
/// ones: set by the client or by spool itself.
const SET_HERE: &[&str] = &[
    "host",
    "content-length",
    "idempotency-key",
    "spool-attempt",
    "spool-message-id",
    "traceparent",
    "tracestate",
];

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The target answered with a status.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the body, for `last_error` when it is not a 2xx.
        snippet: String,
    },
    /// No answer: connect error, reset, or timeout.
    NoAnswer { error: String },
    /// The stored request cannot be sent (not retryable).
    Invalid { error: String },
}

/// One target's client: base URL, connection pool, timeout.
pub struct Forwarder {
    base: BaseUrl,
    timeout: Duration,
    client: UpstreamClient,
}

impl Forwarder {
    /// `url` was validated at load (http or https, a host, no query).
    pub fn new(url: &str, timeout: Duration, max_idle: usize) -> Self {
        Forwarder {
            base: BaseUrl::parse(url),
            timeout,
            client: upstream::client(max_idle, timeout),
        }
    }

    /// Sends `delivery` once and reads (a bounded part of) the answer.
    /// How long an attempt may take: it starts only while its shard's
    /// lease has at least this long to run.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn send(&self, delivery: &DueDelivery) -> AttemptResult {
        let request = match self.request(delivery) {
            Ok(request) => request,
            Err(error) => return AttemptResult::Invalid { error },
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return AttemptResult::NoAnswer {
                    error: error_chain(&e),
                };
            }
            Err(_) => {
                return AttemptResult::NoAnswer {
                    error: format!("no answer within {} ms", self.timeout.as_millis()),
                };
            }
        };
        // The status is the answer: what follows is read only so that the
        // connection can be reused (and for an error's snippet), at most
        // MAX_DRAIN_BYTES until the deadline. A 2xx whose body trickles past
        // it is still delivered, never sent again.
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let start = drain_start(response.into_body(), deadline).await;
        let snippet = match status {
            200..=299 => String::new(),
            _ => {
                String::from_utf8_lossy(&start[..start.len().min(ERROR_SNIPPET_BYTES)]).into_owned()
            }
        };
        AttemptResult::Answered {
            status,
            retry_after,
            snippet,
        }
    }

    fn request(&self, delivery: &DueDelivery) -> Result<Request<Full<Bytes>>, String> {
        let uri = self
            .base
            .join(&delivery.path, delivery.query.as_deref())
            .map_err(|e| format!("stored path cannot be forwarded: {e}"))?;
        let method = Method::from_bytes(delivery.method.as_bytes())
            .map_err(|e| format!("stored method: {e}"))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(delivery.body.clone()))
            .map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        // Stored headers: a newer spool may have stored ones this one does
        // not know; they are passed on as they are.
        for (name, value) in stored_headers::decode(&delivery.headers_json)? {
            let lower = name.to_ascii_lowercase();
            if SET_HERE.contains(&lower.as_str()) || upstream::is_hop_by_hop(&lower, &[]) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                headers.append(name, value);
            }
        }
        let key = match &delivery.idempotency_key {
            Some(key) => HeaderValue::from_str(key).map_err(|e| e.to_string())?,
            None => hyphenated(delivery.message_id),
        };
        headers.insert("idempotency-key", key);
        headers.insert("spool-message-id", hyphenated(delivery.message_id));
        headers.insert("spool-attempt", HeaderValue::from(delivery.attempt));
        let traceparent = match &delivery.traceparent {
            Some(parent) => HeaderValue::from_str(parent).map_err(|e| e.to_string())?,
            None => new_traceparent(delivery.message_id),
        };
        headers.insert("traceparent", traceparent);
        if let Some(state) = &delivery.tracestate
            && let Ok(value) = HeaderValue::from_str(state)
        {
            headers.insert("tracestate", value);
        }
        Ok(request)
    }
}

/// Reads an answer's body until it ends, MAX_DRAIN_BYTES have come, or
/// the deadline; returns the start of it (up to the snippet's size).
async fn drain_start(mut body: Incoming, deadline: tokio::time::Instant) -> Vec<u8> {
    let mut start = Vec::new();
    let mut read = 0usize;
    while read < MAX_DRAIN_BYTES {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            // The end, a broken body or the deadline: what came is all.
            _ => break,
        };
        if let Ok(data) = frame.into_data() {
            read += data.len();
            let room = ERROR_SNIPPET_BYTES.saturating_sub(start.len());
            start.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    start
}

fn hyphenated(id: uuid::Uuid) -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).expect("uuid is ASCII")
}

/// A trace for a write that came without one: the trace id is the message
/// id (the same on every attempt), the parent id new for each attempt.
fn new_traceparent(message_id: uuid::Uuid) -> HeaderValue {
    let value = format!("00-{}-{:016x}-00", message_id.simple(), fastrand::u64(1..));
    HeaderValue::from_str(&value).expect("hex is ASCII")
}
