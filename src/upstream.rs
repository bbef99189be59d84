//! The HTTP client spool uses towards targets, for deliveries and reads
//! alike: a keep-alive pool, http or https (rustls, certificates verified
//! against the system's roots, else Mozilla's), redirects never followed.

use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled client for one target.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client keeping up to `max_idle` connections open to one target.
pub fn client(max_idle: usize, connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .unwrap_or_else(|_| hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(tls)
}

/// A target's base URL split for building request URIs.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    scheme: String,
    authority: String,
    /// The URL's path without a trailing slash: `/api` in
    /// `http://host/api/`, empty in `http://host`.
    path: String,
}

impl BaseUrl {
    /// `url` was validated at load (http or https, a host, no query).
    pub fn parse(url: &str) -> Self {
        let uri: Uri = url.parse().expect("target url validated at load");
        BaseUrl {
            scheme: uri.scheme_str().unwrap_or("http").to_owned(),
            authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            path: uri.path().trim_end_matches('/').to_owned(),
        }
    }

    /// The target URL's path followed by `path` and `query`.
    pub fn join(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut path_and_query = format!("{}{}", self.path, path);
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.as_str())
            .authority(self.authority.as_str())
            .path_and_query(path_and_query)
            .build()
    }
}

/// Connection-level headers (RFC 9110 section 7.6.1): never passed on.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names listed in every `Connection` field of `headers`
/// (a request may carry more than one), lower-cased.
pub fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Whether `name` (lower-case) must not cross a proxy: the fixed list, and
/// the headers that a `Connection` field names.
pub fn is_hop_by_hop(name: &str, connection_listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || connection_listed.iter().any(|n| n == name)
}

/// "error: cause: cause", so that "connection refused" is not hidden
/// behind hyper's "client error (Connect)".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_path_and_rest_are_joined() {
        let base = BaseUrl::parse("http://h:1/api/");
        assert_eq!(
            base.join("/v1/x", Some("a=1")).unwrap().to_string(),
            "http://h:1/api/v1/x?a=1"
        );
        let bare = BaseUrl::parse("https://h");
        assert_eq!(bare.join("/", None).unwrap().to_string(), "https://h/");
    }

    #[test]
    fn headers_listed_in_any_connection_field_are_hop_by_hop() {
        let mut headers = http::HeaderMap::new();
        headers.append("connection", "close".parse().unwrap());
        headers.append("connection", " X-Private ,, x-other".parse().unwrap());
        let listed = connection_listed(&headers);
        assert!(is_hop_by_hop("x-private", &listed));
        assert!(is_hop_by_hop("x-other", &listed));
        assert!(is_hop_by_hop("upgrade", &[]));
        assert!(!is_hop_by_hop("content-type", &listed));
    }
}
