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
use crate::server::framing;

/// Shared state of the data port.
pub struct DataPort {
    pub routes: RouteTable,
    pub writes: WritePath,
    pub reads: ReadPath,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// Origins whose pages may call the data port (`server.allowed_origins`).
    pub allowed_origins: Vec<String>,
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
    framing::check(request.version(), request.headers())?;
    check_header_limits(request.headers(), port.max_headers, port.max_header_bytes)?;
    check_origin(request.headers(), &port.allowed_origins)?;
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

/// A web page's request (it carries an `Origin`) is refused unless its
/// origin is listed: a page in the operator's browser must not be able to
/// write through the sidecar on 127.0.0.1.
fn check_origin(headers: &http::HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(&origin)) {
        return Ok(());
    }
    Err(ApiError::CrossSite(format!(
        "requests from web pages at {origin} are refused; list the origin in server.allowed_origins to allow them"
    )))
}
