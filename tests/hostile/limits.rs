//! Limits and timeouts: slow peers on either side hold nothing for long and
//! never make spool claim or repeat more than it knows.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::support::Answer;
use crate::{Hostile, write};

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
    h.env.stop().await;
}
