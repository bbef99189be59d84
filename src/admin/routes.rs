//! `/admin/routes`: each target's backlog, in-flight attempts, breaker and
//! flow control, and the run-time changes to its rate and pause.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{AdminPort, AdminTarget, json_body, ok};
use crate::flow;
use crate::outbox::{ShardOwner, TargetBacklog, backlog_by_target, shard_owners};
use crate::problem::ApiError;

/// Every route and target, in configuration order. The backlog comes from
/// the outbox (null when it cannot be read: the rest still shows).
pub async fn list(State(admin): State<Arc<AdminPort>>) -> Response {
    let outbox = admin
        .on_outbox(async |client| {
            Ok((
                backlog_by_target(client).await?,
                shard_owners(client).await?,
            ))
        })
        .await;
    let (backlog, shards) = match outbox {
        Ok((backlog, shards)) => (Ok(backlog), Some(shards)),
        Err(e) => (Err(e), None),
    };
    let mut routes: Vec<serde_json::Value> = Vec::new();
    for target in &admin.targets {
        let row = backlog
            .as_ref()
            .ok()
            .map(|rows| TargetBacklog::of(rows, &target.route, &target.target));
        let (waiting, oldest, dead) = match row {
            Some(r) => (
                json!(r.waiting),
                json!(r.oldest.as_secs_f64()),
                json!(r.dead),
            ),
            None => (json!(null), json!(null), json!(null)),
        };
        let mut shown = describe(target);
        shown["backlog"] = waiting;
        shown["oldest_pending_age_s"] = oldest;
        shown["dead_letters"] = dead;
        shown["shards"] = match &shards {
            Some(shards) => shards_of(shards, target, &admin.owner),
            None => json!(null),
        };
        match routes.last_mut() {
            Some(route) if route["route"] == target.route => {
                route["targets"].as_array_mut().expect("array").push(shown)
            }
            _ => routes.push(json!({"route": target.route, "targets": [shown]})),
        }
    }
    let mut body = json!({ "routes": routes });
    if let Err(e) = backlog {
        body["backlog_error"] = json!(e.to_string());
    }
    ok(body)
}

/// The new rate: `per_second` (0 stops sending), and optionally `burst`
/// (else one second's worth) and `concurrency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateChange {
    per_second: f64,
    burst: Option<u32>,
    concurrency: Option<usize>,
}

pub async fn set_rate(
    State(admin): State<Arc<AdminPort>>,
    Path((route, target)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = admin.find_target(&route, &target)?;
    let change: RateChange = json_body(&body)?;
    // Every value checked before any is applied.
    let checks = [
        ("per_second", Some(flow::check_rate(change.per_second))),
        ("burst", change.burst.map(flow::check_burst)),
        (
            "concurrency",
            change.concurrency.map(flow::check_concurrency),
        ),
    ];
    for (field, check) in checks {
        if let Some(Err(message)) = check {
            return Err(ApiError::BadRequest(format!("{field} {message}")));
        }
    }
    let flow = &target.handle.flow;
    flow.set_rate(change.per_second, change.burst);
    if let Some(concurrency) = change.concurrency {
        flow.set_concurrency(concurrency);
    }
    admin
        .metrics
        .rate_limit
        .with_label_values(&[&target.route, &target.target])
        .set(change.per_second);
    tracing::info!(route = %target.route, target_name = %target.target, per_second = change.per_second,
        burst = ?change.burst, concurrency = ?change.concurrency, "rate changed through the admin API");
    Ok(ok(describe(target)))
}

pub async fn pause(
    State(admin): State<Arc<AdminPort>>,
    Path((route, target)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_paused(&admin, &route, &target, true)
}

pub async fn resume(
    State(admin): State<Arc<AdminPort>>,
    Path((route, target)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_paused(&admin, &route, &target, false)
}

fn set_paused(
    admin: &AdminPort,
    route: &str,
    target: &str,
    paused: bool,
) -> Result<Response, ApiError> {
    let target = admin.find_target(route, target)?;
    target.handle.flow.set_paused(paused);
    let what = if paused { "paused" } else { "resumed" };
    tracing::info!(route = %target.route, target_name = %target.target, "target {what} through the admin API");
    Ok(ok(describe(target)))
}

/// A target's live state: what this spool is doing with it.
/// A target's shards: each one's owner (null when none is live), epoch,
/// lease left and whether this spool holds it, and how many have no owner.
fn shards_of(shards: &[ShardOwner], target: &AdminTarget, me: &str) -> serde_json::Value {
    let mine: Vec<&ShardOwner> = shards
        .iter()
        .filter(|s| s.route == target.route && s.target == target.target)
        .collect();
    let unowned = mine.iter().filter(|s| s.live_owner().is_none()).count();
    let held_here = mine.iter().filter(|s| s.live_owner() == Some(me)).count();
    let each: Vec<serde_json::Value> = mine
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "owner": s.live_owner(),
                "epoch": s.epoch,
                "lease_left_s": (s.lease_left_s.max(0.0) * 10.0).round() / 10.0,
                "mine": s.live_owner() == Some(me),
            })
        })
        .collect();
    json!({
        "count": mine.len(),
        "unowned": unowned,
        "held_here": held_here,
        "each": each,
    })
}

fn describe(target: &AdminTarget) -> serde_json::Value {
    let flow = target.handle.flow.settings();
    json!({
        "route": target.route,
        "target": target.target,
        "in_flight": target.handle.flow.in_flight(),
        "breaker": target.handle.breaker.state().name(),
        "rate": {
            "per_second": flow.per_second,
            "burst": flow.burst,
            "concurrency": flow.concurrency,
        },
        "paused": flow.paused,
    })
}
