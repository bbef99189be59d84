//! Bad input gets a problem+json answer with the right status and leaves no
//! row behind.

mod support;

use http::Method;
use support::{TestEnv, http::raw_request};

async fn rows(env: &TestEnv) -> (i64, i64) {
    (
        env.pg.scalar("SELECT count(*) FROM spool_message").await,
        env.pg.scalar("SELECT count(*) FROM spool_delivery").await,
    )
}

#[tokio::test]
async fn unknown_route_is_404() {
    let env = TestEnv::start().await;
    env.client.post("/nope/x", "{}").await.assert_problem(404);
    env.client.post("/", "{}").await.assert_problem(404);
    assert_eq!(rows(&env).await, (0, 0));
    env.stop().await;
}

#[tokio::test]
async fn a_method_the_route_does_not_write_is_405_with_allow() {
    let env = TestEnv::start_with(
        r#"
[[routes]]
name = "append-only"
write_methods = ["POST"]
  [[routes.targets]]
  name = "log"
  url = "http://127.0.0.1:9"
"#,
    )
    .await;
    let reply = env
        .client
        .send(Method::DELETE, "/append-only/x", &[], "")
        .await;
    reply.assert_problem(405);
    assert_eq!(reply.header("allow"), Some("POST, GET, HEAD"));
    env.client
        .send(Method::OPTIONS, "/orders/x", &[], "")
        .await
        .assert_problem(405);
    assert_eq!(rows(&env).await, (0, 0));
    env.stop().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_from_content_length_before_reading() {
    let env = TestEnv::start().await;
    // Declares 10 MB but sends none of it: the answer must not wait for it.
    let answer = raw_request(
        env.client.data,
        "POST /orders/x HTTP/1.1\r\nhost: spool\r\ncontent-length: 10000000\r\nconnection: close\r\n\r\n",
        &[],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    // Exactly the limit is fine; one byte more is not.
    let limit = 65536;
    assert_eq!(
        env.client.post("/orders/x", vec![b'a'; limit]).await.status,
        202
    );
    env.client
        .post("/orders/x", vec![b'a'; limit + 1])
        .await
        .assert_problem(413);
    assert_eq!(rows(&env).await, (1, 2));
    env.stop().await;
}

#[tokio::test]
async fn chunked_body_is_cut_off_at_the_limit() {
    let env = TestEnv::start().await;
    let chunk = format!("{:x}\r\n{}\r\n", 40_000, "b".repeat(40_000));
    let answer = raw_request(
        env.client.data,
        "POST /orders/x HTTP/1.1\r\nhost: spool\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        &[chunk.as_bytes(), chunk.as_bytes(), b"0\r\n\r\n"],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(rows(&env).await, (0, 0));
    env.stop().await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let env = TestEnv::start().await;
    let names: Vec<String> = (0..80).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    env.client
        .send(Method::POST, "/orders/x", &many, "{}")
        .await
        .assert_problem(431);
    let big = "v".repeat(20_000);
    env.client
        .send(Method::POST, "/orders/x", &[("x-big", big.as_str())], "{}")
        .await
        .assert_problem(431);
    assert_eq!(rows(&env).await, (0, 0));
    env.stop().await;
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let env = TestEnv::start().await;
    let long = "k".repeat(300);
    for headers in [
        [("idempotency-key", long.as_str())],
        [("idempotency-key", "")],
        [("spool-ordering-key", long.as_str())],
    ] {
        env.client
            .send(Method::POST, "/orders/x", &headers, "{}")
            .await
            .assert_problem(400);
    }
    assert_eq!(rows(&env).await, (0, 0));
    env.stop().await;
}
