//! Paths: what is forwarded stays under the target URL's path.

use crate::{Hostile, get, write};

#[tokio::test]
async fn paths_that_leave_the_route_are_refused_and_the_rest_stay_under_the_base() {
    let h = Hostile::start().await;
    let data = h.env.client.data;
    for (case, path, kind) in [
        ("raw dot-dot", "/orders/../x", "bad-path"),
        ("dot-dot at the end", "/orders/a/../..", "bad-path"),
        ("encoded dot-dot", "/orders/%2e%2e/x", "bad-path"),
        ("upper-case encoded dot-dot", "/orders/%2E%2E/x", "bad-path"),
        ("half-encoded dot-dot", "/orders/.%2e/x", "bad-path"),
        ("dot-dot and encoded slash", "/orders/..%2fx", "bad-path"),
        (
            "dot-dot and encoded backslash",
            "/orders/..%5cx",
            "bad-path",
        ),
        ("an encoded slash", "/orders/a%2Fb", "bad-path"),
        ("a raw backslash", "/orders/..\\x", "bad-path"),
        ("a bad escape", "/orders/a%zz", "bad-path"),
    ] {
        h.refused(case, data, &write(path, "", "{}"), 400, kind)
            .await;
        h.refused(&format!("{case} (read)"), data, &get(path, ""), 400, kind)
            .await;
    }
    // Dot segments that stay inside the route are resolved, not refused.
    for (case, path, forwarded) in [
        ("a dot segment", "/orders/a/./b", "/base/a/b"),
        ("dot-dot inside", "/orders/a/b/../c?q=1", "/base/a/c?q=1"),
        ("an encoded unreserved", "/orders/%7Euser", "/base/~user"),
        ("a plain path", "/orders/v1/items", "/base/v1/items"),
    ] {
        let received = h.delivered(case, &write(path, "", "{}")).await;
        assert_eq!(received.path_and_query, forwarded, "{case}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_route_that_allows_encoded_slashes_still_keeps_them_under_the_base() {
    let h = Hostile::start_with("allow_encoded_slashes = true\n", "").await;
    let data = h.env.client.data;
    let received = h
        .delivered("an allowed encoded slash", &write("/orders/a%2fb", "", ""))
        .await;
    assert_eq!(received.path_and_query, "/base/a%2Fb");
    h.refused(
        "climbing through encoded slashes",
        data,
        &write("/orders/a/..%2f..%2fx", "", ""),
        400,
        "bad-path",
    )
    .await;
    h.stop().await;
}
