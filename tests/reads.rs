//! Reads through spool against real upstreams on 127.0.0.1: fresh answers
//! byte for byte, the kept copy when the upstream fails, and what must
//! never be kept.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::{Answer, FakeTarget, Reply, TestEnv, route};

async fn get(env: &TestEnv, path: &str, headers: &[(&str, &str)]) -> Reply {
    env.client.send(Method::GET, path, headers, "").await
}

fn ok(body: &str, headers: &[(&'static str, &str)]) -> Answer {
    let headers = headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
    Answer::Full(200, headers, Bytes::from(body.to_owned()))
}

fn assert_stale(reply: &Reply, body: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, body);
    assert_eq!(reply.header("spool-cache"), Some("stale"));
    assert!(reply.header("age").is_some(), "stale answer without Age");
    assert!(
        reply
            .header("cache-status")
            .is_some_and(|s| s.starts_with("spool; hit")),
        "{reply:?}"
    );
}

async fn env_for(upstream: &FakeTarget, extra: &str) -> TestEnv {
    TestEnv::start_routes(&route("catalog", &[("api", upstream)], extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_answers_byte_for_byte_then_the_kept_copy_on_every_failure() {
    let body: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let kept = Bytes::from(body.clone());
    let upstream = FakeTarget::start(move |_, _| {
        Answer::Full(
            200,
            vec![
                ("content-type", "application/octet-stream".into()),
                ("x-v", "1".into()),
            ],
            kept.clone(),
        )
    })
    .await;
    let env = env_for(&upstream, "").await;
    let fresh = get(&env, "/catalog/items/1?lang=en", &[]).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.body, body);
    assert_eq!(fresh.header("spool-cache"), Some("fresh"));
    assert_eq!(fresh.header("x-v"), Some("1"));
    assert_eq!(upstream.received()[0].path_and_query, "/items/1?lang=en");

    let failures = [
        Answer::Status(500),
        Answer::Status(503),
        Answer::Hang,
        Answer::Reset,
    ];
    for failure in failures {
        let answer = failure.clone();
        upstream.set_rule(move |_, _| answer.clone());
        let reply = get(&env, "/catalog/items/1?lang=en", &[]).await;
        assert_eq!(reply.status, 200, "{failure:?}: {reply:?}");
        assert_eq!(reply.body, body, "{failure:?}");
        assert_eq!(reply.header("spool-cache"), Some("stale"), "{failure:?}");
        assert_eq!(reply.header("x-v"), Some("1"));
        assert!(reply.header("age").is_some());
    }
    upstream.stop();
    let down = get(&env, "/catalog/items/1?lang=en", &[]).await;
    assert_eq!(down.body, body);
    assert_eq!(down.header("spool-cache"), Some("stale"));
    assert!(
        down.header("cache-status")
            .unwrap()
            .contains("upstream unreachable")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_kept_is_502_or_504_on_timeout() {
    let upstream = FakeTarget::start(|_, _| Answer::Status(500)).await;
    let env = env_for(&upstream, "").await;
    let reply = get(&env, "/catalog/x", &[]).await;
    reply.assert_problem(502);
    assert_eq!(reply.header("spool-cache"), Some("miss"));
    upstream.set_rule(|_, _| Answer::Hang);
    get(&env, "/catalog/x", &[]).await.assert_problem(504);
    upstream.stop();
    get(&env, "/catalog/x", &[]).await.assert_problem(502);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_cookies_and_authorized_answers_are_never_served_stale() {
    let upstream = FakeTarget::start(|r, _| match r.path_and_query.as_str() {
        "/no-store" => ok("a", &[("cache-control", "no-store")]),
        "/private" => ok("b", &[("cache-control", "private, max-age=60")]),
        "/cookie" => ok("c", &[("set-cookie", "session=42")]),
        "/public" => ok("d", &[("cache-control", "public, max-age=60")]),
        _ => ok("e", &[]),
    })
    .await;
    let env = env_for(&upstream, "").await;
    let bearer = [("authorization", "Bearer t")];
    for (path, headers) in [
        ("/catalog/no-store", &[][..]),
        ("/catalog/private", &[][..]),
        ("/catalog/cookie", &[][..]),
        ("/catalog/authorized", &bearer[..]),
        ("/catalog/public", &bearer[..]),
    ] {
        assert_eq!(get(&env, path, headers).await.status, 200);
    }
    upstream.set_rule(|_, _| Answer::Status(503));
    for path in ["/catalog/no-store", "/catalog/private", "/catalog/cookie"] {
        get(&env, path, &[]).await.assert_problem(502);
    }
    get(&env, "/catalog/authorized", &bearer)
        .await
        .assert_problem(502);
    assert_stale(&get(&env, "/catalog/public", &bearer).await, "d");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let upstream = FakeTarget::start(|r, _| {
        let lang = r.header("accept-language").unwrap_or("none").to_owned();
        ok(&format!("hello in {lang}"), &[("vary", "Accept-Language")])
    })
    .await;
    let env = env_for(&upstream, "").await;
    for lang in ["en", "fr"] {
        get(&env, "/catalog/greeting", &[("accept-language", lang)]).await;
    }
    upstream.set_rule(|_, _| Answer::Status(500));
    for lang in ["en", "fr"] {
        let reply = get(&env, "/catalog/greeting", &[("accept-language", lang)]).await;
        assert_stale(&reply, &format!("hello in {lang}"));
    }
    get(&env, "/catalog/greeting", &[("accept-language", "de")])
        .await
        .assert_problem(502);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_and_stale_if_error_bound_the_fallback() {
    let upstream = FakeTarget::start(|r, _| match r.path_and_query.as_str() {
        "/sie" => ok("sie", &[("cache-control", "max-age=0, stale-if-error=1")]),
        _ => ok("plain", &[]),
    })
    .await;
    let env = env_for(&upstream, "  [routes.read]\n  max_stale_s = 2\n").await;
    get(&env, "/catalog/sie", &[]).await;
    get(&env, "/catalog/plain", &[]).await;
    upstream.set_rule(|_, _| Answer::Status(502));
    assert_stale(&get(&env, "/catalog/sie", &[]).await, "sie");
    assert_stale(&get(&env, "/catalog/plain", &[]).await, "plain");
    // The request's own max-stale=0 refuses any staleness.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get(&env, "/catalog/plain", &[("cache-control", "max-stale=0")])
        .await
        .assert_problem(502);
    // stale-if-error=1 has run out; the route's max_stale (2 s) has not.
    get(&env, "/catalog/sie", &[]).await.assert_problem(502);
    assert_stale(&get(&env, "/catalog/plain", &[]).await, "plain");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    get(&env, "/catalog/plain", &[]).await.assert_problem(502);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_proxied_and_falls_back_on_the_kept_get() {
    let upstream = FakeTarget::start(|_, _| ok("body", &[("x-k", "v")])).await;
    let env = env_for(&upstream, "").await;
    let head = env.client.send(Method::HEAD, "/catalog/h", &[], "").await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    assert_eq!(upstream.received()[0].method, "HEAD");
    get(&env, "/catalog/h", &[]).await;
    upstream.set_rule(|_, _| Answer::Status(500));
    let head = env.client.send(Method::HEAD, "/catalog/h", &[], "").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("spool-cache"), Some("stale"));
    assert_eq!(head.header("x-k"), Some("v"));
    assert!(head.body.is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_streamed_not_held_and_not_kept() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
    let chunks: Vec<Bytes> = (0..8).map(|_| chunk.clone()).collect();
    let gate_for_rule = Arc::clone(&gate);
    let upstream =
        FakeTarget::start(move |_, _| Answer::Streamed(chunks.clone(), Arc::clone(&gate_for_rule)))
            .await;
    let env = env_for(&upstream, "").await;

    // The first megabyte must reach the client while the upstream is still
    // holding back the rest: spool streams rather than buffering.
    let mut stream = tokio::net::TcpStream::connect(env.client.data)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /catalog/big HTTP/1.1\r\nhost: spool\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let first_mb = tokio::time::timeout(Duration::from_secs(5), async {
        while received.len() < 1024 * 1024 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        first_mb.is_ok(),
        "the first chunk was held back: the body is not streamed"
    );
    gate.notify_one();
    stream.read_to_end(&mut received).await.unwrap();
    let body_start = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &received[body_start..];
    let payload: usize = body.iter().filter(|b| **b == b'x').count();
    assert_eq!(payload, 8 * 1024 * 1024, "the whole body arrived");

    // Larger than read_cache.max_entry_bytes (1 MiB): not kept.
    upstream.set_rule(|_, _| Answer::Status(500));
    get(&env, "/catalog/big", &[]).await.assert_problem(502);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_request() {
    let upstream = FakeTarget::start(|_, _| Answer::Slow(Duration::from_millis(300), 200)).await;
    let env = env_for(&upstream, "").await;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = env.client.clone();
        readers.spawn(async move { client.send(Method::GET, "/catalog/hot", &[], "").await });
    }
    while let Some(reply) = readers.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "status 200");
    }
    assert_eq!(upstream.received().len(), 1, "the upstream was stampeded");

    // Failing slowly: followers get the fallback without asking again.
    upstream.set_rule(|_, _| Answer::Slow(Duration::from_millis(300), 503));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = env.client.clone();
        readers.spawn(async move { client.send(Method::GET, "/catalog/hot", &[], "").await });
    }
    while let Some(reply) = readers.join_next().await {
        assert_eq!(reply.unwrap().header("spool-cache"), Some("stale"));
    }
    assert_eq!(upstream.received().len(), 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_spool_still_serves_the_kept_copy_from_postgres() {
    let upstream = FakeTarget::start(|_, _| ok("remembered", &[])).await;
    let env = env_for(&upstream, "").await;
    get(&env, "/catalog/r", &[]).await;
    assert_eventually!(env.pg.scalar("SELECT count(*) FROM spool_read_cache").await == 1);
    let TestEnv { pg, spool, .. } = env;
    spool.unwrap().shutdown().await;

    upstream.stop();
    let text = support::base_config(&pg.url, &route("catalog", &[("api", &upstream)], ""));
    let restarted = spool::Spool::start(spool::config::from_toml(&text).unwrap())
        .await
        .unwrap();
    let client = support::TestClient::new(restarted.data_addr, restarted.admin_addr);
    assert_stale(
        &client.send(Method::GET, "/catalog/r", &[], "").await,
        "remembered",
    );
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_sends_reads_to_the_kept_copy_without_asking() {
    let upstream = FakeTarget::start(|r, _| {
        if r.method == "GET" {
            ok("kept", &[])
        } else {
            Answer::Status(503)
        }
    })
    .await;
    let extra = "  [routes.breaker]\n  failure_threshold = 2\n  open_ms = 60000\n  [routes.retry]\n  initial_ms = 10\n  max_ms = 50\n";
    let env = env_for(&upstream, extra).await;
    get(&env, "/catalog/k", &[]).await;
    for i in 0..3 {
        env.client.post("/catalog/k", format!("{i}")).await;
    }
    let breaker = env.target("catalog", "api").breaker;
    assert_eventually!(breaker.state() == spool::breaker::BreakerState::Open);
    let gets_before = upstream
        .received()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    let reply = get(&env, "/catalog/k", &[]).await;
    assert_stale(&reply, "kept");
    assert!(
        reply
            .header("cache-status")
            .unwrap()
            .contains("circuit open")
    );
    let gets_after = upstream
        .received()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(
        gets_after, gets_before,
        "a read reached the upstream while its breaker was open"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_reads_of_different_variants_each_get_their_own() {
    let upstream = FakeTarget::start(|r, _| {
        let lang = r.header("accept-language").unwrap_or("none").to_owned();
        // Slow, so the two first reads overlap (a rule cannot await; the
        // short block of one runtime thread only slows the test down).
        std::thread::sleep(Duration::from_millis(200));
        ok(&format!("hello in {lang}"), &[("vary", "Accept-Language")])
    })
    .await;
    let env = env_for(&upstream, "").await;
    let mut readers = tokio::task::JoinSet::new();
    for lang in ["en", "fr", "en", "fr"] {
        let client = env.client.clone();
        readers.spawn(async move {
            let reply = client
                .send(
                    Method::GET,
                    "/catalog/greeting",
                    &[("accept-language", lang)],
                    "",
                )
                .await;
            (lang, reply)
        });
    }
    while let Some(done) = readers.join_next().await {
        let (lang, reply) = done.unwrap();
        assert_eq!(reply.body, format!("hello in {lang}"));
    }
    env.stop().await;
}
