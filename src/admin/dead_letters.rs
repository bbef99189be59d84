//! `/admin/dead-letters`: list (filtered, paged), replay, delete.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{AdminPort, json_body, ok};
use crate::outbox::{
    DeadLetter, DeadLetterQuery, DeadLetterSelection, delete_dead, list_dead, replay_dead,
};
use crate::problem::ApiError;

const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    route: Option<String>,
    target: Option<String>,
    limit: Option<i64>,
    /// `next` of the previous page.
    after: Option<String>,
}

/// Newest first; `next` is the `after` of the following page (null on the
/// last one).
pub async fn list(
    State(admin): State<Arc<AdminPort>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {PAGE_MAX}"
        )));
    }
    let after = query.after.as_deref().map(parse_cursor).transpose()?;
    let query = DeadLetterQuery {
        route: query.route,
        target: query.target,
        after,
        limit,
    };
    let letters = admin
        .on_outbox(async |client| list_dead(client, &query).await)
        .await?;
    let next = match letters.last() {
        Some(last) if letters.len() as i64 == limit => json!(cursor(last)),
        _ => json!(null),
    };
    let shown: Vec<_> = letters.iter().map(describe).collect();
    Ok(ok(json!({ "dead_letters": shown, "next": next })))
}

/// Which to replay: one message (`message_id`, optionally one `target` of
/// it), a route or a target, or everything with `all: true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    message_id: Option<Uuid>,
    route: Option<String>,
    target: Option<String>,
    #[serde(default)]
    all: bool,
}

pub async fn replay(
    State(admin): State<Arc<AdminPort>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ReplayRequest = json_body(&body)?;
    let narrowed = request.message_id.is_some() || request.route.is_some();
    if !narrowed && !request.all {
        return Err(ApiError::BadRequest(
            "name a message_id or a route (with a target, optionally), or send \"all\": true to replay every dead letter".into(),
        ));
    }
    let selection = DeadLetterSelection {
        message_id: request.message_id,
        route: request.route,
        target: request.target,
    };
    let routes = admin
        .on_outbox(async |client| replay_dead(client, &selection).await)
        .await?;
    admin.wakeups.committed(routes.iter().map(String::as_str));
    tracing::info!(
        replayed = routes.len(),
        ?selection,
        "dead letters replayed through the admin API"
    );
    Ok(ok(json!({ "replayed": routes.len() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    target: Option<String>,
}

/// Deletes the dead letters of one message (of one target with
/// `?target=`); 404 when there is none.
pub async fn remove(
    State(admin): State<Arc<AdminPort>>,
    Path(id): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let id = Uuid::parse_str(&id)
        .map_err(|e| ApiError::BadRequest(format!("`{id}` is not a message id: {e}")))?;
    let target = query.target.as_deref();
    let deleted = admin
        .on_outbox(async |client| delete_dead(client, id, target).await)
        .await?;
    if deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "message {id} has no dead letter{}",
            query
                .target
                .map(|t| format!(" for target `{t}`"))
                .unwrap_or_default()
        )));
    }
    tracing::info!(message_id = %id, deleted, "dead letters deleted through the admin API");
    Ok(ok(json!({ "deleted": deleted })))
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

fn describe(letter: &DeadLetter) -> serde_json::Value {
    json!({
        "message_id": letter.message_id,
        "route": letter.route,
        "target": letter.target,
        "attempts": letter.attempts,
        "last_status": letter.last_status,
        "last_error": letter.last_error,
        "dead_at": httpdate::fmt_http_date(letter.dead_at),
        "method": letter.method,
        "path": letter.path,
        "query": letter.query,
        "accepted_at": httpdate::fmt_http_date(letter.accepted_at),
    })
}

/// A page boundary: microseconds since the epoch, message id, target.
fn cursor(letter: &DeadLetter) -> String {
    let micros = letter
        .dead_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("{micros}:{}:{}", letter.message_id, letter.target)
}

fn parse_cursor(text: &str) -> Result<(SystemTime, Uuid, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("`after` is not a `next` from a listing: {text}"));
    let mut parts = text.splitn(3, ':');
    let micros: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let id = parts
        .next()
        .and_then(|p| Uuid::parse_str(p).ok())
        .ok_or_else(bad)?;
    let target = parts.next().ok_or_else(bad)?;
    Ok((
        UNIX_EPOCH + Duration::from_micros(micros),
        id,
        target.to_owned(),
    ))
}
