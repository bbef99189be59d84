//! The admin port: liveness, readiness and metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deadpool_postgres::Pool;
use http::{HeaderValue, StatusCode, header};

use crate::outbox::heartbeat;
use crate::telemetry::Metrics;

/// Shared state of the admin port.
pub struct AdminPort {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// Identifies this spool's heartbeat row.
    pub instance: String,
    pub check_timeout: Duration,
}

pub fn router(state: Arc<AdminPort>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process is up and serving: nothing else is checked, so a database
/// outage never gets a healthy spool restarted.
async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({"status": "alive"}))
}

/// Ready when the outbox takes a committed write. The body lists each check
/// with its value, so an operator sees why not.
async fn readyz(State(admin): State<Arc<AdminPort>>) -> Response {
    let started = tokio::time::Instant::now();
    let result = heartbeat(&admin.pool, &admin.instance, admin.check_timeout).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let check = match &result {
        Ok(()) => serde_json::json!({
            "name": "outbox_writable", "pass": true, "value": format!("committed in {millis:.1} ms"),
        }),
        Err(e) => serde_json::json!({
            "name": "outbox_writable", "pass": false, "value": e.to_string(),
        }),
    };
    let ready = result.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({"ready": ready, "checks": [check]}),
    )
}

async fn metrics(State(admin): State<Arc<AdminPort>>) -> Response {
    let mut response = admin.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
