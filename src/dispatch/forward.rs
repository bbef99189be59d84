//! Sending one attempt of a delivery to its target over a keep-alive pool
//! (https through rustls, certificates verified), within the route's
//! timeout. Redirects are not followed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};

use crate::outbox::DueDelivery;
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
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => AttemptResult::NoAnswer {
                error: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> AttemptResult {
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(e) => {
                return AttemptResult::NoAnswer {
                    error: error_chain(&e),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = Limited::new(response.into_body(), MAX_DRAIN_BYTES)
            .collect()
            .await;
        let snippet = match (status, body) {
            (200..=299, _) => String::new(),
            (_, Ok(body)) => {
                let bytes = body.to_bytes();
                String::from_utf8_lossy(&bytes[..bytes.len().min(ERROR_SNIPPET_BYTES)]).into_owned()
            }
            (_, Err(_)) => String::new(),
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
        let stored: Vec<(String, String)> = serde_json::from_str(&delivery.headers_json)
            .map_err(|e| format!("stored headers: {e}"))?;
        for (name, value) in &stored {
            let lower = name.to_ascii_lowercase();
            if SET_HERE.contains(&lower.as_str()) || upstream::is_hop_by_hop(&lower, None) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
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
