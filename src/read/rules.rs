//! Which answers may be kept as a fallback and for how long a kept answer
//! may be served (RFC 9111 storage rules, RFC 5861 stale-if-error, the
//! request's max-stale).

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

/// Statuses RFC 9111 section 4.2.2 lets a cache keep without explicit
/// freshness (less 206 partial content, and 405/414/501, which are no
/// answer worth falling back to).
const KEEPABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 410];

/// The directives of one Cache-Control header that spool acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub private: bool,
    pub public: bool,
    pub s_maxage: bool,
    pub must_revalidate: bool,
    /// `stale-if-error=N` (RFC 5861).
    pub stale_if_error: Option<Duration>,
    /// `max-stale` (request): `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<Duration>>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || {
                    arg.and_then(|a| a.parse::<u64>().ok())
                        .map(Duration::from_secs)
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "s-maxage" => cc.s_maxage = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "stale-if-error" => cc.stale_if_error = seconds(),
                    "max-stale" => cc.max_stale = Some(seconds()),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Why an answer is not kept (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
}

/// Whether a GET answer may be kept as a fallback for other requests.
pub fn keepable(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
) -> Result<(), NotKept> {
    if !KEEPABLE.contains(&status.as_u16()) {
        return Err(NotKept::Status);
    }
    let answer = CacheControl::parse(response);
    if answer.no_store || CacheControl::parse(request).no_store {
        return Err(NotKept::NoStore);
    }
    if answer.private {
        return Err(NotKept::Private);
    }
    // RFC 9111 section 3.5: an answer to an authorized request is shared
    // only when it says so.
    if request.contains_key(header::AUTHORIZATION)
        && !(answer.public || answer.s_maxage || answer.must_revalidate)
    {
        return Err(NotKept::Authorization);
    }
    // One user's session must never be served to another.
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotKept::SetCookie);
    }
    if vary_names(response).iter().any(|n| n == "*") {
        return Err(NotKept::VaryStar);
    }
    Ok(())
}

/// The request header names an answer varies on, lower-cased and sorted.
pub fn vary_names(response: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// How stale a kept answer may be when served after an upstream error: the
/// route's `max_stale`, narrowed by the kept answer's `stale-if-error` and
/// by the request's `max-stale`.
pub fn staleness_allowed(route_max: Duration, kept: &HeaderMap, request: &HeaderMap) -> Duration {
    let mut allowed = route_max;
    if let Some(limit) = CacheControl::parse(kept).stale_if_error {
        allowed = allowed.min(limit);
    }
    if let Some(Some(limit)) = CacheControl::parse(request).max_stale {
        allowed = allowed.min(limit);
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn ok_answers_are_kept_and_errors_are_not() {
        let none = HeaderMap::new();
        assert_eq!(keepable(&none, StatusCode::OK, &none), Ok(()));
        assert_eq!(keepable(&none, StatusCode::NOT_FOUND, &none), Ok(()));
        assert_eq!(
            keepable(&none, StatusCode::SERVICE_UNAVAILABLE, &none),
            Err(NotKept::Status)
        );
        assert_eq!(
            keepable(&none, StatusCode::PARTIAL_CONTENT, &none),
            Err(NotKept::Status)
        );
    }

    #[test]
    fn no_store_private_cookies_and_vary_star_are_never_kept() {
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        let no_store = headers(&[("cache-control", "max-age=60, no-store")]);
        assert_eq!(keepable(&none, ok, &no_store), Err(NotKept::NoStore));
        assert_eq!(keepable(&no_store, ok, &none), Err(NotKept::NoStore));
        let private = headers(&[("cache-control", "private")]);
        assert_eq!(keepable(&none, ok, &private), Err(NotKept::Private));
        let cookie = headers(&[("set-cookie", "session=1")]);
        assert_eq!(keepable(&none, ok, &cookie), Err(NotKept::SetCookie));
        let star = headers(&[("vary", "accept, *")]);
        assert_eq!(keepable(&none, ok, &star), Err(NotKept::VaryStar));
    }

    #[test]
    fn authorized_answers_are_kept_only_when_shareable() {
        let auth = headers(&[("authorization", "Bearer x")]);
        let ok = StatusCode::OK;
        assert_eq!(
            keepable(&auth, ok, &HeaderMap::new()),
            Err(NotKept::Authorization)
        );
        assert_eq!(
            keepable(&auth, ok, &headers(&[("cache-control", "public")])),
            Ok(())
        );
        assert_eq!(
            keepable(&auth, ok, &headers(&[("cache-control", "s-maxage=10")])),
            Ok(())
        );
    }

    #[test]
    fn staleness_is_narrowed_by_stale_if_error_and_max_stale() {
        let day = Duration::from_secs(86_400);
        let none = HeaderMap::new();
        assert_eq!(staleness_allowed(day, &none, &none), day);
        let sie = headers(&[("cache-control", "max-age=10, stale-if-error=300")]);
        assert_eq!(
            staleness_allowed(day, &sie, &none),
            Duration::from_secs(300)
        );
        let ms = headers(&[("cache-control", "max-stale=20")]);
        assert_eq!(staleness_allowed(day, &sie, &ms), Duration::from_secs(20));
        let any = headers(&[("cache-control", "max-stale")]);
        assert_eq!(staleness_allowed(day, &none, &any), day);
    }

    #[test]
    fn vary_names_are_normalized() {
        let vary = headers(&[("vary", "Accept-Encoding, accept"), ("vary", "X-Tenant")]);
        assert_eq!(vary_names(&vary), ["accept", "accept-encoding", "x-tenant"]);
    }
}
