//! The admin port: liveness, readiness and metrics for anyone who can reach
//! it; `/admin/...` (routes, flow control, dead letters) behind the bearer
//! token once one is set.

mod auth;
mod dead_letters;
mod guard;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use deadpool_postgres::Pool;
use http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::dispatch::{TargetHandle, Wakeups};
use crate::ingest::CommitHealth;
use crate::outbox::{Durability, heartbeat, with_connection};
use crate::problem::ApiError;
use crate::telemetry::Metrics;

/// Shared state of the admin port.
pub struct AdminPort {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// Identifies this spool's heartbeat row.
    pub instance: String,
    /// This spool as a shard owner (`spool_shard.owner`).
    pub owner: String,
    pub check_timeout: Duration,
    /// Required on `/admin` calls when set.
    pub token: Option<String>,
    /// Host names answered besides IP literals and localhost.
    pub hosts: Vec<String>,
    /// Every target, in configuration order.
    pub targets: Vec<AdminTarget>,
    /// To wake the dispatchers of replayed dead letters.
    pub wakeups: Arc<Wakeups>,
    /// The database's durability settings as last read.
    pub durability: Arc<Durability>,
    pub allow_non_durable: bool,
    /// How real writes fared lately.
    pub commit_health: Arc<CommitHealth>,
    /// Whether the write path's checks fail `/readyz`.
    pub ready_requires_outbox: bool,
}

/// One target and its live controls.
pub struct AdminTarget {
    pub route: String,
    pub target: String,
    pub handle: TargetHandle,
}

impl AdminPort {
    /// Runs an admin call's statements, bounded like a readiness check (four
    /// times over: a listing may take longer than a heartbeat).
    async fn on_outbox<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, ApiError> {
        with_connection(&self.pool, self.check_timeout * 4, work)
            .await
            .map_err(|e| ApiError::Unavailable {
                detail: format!("the outbox cannot be reached: {e}"),
                retry_after_s: 1,
            })
    }

    fn find_target(&self, route: &str, target: &str) -> Result<&AdminTarget, ApiError> {
        if !self.targets.iter().any(|t| t.route == route) {
            return Err(ApiError::UnknownRoute(route.to_owned()));
        }
        self.targets
            .iter()
            .find(|t| t.route == route && t.target == target)
            .ok_or_else(|| ApiError::UnknownTarget {
                route: route.to_owned(),
                target: target.to_owned(),
            })
    }
}

pub fn router(state: Arc<AdminPort>) -> Router {
    let target = "/admin/routes/{route}/targets/{target}";
    let admin_api = Router::new()
        .route("/admin/routes", get(routes::list))
        .route(&format!("{target}/rate"), put(routes::set_rate))
        .route(&format!("{target}/pause"), post(routes::pause))
        .route(&format!("{target}/resume"), post(routes::resume))
        .route("/admin/dead-letters", get(dead_letters::list))
        .route("/admin/dead-letters/replay", post(dead_letters::replay))
        .route("/admin/dead-letters/{id}", delete(dead_letters::remove))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin_api)
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::guard,
        ))
        .layer(middleware::from_fn(crate::problem::problem_bodies))
        .with_state(state)
}

async fn unknown_path(request: axum::extract::Request) -> ApiError {
    ApiError::NotFound(format!(
        "the admin port has no {} {}; see GET /admin/routes, /readyz, /metrics",
        request.method(),
        request.uri().path()
    ))
}

/// The process is up and serving: nothing else is checked, so a database
/// outage never gets a healthy spool restarted.
async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({"status": "alive"}))
}

/// How far back a failed batch of real writes fails the write-path check
/// when no batch has committed since.
const RECENT_WRITES: Duration = Duration::from_secs(10);

/// Ready once started. The body lists each check with its value, so an
/// operator sees what is wrong; only the checks that gate readiness fail it
/// (the write path's, with `server.ready_requires_outbox`).
async fn readyz(State(admin): State<Arc<AdminPort>>) -> Response {
    let checks = [write_path_check(&admin).await, durability_check(&admin)];
    let ready = checks
        .iter()
        .all(|check| check["pass"] == true || check["gates_readiness"] == false);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({"ready": ready, "checks": checks}),
    )
}

/// Whether writes commit: a heartbeat committed now (taking, without
/// waiting, the lock writes take), and no batch of real writes failing in
/// the last seconds with none committed since.
async fn write_path_check(admin: &AdminPort) -> serde_json::Value {
    let started = tokio::time::Instant::now();
    let probe = heartbeat(&admin.pool, &admin.instance, admin.check_timeout).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let (pass, value) = match (probe, admin.commit_health.failing(RECENT_WRITES)) {
        (Err(e), _) => (false, e.to_string()),
        (Ok(()), Some((ago, why))) => (
            false,
            format!(
                "writes failed {:.1} s ago and none committed since: {why}",
                ago.as_secs_f64()
            ),
        ),
        (Ok(()), None) => (true, format!("committed in {millis:.1} ms")),
    };
    serde_json::json!({
        "name": "outbox_writable",
        "pass": pass,
        "value": value,
        "gates_readiness": admin.ready_requires_outbox,
    })
}

/// Whether an acknowledged write survives a crash of the database.
fn durability_check(admin: &AdminPort) -> serde_json::Value {
    let (pass, value) = match admin.durability.last() {
        None => (
            false,
            "not read yet: the database has not answered".to_owned(),
        ),
        Some(settings) => {
            let problems = settings.problems();
            if problems.is_empty() {
                (true, settings.summary())
            } else if admin.allow_non_durable {
                (
                    true,
                    format!(
                        "{}; allowed by database.allow_non_durable",
                        problems.join("; ")
                    ),
                )
            } else {
                (
                    false,
                    format!("{}; writes are refused", problems.join("; ")),
                )
            }
        }
    };
    serde_json::json!({
        "name": "outbox_durable",
        "pass": pass,
        "value": value,
        "gates_readiness": admin.ready_requires_outbox,
    })
}

async fn metrics(State(admin): State<Arc<AdminPort>>) -> Response {
    let mut response = admin.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn ok(body: serde_json::Value) -> Response {
    json(StatusCode::OK, body)
}

/// A JSON request body, or a 400 that says what is wrong with it.
fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the JSON body is not valid: {e}")))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
