//! The route table as the data port uses it: names resolved once at start,
//! methods parsed, the header allow-list ready to match.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, Method};

use crate::config::RouteConfig;

/// One configured route, prepared for the request path.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub targets: Arc<[String]>,
    pub write_methods: Vec<Method>,
    /// The `Allow` header value: the write methods, then GET and HEAD.
    pub allow: String,
    pub forward_headers: HeaderAllowList,
    /// Whether `%2F` and `%5C` may appear in a path (see `request_path`).
    pub allow_encoded_slashes: bool,
}

impl Route {
    pub fn from_config(config: &RouteConfig) -> Self {
        let write_methods: Vec<Method> = config
            .write_methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).expect("validated at load"))
            .collect();
        let allow = write_methods
            .iter()
            .map(Method::as_str)
            .chain(["GET", "HEAD"])
            .collect::<Vec<_>>()
            .join(", ");
        Route {
            name: config.name.as_str().into(),
            targets: config.targets.iter().map(|t| t.name.clone()).collect(),
            write_methods,
            allow,
            forward_headers: HeaderAllowList::new(&config.forward_headers),
            allow_encoded_slashes: config.allow_encoded_slashes,
        }
    }
}

/// All routes by name.
pub type RouteTable = HashMap<String, Arc<Route>>;

pub fn route_table(routes: &[RouteConfig]) -> RouteTable {
    routes
        .iter()
        .map(|r| (r.name.clone(), Arc::new(Route::from_config(r))))
        .collect()
}

/// Which request headers are kept with a write: exact names and prefixes
/// (`x-*`), case-insensitive.
#[derive(Debug, Default)]
pub struct HeaderAllowList {
    exact: Vec<HeaderName>,
    prefixes: Vec<String>,
}

impl HeaderAllowList {
    pub fn new(patterns: &[String]) -> Self {
        let mut list = HeaderAllowList::default();
        for pattern in patterns {
            let lower = pattern.to_ascii_lowercase();
            match lower.strip_suffix('*') {
                Some(prefix) => list.prefixes.push(prefix.to_owned()),
                None => list
                    .exact
                    .push(HeaderName::from_bytes(lower.as_bytes()).expect("validated at load")),
            }
        }
        list
    }

    /// An exact entry allows its header; a prefix allows what it matches
    /// except credential-like names, which a route must list by name to
    /// keep (they would be stored at rest in the outbox).
    pub fn allows(&self, name: &HeaderName) -> bool {
        self.exact.contains(name)
            || (self
                .prefixes
                .iter()
                .any(|p| name.as_str().starts_with(p.as_str()))
                && !is_credential_like(name.as_str()))
    }
}

/// Parts of a header name that say it carries a credential: `x-api-key`,
/// `x-auth-token`, `x-amz-security-token`, `x-session-id`, ...
const CREDENTIAL_WORDS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "passw",
    "api-key",
    "apikey",
    "api_key",
    "session",
    "cookie",
    "credential",
    "signature",
    "private",
];

fn is_credential_like(name: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_exact_and_prefix() {
        let list = HeaderAllowList::new(&["Content-Type".into(), "x-*".into()]);
        assert!(list.allows(&HeaderName::from_static("content-type")));
        assert!(list.allows(&HeaderName::from_static("x-request-id")));
        assert!(!list.allows(&HeaderName::from_static("authorization")));
    }

    #[test]
    fn prefixes_leave_credentials_out_unless_listed_by_name() {
        let list = HeaderAllowList::new(&["x-*".into()]);
        for name in [
            "x-api-key",
            "x-auth-token",
            "x-amz-security-token",
            "x-session-id",
        ] {
            assert!(!list.allows(&HeaderName::from_static(name)), "{name}");
        }
        let listed = HeaderAllowList::new(&["x-*".into(), "X-Api-Key".into()]);
        assert!(listed.allows(&HeaderName::from_static("x-api-key")));
    }
}
