//! Headers: hop-by-hop ones never cross, keys are never ambiguous, trace
//! context is passed on only when valid, credentials are not kept at rest.

use crate::{Hostile, write};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn ambiguous_keys_are_refused() {
    let h = Hostile::start().await;
    let data = h.env.client.data;
    for (case, headers) in [
        (
            "two idempotency keys",
            "idempotency-key: a\r\nidempotency-key: b\r\n",
        ),
        (
            "the same idempotency key twice",
            "idempotency-key: a\r\nidempotency-key: a\r\n",
        ),
        (
            "two ordering keys",
            "spool-ordering-key: a\r\nspool-ordering-key: b\r\n",
        ),
        ("an empty idempotency key", "idempotency-key: \r\n"),
        (
            "a non-ASCII ordering key",
            "spool-ordering-key: caf\u{e9}\r\n",
        ),
    ] {
        h.refused(
            case,
            data,
            &write("/orders/x", headers, "{}"),
            400,
            "bad-request",
        )
        .await;
    }
    h.stop().await;
}

#[tokio::test]
async fn what_the_target_receives_of_the_headers() {
    let h = Hostile::start().await;

    // Every header named in any Connection field stays behind.
    let received = h
        .delivered(
            "two connection fields",
            &write(
                "/orders/x",
                "connection: x-first\r\nconnection: X-Second\r\nx-first: 1\r\nx-second: 2\r\nx-third: 3\r\n",
                "{}",
            ),
        )
        .await;
    assert_eq!(received.header("x-first"), None);
    assert_eq!(received.header("x-second"), None);
    assert_eq!(received.header("x-third"), Some("3"));

    // A valid traceparent and tracestate are passed on as one list.
    let received = h
        .delivered(
            "valid trace context",
            &write(
                "/orders/x",
                &format!("traceparent: {PARENT}\r\ntracestate: a=1\r\ntracestate: b=2\r\n"),
                "",
            ),
        )
        .await;
    assert_eq!(received.header("traceparent"), Some(PARENT));
    assert_eq!(received.header("tracestate"), Some("a=1,b=2"));

    // An invalid one starts a new trace, and its tracestate goes with it.
    for (case, parent) in [
        ("upper-case hex", PARENT.to_uppercase()),
        ("version 00 with a fifth field", format!("{PARENT}-x")),
        ("version ff", PARENT.replacen("00", "ff", 1)),
        (
            "a zero trace id",
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        ),
    ] {
        let received = h
            .delivered(
                case,
                &write(
                    "/orders/x",
                    &format!("traceparent: {parent}\r\ntracestate: a=1\r\n"),
                    "",
                ),
            )
            .await;
        let forwarded = received.header("traceparent").unwrap();
        assert_ne!(forwarded, parent, "{case}");
        assert!(
            forwarded.contains(&received.message_id().simple().to_string()),
            "{case}"
        );
        assert_eq!(received.header("tracestate"), None, "{case}");
    }

    // An oversized tracestate is cut to W3C's 512 bytes.
    let members: Vec<String> = (0..30)
        .map(|i| format!("k{i}={}", "v".repeat(40)))
        .collect();
    let received = h
        .delivered(
            "an oversized tracestate",
            &write(
                "/orders/x",
                &format!(
                    "traceparent: {PARENT}\r\ntracestate: {}\r\n",
                    members.join(",")
                ),
                "",
            ),
        )
        .await;
    let state = received.header("tracestate").unwrap();
    assert!(state.len() <= 512 && state.starts_with("k0="), "{state}");

    // Credential-like x- headers are not kept by the default allow-list.
    let received = h
        .delivered(
            "credential-like headers",
            &write(
                "/orders/x",
                "x-api-key: canary\r\nx-auth-token: canary\r\nauthorization: Bearer canary\r\ncookie: a=canary\r\nx-request-id: r1\r\n",
                "",
            ),
        )
        .await;
    for name in ["x-api-key", "x-auth-token", "authorization", "cookie"] {
        assert_eq!(received.header(name), None, "{name}");
    }
    assert_eq!(received.header("x-request-id"), Some("r1"));
    let stored = h
        .env
        .pg
        .scalar("SELECT count(*) FROM spool_message WHERE headers::text LIKE '%canary%'")
        .await;
    assert_eq!(stored, 0, "a credential was stored at rest");

    // obs-text in a header value (RFC 9110 allows it) arrives byte for byte.
    let mut request = write("/orders/x", "x-latin: caf\u{0}\r\n", "");
    let at = request.windows(4).position(|w| w == b"caf\0").unwrap() + 3;
    request.splice(at..at + 1, [0xe9u8, 0xff]);
    let received = h.delivered("obs-text", &request).await;
    assert_eq!(
        received.headers.get("x-latin").unwrap().as_bytes(),
        b"caf\xe9\xff"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_route_that_lists_a_credential_header_keeps_it() {
    let h = Hostile::start_with("forward_headers = [\"x-*\", \"x-api-key\"]\n", "").await;
    let received = h
        .delivered(
            "a listed credential",
            &write("/orders/x", "x-api-key: k1\r\n", ""),
        )
        .await;
    assert_eq!(received.header("x-api-key"), Some("k1"));
    h.stop().await;
}
