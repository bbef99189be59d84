//! Sending one attempt of a delivery to its target over a keep-alive pool
//! (https through rustls, certificates verified), within the route's
//! timeout. Redirects are not followed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::outbox::ClaimedDelivery;
use crate::retry::parse_retry_after;

/// How much of an error answer's body is kept as `last_error`.
const ERROR_SNIPPET_BYTES: usize = 512;
/// Most of an answer's body read (so the connection can be reused).
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// Headers never forwarded from the stored request (hop-by-hop, or set by
/// spool itself).
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
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
    scheme: String,
    authority: String,
    /// The target URL's path, without a trailing slash: `/api` in
    /// `http://host/api`, empty in `http://host`.
    base_path: String,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Forwarder {
    /// `url` was validated at load (http or https, a host, no query).
    pub fn new(url: &str, timeout: Duration, max_idle: usize) -> Self {
        let uri: Uri = url.parse().expect("target url validated at load");
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap_or_else(|_| hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(tls);
        Forwarder {
            scheme: uri.scheme_str().unwrap_or("http").to_owned(),
            authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            timeout,
            client,
        }
    }

    /// Sends `delivery` once and reads (a bounded part of) the answer.
    pub async fn send(&self, delivery: &ClaimedDelivery) -> AttemptResult {
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

    fn request(&self, delivery: &ClaimedDelivery) -> Result<Request<Full<Bytes>>, String> {
        let mut path_and_query = format!("{}{}", self.base_path, delivery.path);
        if let Some(query) = &delivery.query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        let uri = Uri::builder()
            .scheme(self.scheme.as_str())
            .authority(self.authority.as_str())
            .path_and_query(path_and_query)
            .build()
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
            if NOT_FORWARDED.contains(&name.to_ascii_lowercase().as_str()) {
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
        headers.insert("spool-attempt", HeaderValue::from(delivery.attempts));
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

/// "error: cause: cause", so that "connection refused" is not hidden
/// behind hyper's "client error (Connect)".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
