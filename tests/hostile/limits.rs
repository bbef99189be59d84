//! Limits and timeouts: slow peers on either side hold nothing for long and
//! never make spool claim or repeat more than it knows.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Answer;
use crate::{Hostile, parse_answer, send_raw, write};

#[tokio::test]
async fn a_2xx_whose_body_trickles_past_the_timeout_is_delivered_once() {
    let h = Hostile::start().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let held = Arc::clone(&gate);
    h.target.set_rule(move |_, _| {
        Answer::Streamed(
            vec![Bytes::from_static(b"ok"), Bytes::from_static(b"...")],
            Arc::clone(&held),
        )
    });
    let received = h
        .delivered("a trickling 2xx", &write("/orders/x", "", "{}"))
        .await;
    // Past the route's 1 s timeout and a retry's backoff: nothing again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gate.notify_waiters();
    let sent = h.target.received();
    assert_eq!(
        sent.len(),
        1,
        "sent again: {:?}",
        sent.iter().map(|r| r.attempt()).collect::<Vec<_>>()
    );
    assert_eq!(received.attempt(), 1);
    let state = h.env.pg.scalar("SELECT count(*) FROM spool_delivery").await;
    assert_eq!(state, 0, "the delivery was not recorded as delivered");
    h.stop().await;
}

const TIGHT: &str = "header_read_timeout_ms = 600\nbody_read_timeout_ms = 600\nmax_connections = 8\nmax_body_bytes_in_flight = 65536";

async fn connect(h: &Hostile) -> TcpStream {
    TcpStream::connect(h.env.client.data).await.unwrap()
}

/// Whether the server closed `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(answer),
        Err(_) => None,
    }
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_and_store_nothing() {
    let h = Hostile::start_full("", "", TIGHT).await;
    // A connection that never sends a byte.
    let mut silent = connect(&h).await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(3))
            .await
            .is_some(),
        "a silent connection was kept"
    );
    // A head that never ends.
    let mut slow_head = connect(&h).await;
    slow_head
        .write_all(b"POST /orders/x HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow_head, Duration::from_secs(3))
            .await
            .is_some(),
        "a slow head was kept"
    );
    // A body that stops half-way: 408, nothing stored.
    let mut slow_body = connect(&h).await;
    slow_body
        .write_all(b"POST /orders/x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabcde")
        .await
        .unwrap();
    let answer = closed_within(&mut slow_body, Duration::from_secs(3))
        .await
        .expect("answered");
    let answer = parse_answer(&answer);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.problem_type().as_deref(), Some("request-timeout"));
    // An idle keep-alive connection after an answer.
    let mut idle = connect(&h).await;
    idle.write_all(&write("/orders/x", "", "{}").replace_close())
        .await
        .unwrap();
    let answer = closed_within(&mut idle, Duration::from_secs(3))
        .await
        .expect("closed when idle");
    assert_eq!(parse_answer(&answer).status, 202);
    h.expect_write();
    h.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_and_the_body_budget_writes_get_a_clear_503() {
    let h = Hostile::start_full("", "", TIGHT).await;
    // One write holds the whole body budget, half sent.
    let mut holder = connect(&h).await;
    holder
        .write_all(b"POST /orders/x HTTP/1.1\r\nhost: a\r\ncontent-length: 65536\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.refused(
        "past the body budget",
        h.env.client.data,
        &write("/orders/x", "", "{}"),
        503,
        "overloaded",
    )
    .await;
    let answer = send_raw(h.env.client.data, &write("/orders/x", "", "{}")).await;
    assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");
    drop(holder);
    // Connections past the cap: answered 503 and closed, while those held
    // are served.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(&h).await;
        stream.write_all(b"GET").await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = connect(&h).await;
    let answer = closed_within(&mut extra, Duration::from_secs(2))
        .await
        .expect("answered at once");
    let answer = parse_answer(&answer);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.problem_type().as_deref(), Some("overloaded"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.delivered("after the cap is freed", &write("/orders/x", "", "{}"))
        .await;
    h.stop().await;
}

trait KeepAlive {
    fn replace_close(self) -> Vec<u8>;
}

impl KeepAlive for Vec<u8> {
    fn replace_close(self) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replacen("connection: close\r\n", "", 1)
            .into_bytes()
    }
}
