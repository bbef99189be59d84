//! Checks that serde cannot express. Every problem is collected, so that an
//! operator fixes the file once rather than once per error.

use std::collections::HashSet;

use super::{Config, ConfigError, RouteConfig};
use crate::flow;

/// Shortest admin token accepted when the admin port is off loopback.
const MIN_PUBLIC_TOKEN: usize = 16;

/// Methods that may be configured as write methods. GET and HEAD are reads.
const WRITABLE: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    let mut fail = |key: String, message: String| errors.push(ConfigError::key(key, message));

    let server = &config.server;
    if server.max_body_bytes == 0 {
        fail("server.max_body_bytes".into(), "must be at least 1".into());
    }
    if server.max_header_bytes < 1024 {
        fail(
            "server.max_header_bytes".into(),
            "must be at least 1024".into(),
        );
    }
    if server.max_headers < 8 {
        fail("server.max_headers".into(), "must be at least 8".into());
    }
    for (key, value) in [
        (
            "server.header_read_timeout_ms",
            server.header_read_timeout_ms,
        ),
        ("server.body_read_timeout_ms", server.body_read_timeout_ms),
        ("server.max_connections", server.max_connections as u64),
    ] {
        if value == 0 {
            fail(key.into(), "must be at least 1".into());
        }
    }
    if server.max_body_bytes_in_flight < server.max_body_bytes {
        fail(
            "server.max_body_bytes_in_flight".into(),
            format!(
                "must be at least server.max_body_bytes ({}), or no write of the largest size could be taken",
                server.max_body_bytes
            ),
        );
    }
    match &server.admin_token {
        Some(token) if token.trim().is_empty() => {
            fail("server.admin_token".into(), "is set but empty".into())
        }
        Some(token)
            if !server.admin_listen.ip().is_loopback() && token.len() < MIN_PUBLIC_TOKEN =>
        {
            fail(
                "server.admin_token".into(),
                format!(
                    "must be at least {MIN_PUBLIC_TOKEN} characters to listen for admin calls on {}, which is not loopback (try `openssl rand -hex 32`)",
                    server.admin_listen
                ),
            )
        }
        None if !server.admin_listen.ip().is_loopback() => fail(
            "server.admin_token".into(),
            format!(
                "must be set (SPOOL_ADMIN_TOKEN) to listen for admin calls on {}, which is not loopback",
                server.admin_listen
            ),
        ),
        _ => {}
    }
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        fail(
            "server.admin_listen".into(),
            format!("is the same address as server.listen ({})", server.listen),
        );
    }

    let db = &config.database;
    if db.url.is_none() && !db.embedded {
        fail(
            "database.url".into(),
            "must be set (SPOOL_DATABASE_URL or SPOOL_DATABASE_URL_FILE): database.embedded is false, so spool does not start a Postgres of its own".into(),
        );
    }
    if let Some(url) = &db.url
        && let Err(e) = crate::outbox::DbAddress::parse(url, db)
    {
        fail(e.key.into(), e.message);
    }
    let ingest = &config.ingest;
    if ingest.committers == 0 {
        fail("ingest.committers".into(), "must be at least 1".into());
    }
    if db.pool_size < ingest.committers + 2 {
        fail(
            "database.pool_size".into(),
            format!(
                "must be at least ingest.committers + 2 ({}) so that health checks and delivery get a connection",
                ingest.committers + 2
            ),
        );
    }
    if db.connect_timeout_ms == 0 {
        fail(
            "database.connect_timeout_ms".into(),
            "must be at least 1".into(),
        );
    }
    if !(1..=10_000).contains(&ingest.batch_max) {
        fail(
            "ingest.batch_max".into(),
            "must be between 1 and 10000".into(),
        );
    }
    if ingest.queue_capacity == 0 {
        fail("ingest.queue_capacity".into(), "must be at least 1".into());
    }
    if ingest.commit_timeout_ms < 10 {
        fail(
            "ingest.commit_timeout_ms".into(),
            "must be at least 10".into(),
        );
    }
    if ingest.outcome_lookup_ms > 600_000 {
        fail(
            "ingest.outcome_lookup_ms".into(),
            "must be at most 600000 (ten minutes)".into(),
        );
    }
    if ingest.retry_after_s == 0 {
        fail("ingest.retry_after_s".into(), "must be at least 1".into());
    }
    let dispatch = &config.dispatch;
    if !(1..=1_000).contains(&dispatch.claim_batch) {
        fail(
            "dispatch.claim_batch".into(),
            "must be between 1 and 1000".into(),
        );
    }
    if !(1..=1_024).contains(&dispatch.shards) {
        fail(
            "dispatch.shards".into(),
            "must be between 1 and 1024".into(),
        );
    }
    if dispatch.poll_interval_ms < 10 {
        fail(
            "dispatch.poll_interval_ms".into(),
            "must be at least 10".into(),
        );
    }
    if dispatch.lease_margin_ms < 100 {
        fail(
            "dispatch.lease_margin_ms".into(),
            "must be at least 100".into(),
        );
    }
    if dispatch.backlog_interval_ms < 100 {
        fail(
            "dispatch.backlog_interval_ms".into(),
            "must be at least 100".into(),
        );
    }
    if dispatch.record_batch_max == 0 {
        fail(
            "dispatch.record_batch_max".into(),
            "must be at least 1".into(),
        );
    }
    let cache = &config.read_cache;
    if cache.max_entries == 0 {
        fail("read_cache.max_entries".into(), "must be at least 1".into());
    }
    if cache.max_bytes < cache.max_entry_bytes as u64 {
        fail(
            "read_cache.max_bytes".into(),
            "must be at least read_cache.max_entry_bytes".into(),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        fail("log.level".into(), format!("is not a valid filter: {e}"));
    }

    let mut names = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !names.insert(route.name.as_str()) {
            fail(
                format!("{key}.name"),
                format!("`{}` is used by an earlier route", route.name),
            );
        }
        validate_route(&key, route, &mut fail);
    }

    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(ConfigError::Invalid(errors)),
    }
}

fn validate_route(key: &str, route: &RouteConfig, fail: &mut impl FnMut(String, String)) {
    if !is_name(&route.name) {
        fail(
            format!("{key}.name"),
            format!(
                "`{}` must be 1-64 characters of a-z, A-Z, 0-9, `-`, `_` or `.`",
                route.name
            ),
        );
    }
    if route.write_methods.is_empty() {
        fail(
            format!("{key}.write_methods"),
            "must name at least one method".into(),
        );
    }
    for method in &route.write_methods {
        if !WRITABLE.contains(&method.as_str()) {
            fail(
                format!("{key}.write_methods"),
                format!("`{method}` is not one of {}", WRITABLE.join(", ")),
            );
        }
    }
    if route.timeout_ms == 0 {
        fail(format!("{key}.timeout_ms"), "must be at least 1".into());
    }
    for header in &route.forward_headers {
        let name = header.strip_suffix('*').unwrap_or(header);
        let valid = header == "*"
            || (!name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok());
        if !valid {
            fail(
                format!("{key}.forward_headers"),
                format!("`{header}` is not a header name"),
            );
        }
    }
    if route.targets.is_empty() {
        fail(
            format!("{key}.targets"),
            "must list at least one target".into(),
        );
    }
    let mut targets = HashSet::new();
    for (j, target) in route.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{j}]");
        if !is_name(&target.name) {
            fail(
                format!("{tkey}.name"),
                format!(
                    "`{}` must be 1-64 characters of a-z, A-Z, 0-9, `-`, `_` or `.`",
                    target.name
                ),
            );
        }
        if !targets.insert(target.name.as_str()) {
            fail(
                format!("{tkey}.name"),
                format!(
                    "`{}` is used by an earlier target of this route",
                    target.name
                ),
            );
        }
        if let Err(message) = check_target_url(&target.url) {
            fail(format!("{tkey}.url"), message);
        }
    }
    if let Some(read) = &route.read_target
        && !targets.contains(read.as_str())
    {
        fail(
            format!("{key}.read_target"),
            format!("`{read}` is not a target of this route"),
        );
    }
    let retry = &route.retry;
    if retry.initial_ms == 0 {
        fail(
            format!("{key}.retry.initial_ms"),
            "must be at least 1".into(),
        );
    }
    if retry.max_ms < retry.initial_ms {
        fail(
            format!("{key}.retry.max_ms"),
            "must be at least retry.initial_ms".into(),
        );
    }
    if retry.max_attempts == 0 {
        fail(
            format!("{key}.retry.max_attempts"),
            "must be at least 1".into(),
        );
    }
    if retry.max_age_s == 0 {
        fail(
            format!("{key}.retry.max_age_s"),
            "must be at least 1".into(),
        );
    }
    for status in &retry.retry_statuses {
        if !(400..500).contains(status) {
            fail(
                format!("{key}.retry.retry_statuses"),
                format!("{status} is not a 4xx status (5xx are always retried)"),
            );
        }
    }
    if route.breaker.failure_threshold == 0 {
        fail(
            format!("{key}.breaker.failure_threshold"),
            "must be at least 1".into(),
        );
    }
    if route.breaker.open_ms == 0 {
        fail(
            format!("{key}.breaker.open_ms"),
            "must be at least 1".into(),
        );
    }
    let rate = &route.rate;
    if let Err(message) = flow::check_rate(rate.per_second) {
        fail(format!("{key}.rate.per_second"), message);
    }
    if let Some(Err(message)) = rate.burst.map(flow::check_burst) {
        fail(format!("{key}.rate.burst"), message);
    }
    if let Err(message) = flow::check_concurrency(rate.concurrency) {
        fail(format!("{key}.rate.concurrency"), message);
    }
}

fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `url` as it may be printed: a password in its user-info replaced by
/// `***`, even when the rest does not parse.
pub fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user = match authority[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => authority[..at].to_owned(),
    };
    format!(
        "{}{user}{}{}",
        &url[..scheme_end],
        &authority[at..],
        &url[authority_end..]
    )
}

fn check_target_url(raw: &str) -> Result<(), String> {
    let url = without_password(raw);
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Never sent (no Authorization is made of it), and HTTP clients
        // log the authority: a password there would only leak.
        return Err(format!(
            "`{url}` must not carry user-info (user:password@): spool does not send it; \
             list the target's credentials header in the route's forward_headers instead"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::without_password;
    use crate::config::from_toml;

    #[test]
    fn passwords_are_left_out_of_printed_urls() {
        for (url, shown) in [
            ("http://u:pw@h:1/p?q", "http://u:***@h:1/p?q"),
            ("http://u@h/", "http://u@h/"),
            ("http://h/a@b", "http://h/a@b"),
            ("https://u:p:w@h", "https://u:***@h"),
            ("http://u:p@w@x/", "http://u:***@x/"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
    }

    const ROUTE: &str = r#"
[[routes]]
name = "orders"
  [[routes.targets]]
  name = "billing"
  url = "http://127.0.0.1:9001"
"#;

    fn error_of(text: &str) -> String {
        from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_design_example() {
        let config = from_toml(include_str!("../../examples/spool.toml")).unwrap();
        assert_eq!(config.routes[0].targets.len(), 2);
    }

    #[test]
    fn validate_rejects_unknown_key_naming_it() {
        let err = error_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"");
        assert!(err.contains("`server.lisen`"), "{err}");
    }

    #[test]
    fn validate_rejects_wrong_type_naming_key() {
        let err = error_of("[server]\nmax_body_bytes = \"big\"");
        assert!(err.contains("`server.max_body_bytes`"), "{err}");
    }

    #[test]
    fn validate_rejects_public_admin_without_token() {
        let err = error_of("[server]\nadmin_listen = \"0.0.0.0:4001\"");
        assert!(err.contains("`server.admin_token`"), "{err}");
    }

    #[test]
    fn validate_rejects_bad_target_url_and_reports_all() {
        let text =
            ROUTE.replace("http://127.0.0.1:9001", "ftp://x") + "\n[ingest]\nbatch_max = 0\n";
        let err = error_of(&text);
        assert!(err.contains("`routes[0].targets[0].url`"), "{err}");
        assert!(err.contains("`ingest.batch_max`"), "{err}");
    }

    #[test]
    fn validate_rejects_read_methods_as_writes() {
        let text = ROUTE.replace(
            "name = \"orders\"",
            "name = \"orders\"\nwrite_methods = [\"GET\"]",
        );
        assert!(error_of(&text).contains("`routes[0].write_methods`"));
    }

    #[test]
    fn validate_rejects_duplicate_route() {
        let err = error_of(&format!("{ROUTE}{ROUTE}"));
        assert!(err.contains("`routes[1].name`"), "{err}");
    }

    #[test]
    fn validate_rejects_no_url_when_embedded_is_off() {
        let err = error_of("[database]\nembedded = false");
        assert!(err.contains("`database.url`"), "{err}");
        assert!(err.contains("SPOOL_DATABASE_URL"), "{err}");
        from_toml("[database]\nembedded = false\nurl = \"postgres://u@h/db\"").unwrap();
    }

    #[test]
    fn validate_never_echoes_database_url() {
        let err = error_of("[database]\nurl = \"postgres://u:s3cret@h:notaport/db\"");
        assert!(err.contains("`database.url`"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
