//! The data port: `/{route}/{rest...}`, where the method decides between the
//! write path and the read path.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::Method;

use crate::ingest::{RouteTable, WritePath, check_header_limits, split_path};
use crate::problem::ApiError;
use crate::read::ReadPath;
use crate::request_path;

/// Shared state of the data port.
pub struct DataPort {
    pub routes: RouteTable,
    pub writes: WritePath,
    pub reads: ReadPath,
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// The data port's router: every path goes to one handler, since the first
/// path segment is a route name, not a fixed path.
pub fn router(state: Arc<DataPort>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(port): State<Arc<DataPort>>, request: Request) -> Response {
    match dispatch(&port, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(port: &DataPort, request: Request) -> Result<Response, ApiError> {
    check_header_limits(request.headers(), port.max_headers, port.max_header_bytes)?;
    let (parts, body) = request.into_parts();
    // A Uri clone shares its bytes: `rest` can borrow it while `parts` moves.
    let uri = parts.uri.clone();
    let (name, rest) = split_path(uri.path());
    let route = port
        .routes
        .get(name)
        .ok_or_else(|| ApiError::UnknownRoute(name.to_owned()))?;
    let rest = request_path::normalize(rest, route.allow_encoded_slashes)
        .map_err(|refused| ApiError::BadPath(refused.to_string()))?;
    if route.write_methods.contains(&parts.method) {
        return Ok(port.writes.accept(route, parts, &rest, body).await);
    }
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return Ok(port.reads.handle(name, parts, &rest).await);
    }
    Err(ApiError::MethodNotAllowed {
        route: route.name.to_string(),
        method: parts.method.to_string(),
        allow: route.allow.clone(),
    })
}
