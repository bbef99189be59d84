//! The admin port: every value checked, no web page can drive it, every
//! error is problem JSON.

use std::time::Duration;

use crate::{Hostile, send_raw};

/// An admin request with `connection: close`.
fn admin(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const JSON: &str = "content-type: application/json\r\n";
const RATE: &str = "/admin/routes/orders/targets/billing/rate";
const PAUSE: &str = "/admin/routes/orders/targets/billing/pause";

#[tokio::test]
async fn admin_values_are_bounded_and_a_refused_one_changes_nothing() {
    let h = Hostile::start().await;
    let port = h.env.client.admin;
    let before = h.env.target("orders", "billing").flow.settings();
    for (case, body) in [
        ("a tiny positive rate", r#"{"per_second": 1e-300}"#),
        ("a negative rate", r#"{"per_second": -1}"#),
        ("a huge rate", r#"{"per_second": 1e300}"#),
        ("a zero burst", r#"{"per_second": 10, "burst": 0}"#),
        ("a huge burst", r#"{"per_second": 10, "burst": 4000000000}"#),
        (
            "a huge concurrency",
            r#"{"per_second": 10, "concurrency": 100000000}"#,
        ),
        ("a rate as a string", r#"{"per_second": "10"}"#),
        ("an unknown field", r#"{"per_second": 10, "speed": 1}"#),
        ("not JSON", "per_second=10"),
    ] {
        h.refused(
            case,
            port,
            &admin("PUT", RATE, JSON, body),
            400,
            "bad-request",
        )
        .await;
    }
    assert_eq!(h.env.target("orders", "billing").flow.settings(), before);
    // The dispatcher still delivers, and the admin API still answers.
    h.delivered(
        "after the refused values",
        &crate::write("/orders/x", "", "{}"),
    )
    .await;
    let answer = send_raw(port, &admin("GET", "/admin/routes", "", "")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    h.stop().await;
}

#[tokio::test]
async fn web_pages_cannot_drive_the_admin_port() {
    let h = Hostile::start().await;
    let port = h.env.client.admin;
    let paused = || h.env.target("orders", "billing").flow.settings().paused;
    for (case, request, status, kind) in [
        (
            "a text/plain POST",
            admin("POST", PAUSE, "content-type: text/plain\r\n", "{}"),
            415,
            "unsupported-media-type",
        ),
        (
            "a form POST",
            admin(
                "POST",
                PAUSE,
                "content-type: application/x-www-form-urlencoded\r\n",
                "a=1",
            ),
            415,
            "unsupported-media-type",
        ),
        (
            "a POST without a type",
            admin("POST", PAUSE, "", ""),
            415,
            "unsupported-media-type",
        ),
        (
            "an Origin",
            admin(
                "POST",
                PAUSE,
                &format!("{JSON}origin: http://evil.example\r\n"),
                "{}",
            ),
            403,
            "cross-site-request",
        ),
        (
            "Sec-Fetch-Site cross-site",
            admin(
                "POST",
                PAUSE,
                &format!("{JSON}sec-fetch-site: cross-site\r\n"),
                "{}",
            ),
            403,
            "cross-site-request",
        ),
        (
            "Sec-Fetch-Site same-site",
            admin("GET", "/admin/routes", "sec-fetch-site: same-site\r\n", ""),
            403,
            "cross-site-request",
        ),
        (
            "an Origin on a read",
            admin("GET", "/metrics", "origin: null\r\n", ""),
            403,
            "cross-site-request",
        ),
        (
            "a rebound host name",
            admin("POST", PAUSE, JSON, "{}").replace_host("evil.example:4001"),
            421,
            "misdirected-request",
        ),
    ] {
        h.refused(case, port, &request, status, kind).await;
        assert!(!paused(), "{case}: the target was paused");
    }
    // A JSON POST for localhost, as `spool ctl` sends it, works.
    let answer = send_raw(
        port,
        &admin("POST", PAUSE, JSON, "").replace_host("localhost:4001"),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(paused());
    h.stop().await;
}

#[tokio::test]
async fn every_admin_error_is_problem_json() {
    let h = Hostile::start().await;
    let port = h.env.client.admin;
    for (case, request, status, kind) in [
        (
            "an unknown path",
            admin("GET", "/admin/nope", "", ""),
            404,
            "not-found",
        ),
        (
            "an unknown top-level path",
            admin("GET", "/", "", ""),
            404,
            "not-found",
        ),
        (
            "a method the path does not take",
            admin("DELETE", "/admin/routes", "", ""),
            405,
            "method-not-allowed",
        ),
        (
            "an unknown route",
            admin("POST", "/admin/routes/nope/targets/billing/pause", JSON, ""),
            404,
            "unknown-route",
        ),
        (
            "a body past 64 KiB by length",
            admin("PUT", RATE, JSON, &" ".repeat(64 * 1024 + 1)),
            413,
            "body-too-large",
        ),
    ] {
        h.refused(case, port, &request, status, kind).await;
    }
    // A chunked body is cut off as soon as it passes the limit.
    let mut chunked = format!(
        "PUT {RATE} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{JSON}transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        chunked.extend_from_slice(
            format!("{:x}\r\n{}\r\n", 32 * 1024, " ".repeat(32 * 1024)).as_bytes(),
        );
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), send_raw(port, &chunked))
        .await
        .expect("answered without the rest of the body");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.problem_type().as_deref(), Some("body-too-large"));
    h.stop().await;
}

#[tokio::test]
async fn the_token_scheme_is_case_insensitive_and_a_wrong_token_refused() {
    let token = "a-token-long-enough-for-any-port";
    let h = Hostile::start_full("", "", &format!("admin_token = \"{token}\"")).await;
    let port = h.env.client.admin;
    for (case, auth, status) in [
        (
            "lower-case bearer",
            format!("authorization: bearer {token}\r\n"),
            200,
        ),
        (
            "upper-case bearer",
            format!("authorization: BEARER {token}\r\n"),
            200,
        ),
        (
            "a wrong token",
            "authorization: Bearer wrong\r\n".to_owned(),
            401,
        ),
        (
            "a token one character short",
            format!("authorization: Bearer {}\r\n", &token[1..]),
            401,
        ),
        (
            "another scheme",
            format!("authorization: Basic {token}\r\n"),
            401,
        ),
        ("no token", String::new(), 401),
    ] {
        let answer = send_raw(port, &admin("GET", "/admin/routes", &auth, "")).await;
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        if status == 401 {
            assert_eq!(
                answer.problem_type().as_deref(),
                Some("unauthorized"),
                "{case}"
            );
        }
    }
    h.stop().await;
}

trait ReplaceHost {
    fn replace_host(self, host: &str) -> Vec<u8>;
}

impl ReplaceHost for Vec<u8> {
    fn replace_host(self, host: &str) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replacen("host: 127.0.0.1", &format!("host: {host}"), 1)
            .into_bytes()
    }
}
