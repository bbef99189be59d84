//! The variables Kubernetes injects for every Service in a pod's namespace
//! (unless the pod sets `enableServiceLinks: false`). A Service named
//! `spool`, or `spool-anything`, gives every pod beside it variables such as
//! `SPOOL_PORT=tcp://10.0.0.1:4000` and `SPOOL_SERVICE_HOST=10.0.0.1`, which
//! look like spool settings but are not.
//!
//! Only these exact shapes are recognised, each with a value of the form
//! Kubernetes writes (an address, a port number, `tcp://ip:port`), so a
//! misspelt setting (`SPOOL_LISTNE`, `SPOOL_PORT=4000`) is still an error.

use std::net::{IpAddr, SocketAddr};

/// The protocols Kubernetes names in `<SVC>_PORT_<N>_<PROTO>`.
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// Whether `name=value` is one of the variables Kubernetes sets for a
/// Service whose name, upper-cased with `-` as `_`, starts with `SPOOL`.
pub(super) fn is_service_link(name: &str, value: &str) -> bool {
    // Service names are DNS labels: never an empty part between underscores,
    // while every spool setting has `__` between its levels.
    if name.contains("__") || name.ends_with('_') {
        return false;
    }
    let parts: Vec<&str> = name.split('_').collect();
    if parts.first() != Some(&"SPOOL") {
        return false;
    }
    // The Service's own name may itself contain `_` (from `-`), so try each
    // split of the name into "<SERVICE>_<suffix>".
    (1..parts.len()).any(|i| suffix_matches(&parts[i..], value))
}

fn suffix_matches(suffix: &[&str], value: &str) -> bool {
    match suffix {
        // SPOOL_SERVICE_HOST=10.0.0.1
        ["SERVICE", "HOST"] => value.parse::<IpAddr>().is_ok(),
        // SPOOL_SERVICE_PORT=4000, SPOOL_SERVICE_PORT_HTTP=4000
        ["SERVICE", "PORT", ..] => is_port(value),
        // SPOOL_PORT=tcp://10.0.0.1:4000
        ["PORT"] => is_address_url(value),
        ["PORT", port, proto, rest @ ..] if is_port(port) && PROTOCOLS.contains(proto) => {
            match rest {
                // SPOOL_PORT_4000_TCP=tcp://10.0.0.1:4000
                [] => is_address_url(value),
                ["ADDR"] => value.parse::<IpAddr>().is_ok(),
                ["PORT"] => value == *port,
                ["PROTO"] => value.eq_ignore_ascii_case(proto),
                _ => false,
            }
        }
        _ => false,
    }
}

fn is_port(text: &str) -> bool {
    text.parse::<u16>().is_ok()
}

/// `tcp://10.0.0.1:4000`, `udp://[fd00::1]:53`.
fn is_address_url(value: &str) -> bool {
    value.split_once("://").is_some_and(|(proto, address)| {
        PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(proto))
            && address.parse::<SocketAddr>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::is_service_link;

    #[test]
    fn recognises_every_variable_of_a_service_named_spool() {
        for (name, value) in [
            ("SPOOL_PORT", "tcp://10.0.0.1:4000"),
            ("SPOOL_PORT_4000_TCP", "tcp://10.0.0.1:4000"),
            ("SPOOL_PORT_4000_TCP_ADDR", "10.0.0.1"),
            ("SPOOL_PORT_4000_TCP_PORT", "4000"),
            ("SPOOL_PORT_4000_TCP_PROTO", "tcp"),
            ("SPOOL_SERVICE_HOST", "10.0.0.1"),
            ("SPOOL_SERVICE_PORT", "4000"),
            ("SPOOL_SERVICE_PORT_HTTP", "4000"),
            ("SPOOL_SERVICE_PORT_ADMIN_HTTP", "4001"),
            ("SPOOL_PORT_53_UDP", "udp://[fd00::1]:53"),
        ] {
            assert!(is_service_link(name, value), "{name}={value}");
        }
    }

    #[test]
    fn recognises_services_whose_names_start_with_spool() {
        // A Service named `spool-demo`.
        assert!(is_service_link("SPOOL_DEMO_SERVICE_HOST", "10.0.0.2"));
        assert!(is_service_link("SPOOL_DEMO_PORT", "tcp://10.0.0.2:80"));
        assert!(is_service_link("SPOOL_DEMO_PORT_80_TCP_PORT", "80"));
    }

    #[test]
    fn rejects_look_alikes_with_values_kubernetes_would_not_write() {
        for (name, value) in [
            ("SPOOL_PORT", "4000"),
            ("SPOOL_SERVICE_HOST", "spool.example"),
            ("SPOOL_SERVICE_PORT", "http"),
            ("SPOOL_PORT_4000_TCP_PORT", "4001"),
            ("SPOOL_PORT_4000_TCP_PROTO", "udp"),
            ("SPOOL_PORT_4000_HTTP", "tcp://10.0.0.1:4000"),
            ("SPOOL_PORT_4000_TCP_HOST", "10.0.0.1"),
            ("SPOOL_LISTNE", "127.0.0.1:4000"),
            ("SPOOL_SERVER__PORT", "tcp://10.0.0.1:4000"),
            ("SPOOL__SERVICE_HOST", "10.0.0.1"),
            ("SPOOLS_SERVICE_HOST", "10.0.0.1"),
        ] {
            assert!(!is_service_link(name, value), "{name}={value}");
        }
    }
}
