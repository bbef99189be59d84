//! The write path: a request on the data port becomes a committed outbox row
//! before it is answered. 202 means committed; nothing else acknowledges.

mod body;
mod group_commit;
mod request;
mod routes;

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

pub use group_commit::{CommitError, CommitHealth, GroupCommit};
pub use request::{check_header_limits, split_path};
pub use routes::{HeaderAllowList, Route, RouteTable, route_table};

use crate::config::Config;
use crate::outbox::{Durability, Stored};
use crate::problem::ApiError;
use crate::telemetry::Metrics;

/// Everything a write needs, shared by all requests.
pub struct WritePath {
    commit: GroupCommit,
    max_body_bytes: u64,
    body_timeout: std::time::Duration,
    budget: body::BodyBudget,
    retry_after_s: u64,
    metrics: Arc<Metrics>,
    durability: Arc<Durability>,
    allow_non_durable: bool,
}

impl WritePath {
    pub fn new(
        commit: GroupCommit,
        config: &Config,
        metrics: Arc<Metrics>,
        durability: Arc<Durability>,
    ) -> Self {
        WritePath {
            commit,
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: std::time::Duration::from_millis(config.server.body_read_timeout_ms),
            budget: body::BodyBudget::new(
                config.server.max_body_bytes_in_flight,
                config.ingest.retry_after_s,
            ),
            retry_after_s: config.ingest.retry_after_s,
            metrics,
            durability,
            allow_non_durable: config.database.allow_non_durable,
        }
    }

    /// Stores one write and answers it; records its outcome and latency.
    pub async fn accept(&self, route: &Route, parts: Parts, rest: &str, body: Body) -> Response {
        let started = Instant::now();
        let result = self.store(route, &parts, rest, body).await;
        let outcome = match &result {
            Ok((_, false)) => "accepted",
            Ok((_, true)) => "replayed",
            Err(ApiError::IdempotencyConflict { .. }) => "conflict",
            Err(ApiError::Unavailable { .. }) => "unavailable",
            Err(ApiError::OutcomeUnknown { .. }) => "unknown",
            Err(ApiError::NotDurable { .. }) => "not_durable",
            Err(ApiError::Overloaded { .. }) => "overloaded",
            Err(_) => "rejected",
        };
        let labels = [&*route.name, outcome];
        self.metrics
            .ingest_requests
            .with_label_values(&labels)
            .inc();
        self.metrics
            .ingest_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((id, replayed)) => accepted_response(route, id, replayed),
            Err(e) => e.into_response(),
        }
    }

    async fn store(
        &self,
        route: &Route,
        parts: &Parts,
        rest: &str,
        body: Body,
    ) -> Result<(uuid::Uuid, bool), ApiError> {
        if !self.allow_non_durable
            && let Some(problems) = self.durability.problems()
        {
            return Err(ApiError::NotDurable {
                detail: format!(
                    "the database could lose this write in a crash ({problems}); spool refuses \
                     writes until that is fixed; the write is not stored"
                ),
                retry_after_s: self.retry_after_s,
            });
        }
        // Held until the write is answered: the body is in memory till then.
        let (body, _held) = body::read_body(
            &parts.headers,
            body,
            self.max_body_bytes,
            self.body_timeout,
            &self.budget,
        )
        .await?;
        let message = request::new_message(route, parts, rest, body)?;
        let id = message.id;
        let key = message.idempotency_key.clone();
        match self.commit.submit(message).await {
            Ok(Stored::Accepted) => Ok((id, false)),
            Ok(Stored::Replayed(first)) => Ok((first, true)),
            Ok(Stored::Conflict(first)) => Err(ApiError::IdempotencyConflict {
                key: key.unwrap_or_default(),
                id: first,
            }),
            Ok(Stored::Retry) => unreachable!("the committer resolves retries"),
            Err(e) if e.is_definite() => Err(ApiError::Unavailable {
                detail: format!(
                    "{e}; the write is not stored, retry it (with the same Idempotency-Key)"
                ),
                retry_after_s: self.retry_after_s,
            }),
            Err(e) => Err(ApiError::OutcomeUnknown {
                detail: format!(
                    "{e}: the write may or may not be stored; retry it with the same \
                     Idempotency-Key, which stores it at most once (a retry without one \
                     may store it twice)"
                ),
                retry_after_s: self.retry_after_s,
            }),
        }
    }
}

fn accepted_response(route: &Route, id: uuid::Uuid, replayed: bool) -> Response {
    let body = serde_json::json!({
        "id": id,
        "route": &*route.name,
        "targets": &*route.targets,
    });
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut buf = uuid::Uuid::encode_buffer();
    let id_text = id.hyphenated().encode_lower(&mut buf);
    headers.insert(
        "spool-message-id",
        HeaderValue::from_str(id_text).expect("uuid is ASCII"),
    );
    if replayed {
        headers.insert("spool-idempotent-replay", HeaderValue::from_static("true"));
    }
    response
}
