//! The read path: GET and HEAD proxied to the route's read target, with the
//! last good answer kept and served, marked stale, when the upstream fails
//! (connect error, timeout, 5xx, or its breaker open). Anchors: nginx
//! `proxy_cache_use_stale`, RFC 5861 `stale-if-error`, RFC 9211
//! `Cache-Status`.

mod answer;
mod flight;
mod rules;
mod store;
mod tee;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use deadpool_postgres::Pool;
use http::request::Parts;
use http::{HeaderMap, Method, Request, header};
use http_body_util::Full;

pub use flight::Failure;
pub use store::{KeptStore, PersistTask, StoreLimits};

use self::flight::{Flights, Outcome, Role};
use self::store::KeptAnswer;
use crate::breaker::{Breaker, BreakerState};
use crate::config::{Config, RouteConfig};
use crate::telemetry::Metrics;
use crate::upstream::{self, BaseUrl, UpstreamClient};

/// One route's read target.
struct ReadRoute {
    name: Arc<str>,
    base: BaseUrl,
    client: UpstreamClient,
    timeout: Duration,
    max_stale: Duration,
    stale_on_5xx: bool,
    breaker: Option<Arc<Breaker>>,
}

/// Everything reads share.
pub struct ReadPath {
    routes: HashMap<String, ReadRoute>,
    store: KeptStore,
    flights: Arc<Flights>,
    max_entry_bytes: usize,
    metrics: Arc<Metrics>,
}

impl ReadPath {
    /// `breakers` gives each (route, target)'s breaker, when forwarding runs.
    pub fn new(
        config: &Config,
        pool: Option<Pool>,
        breakers: impl Fn(&str, &str) -> Option<Arc<Breaker>>,
        metrics: Arc<Metrics>,
    ) -> (Self, Option<PersistTask>) {
        let routes = config
            .routes
            .iter()
            .map(|route| (route.name.clone(), read_route(route, &breakers)))
            .collect();
        let cache = &config.read_cache;
        let limits = StoreLimits {
            max_bytes: cache.max_bytes,
            max_entries: cache.max_entries,
        };
        let (store, persist) = KeptStore::new(limits, pool.filter(|_| cache.persist));
        let reads = ReadPath {
            routes,
            store,
            flights: Arc::default(),
            max_entry_bytes: cache.max_entry_bytes,
            metrics,
        };
        (reads, persist)
    }

    /// Answers a GET or HEAD on `route` for `rest` (the path after the route).
    pub async fn handle(&self, route: &str, parts: Parts, rest: &str) -> Response {
        let route = &self.routes[route];
        let key = match parts.uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        let response = self.read(route, &parts, rest, &key).await;
        let source = answer::Source::of(&response);
        self.metrics
            .reads
            .with_label_values(&[&*route.name, source.as_str()])
            .inc();
        response
    }

    async fn read(&self, route: &ReadRoute, parts: &Parts, rest: &str, key: &str) -> Response {
        let head = parts.method == Method::HEAD;
        if route
            .breaker
            .as_ref()
            .is_some_and(|b| b.state() == BreakerState::Open)
        {
            // No attempt while the breaker is open, if a kept copy will do.
            if let Some(stale) = self.stale(route, key, parts, Failure::BreakerOpen).await {
                return stale;
            }
        }
        // Answers to credentialed requests may differ per user: never shared.
        let shareable = !head
            && !parts.headers.contains_key(header::AUTHORIZATION)
            && !parts.headers.contains_key(header::COOKIE);
        let mut leader = None;
        if shareable {
            let vary = self.store.vary_names(&route.name, key);
            let flight_key = (
                Arc::clone(&route.name),
                flight_key(key, &vary, &parts.headers),
            );
            match self.flights.join(flight_key) {
                Role::Leader(l) => leader = Some(l),
                Role::Follower(slot) => match flight::follow(slot, route.timeout * 2).await {
                    // The leader's answer is kept now; it fits this request
                    // unless it varies on a header this request sends
                    // differently (unknowable before the first answer).
                    Outcome::Kept => {
                        if let Some(kept) = self.store.get(&route.name, key, &parts.headers) {
                            return answer::fresh_from_kept(&kept, head);
                        }
                    }
                    Outcome::Failed(failure) => {
                        return self.fallback(route, key, parts, failure).await;
                    }
                    Outcome::NotKept => {}
                },
            }
        }
        let finish = |outcome: Outcome| {
            if let Some(leader) = leader {
                leader.finish(outcome);
            }
        };
        let request = match upstream_request(route, parts, rest) {
            Ok(request) => request,
            Err(e) => {
                finish(Outcome::NotKept);
                return answer::problem_bad_gateway(
                    &format!("the request cannot be proxied: {e}"),
                    false,
                );
            }
        };
        let response = match tokio::time::timeout(route.timeout, route.client.request(request))
            .await
        {
            Err(_) => {
                finish(Outcome::Failed(Failure::Timeout));
                return self.fallback(route, key, parts, Failure::Timeout).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(route = %route.name, error = %upstream::error_chain(&e), "read upstream unreachable");
                finish(Outcome::Failed(Failure::Unreachable));
                return self.fallback(route, key, parts, Failure::Unreachable).await;
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_server_error() && route.stale_on_5xx {
            finish(Outcome::Failed(Failure::Status(status.as_u16())));
            return self
                .fallback(route, key, parts, Failure::Status(status.as_u16()))
                .await;
        }
        let (mut head_parts, body) = response.into_parts();
        answer::strip_hop_by_hop(&mut head_parts.headers);
        let declared = head_parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let keep = !head
            && rules::keepable(&parts.headers, status, &head_parts.headers).is_ok()
            && declared.is_none_or(|len| len <= self.max_entry_bytes);
        if !keep {
            finish(Outcome::NotKept);
            return answer::fresh(head_parts, Body::new(body), false);
        }
        let kept_headers = owned_headers(&head_parts.headers);
        let upstream_age = kept_headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let store = self.store_handle(route, key, &parts.headers);
        let on_done: tee::OnDone = Box::new(move |copy: Option<Bytes>| {
            let outcome = match copy {
                Some(body) => {
                    store.keep(KeptAnswer {
                        status: status.as_u16(),
                        headers: kept_headers,
                        body,
                        stored_at: SystemTime::now(),
                        upstream_age,
                    });
                    Outcome::Kept
                }
                None => Outcome::NotKept,
            };
            finish(outcome);
        });
        let body = tee::TeeBody::new(body, self.max_entry_bytes, on_done);
        answer::fresh(head_parts, Body::new(body), true)
    }

    /// Serves the kept copy after `failure`, or a 502/504 problem.
    async fn fallback(
        &self,
        route: &ReadRoute,
        key: &str,
        parts: &Parts,
        failure: Failure,
    ) -> Response {
        if let Some(stale) = self.stale(route, key, parts, failure).await {
            return stale;
        }
        let cause = match failure {
            Failure::Timeout => format!(
                "the upstream did not answer within {} ms",
                route.timeout.as_millis()
            ),
            Failure::Unreachable => "the upstream could not be reached".to_owned(),
            Failure::Status(status) => format!("the upstream answered {status}"),
            Failure::BreakerOpen => "the upstream's circuit breaker is open".to_owned(),
        };
        let detail = format!("{cause}, and no earlier answer for this URL is kept");
        answer::problem_bad_gateway(&detail, failure == Failure::Timeout)
    }

    /// The kept copy for this request if it is not too stale.
    async fn stale(
        &self,
        route: &ReadRoute,
        key: &str,
        parts: &Parts,
        failure: Failure,
    ) -> Option<Response> {
        let kept = match self.store.get(&route.name, key, &parts.headers) {
            Some(kept) => kept,
            None => {
                self.store
                    .load(&route.name, key, &parts.headers, Duration::from_millis(500))
                    .await?
            }
        };
        let now = SystemTime::now();
        let allowed = rules::staleness_allowed(route.max_stale, &kept.headers, &parts.headers);
        (kept.age(now) <= allowed)
            .then(|| answer::stale(&kept, now, failure, parts.method == Method::HEAD))
    }

    fn store_handle(&self, route: &ReadRoute, key: &str, request: &HeaderMap) -> StoreHandle {
        StoreHandle {
            store: self.store.clone(),
            route: Arc::clone(&route.name),
            key: key.to_owned(),
            request: request.clone(),
        }
    }
}

/// What the body tee needs to keep an answer once it has fully arrived.
struct StoreHandle {
    store: KeptStore,
    route: Arc<str>,
    key: String,
    request: HeaderMap,
}

impl StoreHandle {
    fn keep(self, answer: KeptAnswer) {
        self.store
            .keep(&self.route, &self.key, &self.request, answer);
    }
}

fn read_route(
    route: &RouteConfig,
    breakers: &impl Fn(&str, &str) -> Option<Arc<Breaker>>,
) -> ReadRoute {
    let target = route
        .read_target
        .as_deref()
        .and_then(|name| route.targets.iter().find(|t| t.name == name))
        .unwrap_or(&route.targets[0]);
    let timeout = Duration::from_millis(route.timeout_ms);
    ReadRoute {
        name: route.name.as_str().into(),
        base: BaseUrl::parse(&target.url),
        client: upstream::client(64, timeout),
        timeout,
        max_stale: Duration::from_secs(route.read.max_stale_s),
        stale_on_5xx: route.read.stale_on_5xx,
        breaker: breakers(&route.name, &target.name),
    }
}

/// The URL and, once known, the values of the headers its answers vary on.
fn flight_key(key: &str, vary: &[String], request: &HeaderMap) -> String {
    let mut flight = key.to_owned();
    for name in vary {
        flight.push('\n');
        flight.push_str(name);
        flight.push('=');
        for value in request.get_all(name.as_str()) {
            flight.push_str(value.to_str().unwrap_or(""));
        }
    }
    flight
}

/// The upstream request: same method, the path after the route joined to
/// the target's URL, end-to-end headers only.
fn upstream_request(
    route: &ReadRoute,
    parts: &Parts,
    rest: &str,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let uri = route.base.join(rest, parts.uri.query())?;
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(Full::new(Bytes::new()))?;
    let listed = upstream::connection_listed(&parts.headers);
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || upstream::is_hop_by_hop(name.as_str(), &listed)
        {
            continue;
        }
        headers.append(name, value.clone());
    }
    Ok(request)
}

/// A copy of `headers` that owns its values. hyper parses a header value as
/// a slice of the connection's read buffer, so a kept answer holding the
/// values as they came would keep that whole buffer (8 KiB and more) alive
/// for as long as `max_stale_s`: four times `read_cache.max_bytes` was
/// measured before this copy.
fn owned_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut owned = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = http::HeaderValue::from_bytes(value.as_bytes()).expect("was a valid value");
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    owned
}
