//! The bearer token on `/admin` calls: once `server.admin_token` is set,
//! every call must carry `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;
use sha2::{Digest, Sha256};

use super::AdminPort;
use crate::problem::ApiError;

pub async fn require_token(
    State(admin): State<Arc<AdminPort>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &admin.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials);
    // Digests compared, so the time taken says nothing about the token.
    let digest = |text: &str| Sha256::digest(text.as_bytes());
    match presented {
        Some(presented) if digest(presented) == digest(token) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// §11.1, RFC 6750 §2.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_credentials("Basic abc"), None);
        assert_eq!(bearer_credentials("Bearerabc"), None);
    }
}
