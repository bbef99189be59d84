//! HTTP/1.1 framing that RFC 9112 makes an error is refused, as Envoy
//! refuses it; legal but unusual framing is served.

use std::time::Duration;

use crate::{Hostile, send_raw};

const W: &str = "POST /orders/x HTTP/1.1\r\nconnection: close\r\n";

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let h = Hostile::start().await;
    let data = h.env.client.data;
    for (case, request, status) in [
        (
            "two different Content-Lengths",
            format!("{W}host: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
            400,
        ),
        (
            "a list Content-Length",
            format!("{W}host: a\r\ncontent-length: 3, 4\r\n\r\nabcd"),
            400,
        ),
        (
            "a negative Content-Length",
            format!("{W}host: a\r\ncontent-length: -1\r\n\r\n"),
            400,
        ),
        (
            "a bad chunk size",
            format!("{W}host: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
            400,
        ),
        (
            "gzip without chunked",
            format!("{W}host: a\r\ntransfer-encoding: gzip\r\n\r\nabc"),
            400,
        ),
        (
            "chunked then gzip",
            format!("{W}host: a\r\ntransfer-encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            400,
        ),
        (
            "gzip then chunked",
            format!("{W}host: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            501,
        ),
        ("no Host", format!("{W}content-length: 2\r\n\r\n{{}}"), 400),
        (
            "two Hosts",
            format!("{W}host: a\r\nhost: b\r\ncontent-length: 2\r\n\r\n{{}}"),
            400,
        ),
    ] {
        let before = h.messages().await;
        let answer =
            tokio::time::timeout(Duration::from_secs(5), send_raw(data, request.as_bytes()))
                .await
                .unwrap_or_else(|_| panic!("{case}: no answer"));
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        assert_eq!(h.messages().await, before, "{case}: a message was stored");
    }
    h.stop().await;
}

/// hyper removes a Content-Length that comes with Transfer-Encoding before
/// spool sees the request, so spool cannot refuse it; what RFC 9112 §6.3
/// then requires holds: the body is framed by the chunks, never by the
/// length, and the connection is closed after the answer, so nothing can
/// be smuggled in behind it.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_the_chunks_and_closes() {
    let h = Hostile::start().await;
    let request = "POST /orders/x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\nGET /orders/smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        send_raw(h.env.client.data, request.as_bytes()),
    )
    .await
    .expect("the connection is closed after the answer");
    assert_eq!(answer.status, 202, "{answer:?}");
    assert!(
        !answer.body.contains("HTTP/1.1"),
        "a second answer came: {answer:?}"
    );
    h.expect_write();
    let delivered = crate::support::eventually(Duration::from_secs(5), || async {
        !h.target.received().is_empty()
    })
    .await;
    assert!(delivered, "not delivered");
    let body = h.target.received()[0].body.clone();
    assert_eq!(&body[..], b"abcde");
    h.stop().await;
}
