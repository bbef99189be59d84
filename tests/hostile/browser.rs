//! Browser requests to the data port: a page's `Origin` must be listed.

use crate::{Hostile, get, send_raw, write};

#[tokio::test]
async fn pages_from_unlisted_origins_are_refused_and_listed_ones_served() {
    let h = Hostile::start_full("", "", "allowed_origins = [\"https://app.example\"]").await;
    let data = h.env.client.data;
    for (case, request) in [
        (
            "a write from another origin",
            write("/orders/x", "origin: http://evil.example\r\n", "{}"),
        ),
        (
            "a text/plain write from a page",
            write(
                "/orders/x",
                "origin: http://127.0.0.1:8080\r\ncontent-type: text/plain\r\n",
                "{}",
            ),
        ),
        (
            "an opaque origin",
            write("/orders/x", "origin: null\r\n", "{}"),
        ),
        (
            "a read from another origin",
            get("/orders/x", "origin: http://evil.example\r\n"),
        ),
    ] {
        h.refused(case, data, &request, 403, "cross-site-request")
            .await;
    }
    h.delivered(
        "a listed origin",
        &write("/orders/x", "origin: https://app.example\r\n", "{}"),
    )
    .await;
    // No Origin: not a page, served as always.
    h.delivered("no origin", &write("/orders/x", "", "{}"))
        .await;
    let answer = send_raw(data, &get("/orders/x", "")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    h.stop().await;
}
