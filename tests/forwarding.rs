//! Forwarding against real HTTP targets on 127.0.0.1: at-least-once to
//! every target, retries with a stable Idempotency-Key, the breaker, fan-out
//! independence, per-key ordering, Retry-After, dead letters and replay.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use spool::breaker::BreakerState;
use spool::flow::FlowControl;
use support::{Answer, FakeTarget, TestEnv, route};

const FAST_RETRY: &str = "
  [routes.retry]
  initial_ms = 20
  max_ms = 200
  max_attempts = 50
";

fn ids_received(target: &FakeTarget) -> Vec<uuid::Uuid> {
    target.received().iter().map(|r| r.message_id()).collect()
}

async fn db_count(env: &TestEnv, sql: &str) -> i64 {
    env.pg.scalar(sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_reaches_every_target_as_sent() {
    let billing = FakeTarget::healthy().await;
    let analytics = FakeTarget::healthy().await;
    let env = TestEnv::start_routes(&route(
        "orders",
        &[("billing", &billing), ("analytics", &analytics)],
        "",
    ))
    .await;

    let mut sent = HashMap::new();
    for i in 0..100 {
        let key = format!("key-{i}");
        let mut headers = vec![
            ("content-type", "application/json"),
            ("x-tenant", "acme"),
            ("cookie", "secret"),
        ];
        if i % 2 == 0 {
            headers.push(("idempotency-key", key.as_str()));
        }
        let reply = env
            .client
            .send(
                Method::PATCH,
                &format!("/orders/v1/orders/{i}?dry=false"),
                &headers,
                format!("{{\"i\":{i}}}"),
            )
            .await;
        assert_eq!(reply.status, 202);
        sent.insert(reply.id(), (i, (i % 2 == 0).then_some(key)));
    }
    for target in [&billing, &analytics] {
        assert_eventually!(target.received().len() >= 100);
    }
    for target in [&billing, &analytics] {
        let received = target.received();
        assert_eq!(
            received.len(),
            100,
            "each write once to each healthy target"
        );
        for r in &received {
            let (i, key) = &sent[&r.message_id()];
            assert_eq!(r.method, "PATCH");
            assert_eq!(r.path_and_query, format!("/v1/orders/{i}?dry=false"));
            assert_eq!(r.body, format!("{{\"i\":{i}}}"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("x-tenant"), Some("acme"));
            assert_eq!(r.header("cookie"), None, "not allow-listed");
            assert_eq!(r.header("spool-attempt"), Some("1"));
            let expected_key = key.clone().unwrap_or_else(|| r.message_id().to_string());
            assert_eq!(r.header("idempotency-key"), Some(expected_key.as_str()));
            assert!(
                r.header("traceparent")
                    .is_some_and(|t| t.contains(&r.message_id().simple().to_string()))
            );
        }
    }
    // Delivered rows are removed: the tables do not grow without bound.
    assert_eventually!(db_count(&env, "SELECT count(*) FROM spool_message").await == 0);
    assert_eq!(
        db_count(&env, "SELECT count(*) FROM spool_delivery").await,
        0
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_attempts_are_retried_with_the_same_idempotency_key() {
    // 500, then a reset, then a hang (timeout), then success, per message.
    let flaky = FakeTarget::start(|r, seen| {
        let earlier = seen
            .iter()
            .filter(|s| s.message_id() == r.message_id())
            .count();
        match earlier {
            0 => Answer::Status(500),
            1 => Answer::Reset,
            2 => Answer::Hang,
            _ => Answer::Status(204),
        }
    })
    .await;
    let extra = format!("{FAST_RETRY}\n  [routes.breaker]\n  failure_threshold = 1000\n");
    let env = TestEnv::start_routes(&route("orders", &[("flaky", &flaky)], &extra)).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(env.client.post("/orders/x", format!("{i}")).await.id());
    }
    assert_eventually!(
        flaky.received().iter().filter(|r| r.attempt() == 4).count() == 5,
        Duration::from_secs(20)
    );
    for id in ids {
        let attempts: Vec<_> = flaky
            .received()
            .into_iter()
            .filter(|r| r.message_id() == id)
            .collect();
        assert_eq!(
            attempts.iter().map(|r| r.attempt()).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let keys: HashSet<_> = attempts
            .iter()
            .map(|r| r.header("idempotency-key").unwrap().to_owned())
            .collect();
        assert_eq!(keys.len(), 1, "one Idempotency-Key across attempts");
        let traces: HashSet<_> = attempts
            .iter()
            .map(|r| r.header("traceparent").unwrap()[3..35].to_owned())
            .collect();
        assert_eq!(traces.len(), 1, "one trace id across attempts");
    }
    assert_eventually!(db_count(&env, "SELECT count(*) FROM spool_delivery").await == 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_down_then_back_drains_and_the_breaker_spends_nothing_while_open() {
    let down = FakeTarget::healthy().await;
    let healthy = FakeTarget::healthy().await;
    down.stop();
    let extra =
        format!("{FAST_RETRY}\n  [routes.breaker]\n  failure_threshold = 3\n  open_ms = 4000\n");
    let env = TestEnv::start_routes(&route(
        "orders",
        &[("down", &down), ("healthy", &healthy)],
        &extra,
    ))
    .await;
    let breaker = env.target("orders", "down").breaker;

    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(env.client.post("/orders/x", format!("{i}")).await.id());
    }
    // Fan-out: the healthy target is not held back by the dead one.
    assert_eventually!(healthy.received().len() == 50);
    assert_eventually!(breaker.state() == BreakerState::Open);

    // While open (4 s, well past this window), no attempt is spent:
    // attempt counts stay put.
    let attempts_sql =
        "SELECT coalesce(sum(attempts), 0)::int8 FROM spool_delivery WHERE target = 'down'";
    let before = db_count(&env, attempts_sql).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "the window outlasted the cool-down"
    );
    assert_eq!(
        db_count(&env, attempts_sql).await,
        before,
        "attempts grew while the breaker was open"
    );
    down.restart().await;
    assert_eventually!(
        down.received()
            .iter()
            .map(|r| r.message_id())
            .collect::<HashSet<_>>()
            .len()
            == 50,
        Duration::from_secs(20)
    );
    assert_eq!(breaker.state(), BreakerState::Closed);
    let got: HashSet<_> = ids_received(&down).into_iter().collect();
    assert!(ids.iter().all(|id| got.contains(id)), "nothing lost");
    assert_eventually!(db_count(&env, "SELECT count(*) FROM spool_message").await == 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_key_holds_through_retries_and_a_poisoned_key_blocks_no_other() {
    // Key "a": its first message fails twice. Key "poison": always 500.
    let target = FakeTarget::start(|r, seen| {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        if body.starts_with("poison") {
            return Answer::Status(500);
        }
        if body == "a-0" && seen.iter().filter(|s| s.body == r.body).count() < 2 {
            return Answer::Status(503);
        }
        Answer::Status(200)
    })
    .await;
    let extra = format!("{FAST_RETRY}\n  [routes.breaker]\n  failure_threshold = 1000\n");
    let env = TestEnv::start_routes(&route("orders", &[("t", &target)], &extra)).await;
    for i in 0..3 {
        env.client
            .send(
                Method::POST,
                "/orders/x",
                &[("spool-ordering-key", "poison")],
                format!("poison-{i}"),
            )
            .await;
    }
    for i in 0..10 {
        for key in ["a", "b"] {
            let reply = env
                .client
                .send(
                    Method::POST,
                    "/orders/x",
                    &[("spool-ordering-key", key)],
                    format!("{key}-{i}"),
                )
                .await;
            assert_eq!(reply.status, 202);
        }
        env.client.post("/orders/x", format!("free-{i}")).await;
    }
    let delivered = |prefix: &'static str| {
        let target = target.clone();
        move || {
            let mut order = Vec::new();
            for r in target.received() {
                let body = String::from_utf8_lossy(&r.body).into_owned();
                if body.starts_with(prefix) && !order.contains(&body) {
                    order.push(body);
                }
            }
            order
        }
    };
    let (a, b, free) = (delivered("a-"), delivered("b-"), delivered("free-"));
    assert_eventually!(
        a().len() == 10 && b().len() == 10 && free().len() == 10,
        Duration::from_secs(20)
    );
    let expected = |key: &str| (0..10).map(|i| format!("{key}-{i}")).collect::<Vec<_>>();
    assert_eq!(
        a(),
        expected("a"),
        "key a in acceptance order despite its head failing"
    );
    assert_eq!(b(), expected("b"));
    // Within key a, nothing after a-0 was sent before a-0 succeeded.
    let received = target.received();
    let a0_success = received
        .iter()
        .filter(|r| r.body == "a-0")
        .nth(2)
        .unwrap()
        .at;
    assert!(
        received
            .iter()
            .filter(|r| r.body == "a-1")
            .all(|r| r.at >= a0_success)
    );
    // Only the poisoned key's head was tried: its followers wait.
    let poisoned: HashSet<_> = received
        .iter()
        .filter(|r| r.body.starts_with(b"poison"))
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(
        poisoned.len(),
        1,
        "only the head of the poisoned key was sent"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let target = FakeTarget::start(|r, seen| {
        if seen.iter().any(|s| s.message_id() == r.message_id()) {
            Answer::Status(200)
        } else {
            Answer::RetryAfter(429, 1)
        }
    })
    .await;
    let extra = "  [routes.retry]\n  initial_ms = 20\n  max_ms = 5000\n";
    let env = TestEnv::start_routes(&route("orders", &[("t", &target)], extra)).await;
    env.client.post("/orders/x", "x").await;
    assert_eventually!(target.received().len() == 2);
    let received = target.received();
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before Retry-After: 1"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_at_once_and_a_replay_is_delivered() {
    let target = FakeTarget::start(|_, _| Answer::Status(400)).await;
    let env = TestEnv::start_routes(&route("orders", &[("t", &target)], FAST_RETRY)).await;
    let id = env.client.post("/orders/x", "bad").await.id();
    let dead_sql = "SELECT count(*) FROM spool_delivery WHERE state = 'dead'";
    assert_eventually!(db_count(&env, dead_sql).await == 1);
    assert_eq!(target.received().len(), 1, "a 400 is not retried");

    let pool = env.pg.pool();
    let client = pool.get().await.unwrap();
    let query = spool::outbox::DeadLetterQuery {
        limit: 10,
        ..Default::default()
    };
    let dead = spool::outbox::list_dead(&client, &query).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].message_id, dead[0].attempts, dead[0].last_status),
        (id, 1, Some(400))
    );
    assert!(dead[0].last_error.as_deref().unwrap().contains("400"));

    target.set_rule(|_, _| Answer::Status(200));
    let selection = spool::outbox::DeadLetterSelection {
        message_id: Some(id),
        ..Default::default()
    };
    let routes = spool::outbox::replay_dead(&client, &selection)
        .await
        .unwrap();
    assert_eq!(routes, ["orders"]);
    assert_eventually!(target.received().len() == 2);
    assert_eq!(
        target.received()[1].attempt(),
        1,
        "attempts reset on replay"
    );
    assert_eventually!(db_count(&env, "SELECT count(*) FROM spool_message").await == 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_page_by_filter_and_can_be_deleted() {
    let target = FakeTarget::start(|_, _| Answer::Status(404)).await;
    let other = FakeTarget::healthy().await;
    let routes = route("orders", &[("t", &target), ("ok", &other)], "");
    let env = TestEnv::start_routes(&routes).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(env.client.post("/orders/x", format!("{i}")).await.id());
    }
    assert_eventually!(
        db_count(
            &env,
            "SELECT count(*) FROM spool_delivery WHERE state = 'dead'"
        )
        .await
            == 5
    );
    let pool = env.pg.pool();
    let mut client = pool.get().await.unwrap();
    let mut query = spool::outbox::DeadLetterQuery {
        target: Some("t".into()),
        limit: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = spool::outbox::list_dead(&client, &query).await.unwrap();
        let Some(last) = page.last() else { break };
        query.after = Some((last.dead_at, last.message_id, last.target.clone()));
        seen.extend(page.iter().map(|d| d.message_id));
    }
    assert_eq!(seen.len(), 5, "paging visits each dead letter once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);
    query.target = Some("ok".into());
    query.after = None;
    assert!(
        spool::outbox::list_dead(&client, &query)
            .await
            .unwrap()
            .is_empty()
    );

    let deleted = spool::outbox::delete_dead(&mut client, ids[0], None)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // The healthy target got it, the dead letter is gone: so is the message.
    let gone: i64 = client
        .query_one(
            "SELECT count(*) FROM spool_message WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_zero_stops_sending_until_changed_at_run_time() {
    let target = FakeTarget::healthy().await;
    let extra = "  [routes.rate]\n  per_second = 0\n  concurrency = 4\n";
    let env = TestEnv::start_routes(&route("orders", &[("t", &target)], extra)).await;
    for i in 0..20 {
        assert_eq!(
            env.client.post("/orders/x", format!("{i}")).await.status,
            202
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(target.received().is_empty(), "sent while the rate was 0");

    let flow = env.target("orders", "t").flow;
    flow.set_rate(10.0, Some(1));
    assert_eq!(
        (flow.settings().per_second, flow.settings().burst),
        (10.0, 1)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = target.received().len();
    assert!(
        (2..=9).contains(&early),
        "{early} sent in 0.5 s at 10/s with burst 1"
    );
    flow.set_paused(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused_at = target.received().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(target.received().len(), paused_at, "sent while paused");
    flow.set_paused(false);
    flow.set_rate(1000.0, None);
    assert_eventually!(target.received().len() == 20);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_what_was_not_sent_and_hands_its_shards_back() {
    let target = FakeTarget::start(|_, _| Answer::Slow(Duration::from_millis(300), 200)).await;
    let extra = "  [routes.rate]\n  concurrency = 1\n";
    let mut env = TestEnv::start_routes(&route("orders", &[("t", &target)], extra)).await;
    for i in 0..20 {
        assert_eq!(
            env.client.post("/orders/x", format!("{i}")).await.status,
            202
        );
    }
    assert_eventually!(!target.received().is_empty());
    let owned = "SELECT count(*) FROM spool_shard WHERE owner IS NOT NULL AND lease_until > now()";
    assert_eq!(
        db_count(&env, owned).await,
        16,
        "one spool owns every shard"
    );
    env.spool.take().unwrap().shutdown().await;
    assert_eq!(
        db_count(&env, owned).await,
        0,
        "shards held past shutdown: another spool would wait for their leases to run out"
    );
    let left = db_count(&env, "SELECT count(*) FROM spool_delivery").await;
    let delivered = target.received().len() as i64;
    assert_eq!(
        left + delivered,
        20,
        "{left} left and {delivered} delivered"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed() {
    let elsewhere = FakeTarget::healthy().await;
    let location = format!("{}/moved", elsewhere.url());
    let target = FakeTarget::start(move |_, _| {
        Answer::Full(302, vec![("location", location.clone())], "".into())
    })
    .await;
    let env = TestEnv::start_routes(&route("orders", &[("t", &target)], FAST_RETRY)).await;
    env.client.post("/orders/x", "x").await;
    let dead_sql = "SELECT count(*) FROM spool_delivery WHERE state = 'dead' AND last_status = 302";
    assert_eventually!(db_count(&env, dead_sql).await == 1);
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
    env.stop().await;
}

/// A target taking 10 ms per request, two at a time, read four at a
/// time (so that batches come back full and reads go after the cursor),
/// paused while the test builds its backlog.
async fn slow_paused_target_small_batches() -> (FakeTarget, TestEnv, Arc<FlowControl>) {
    let target = FakeTarget::start(|_, _| Answer::Slow(Duration::from_millis(10), 200)).await;
    let extra = "  [routes.rate]\n  concurrency = 2\n";
    let rest = route("orders", &[("t", &target)], extra);
    let env = TestEnv::start_config(|url| {
        support::set_in(
            &support::base_config(url, &rest),
            "dispatch",
            "claim_batch = 4",
        )
    })
    .await;
    let flow = env.target("orders", "t").flow;
    flow.set_paused(true);
    (target, env, flow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_due_behind_the_read_cursor_is_found_within_a_poll() {
    let (target, env, flow) = slow_paused_target_small_batches().await;
    let mut last = None;
    for i in 0..300 {
        let reply = env.client.post("/orders/x", format!("{i}")).await;
        assert_eq!(reply.status, 202);
        last = Some(reply.id());
    }
    let last = last.unwrap();
    flow.set_paused(false);
    assert_eventually!(target.received().len() >= 20);
    // The newest write now sorts first, as a late commit or a delivery
    // given back by another spool would: behind where reads start.
    let client = env.pg.client().await;
    let moved = client
        .execute(
            "UPDATE spool_delivery SET next_attempt_at = now() - interval '1 hour'
             WHERE message_id = $1 AND state = 'queued'",
            &[&last],
        )
        .await
        .unwrap();
    assert_eq!(moved, 1, "the newest write was delivered already");
    assert_eventually!(ids_received(&target).contains(&last));
    let delivered = target.received().len();
    assert!(
        delivered < 200,
        "found only after {delivered} of 300: when the backlog ran out, not within a poll"
    );
    assert_eventually!(target.received().len() >= 300, Duration::from_secs(20));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_next_delivery_is_not_left_behind_by_a_backlog() {
    let (target, env, flow) = slow_paused_target_small_batches().await;
    let mut keyed = Vec::new();
    for i in 0..600 {
        let headers: &[(&str, &str)] = if i % 3 == 0 && keyed.len() < 10 {
            &[("spool-ordering-key", "k")]
        } else {
            &[]
        };
        let reply = env
            .client
            .send(Method::POST, "/orders/x", headers, format!("{i}"))
            .await;
        assert_eq!(reply.status, 202);
        if !headers.is_empty() {
            keyed.push(reply.id());
        }
    }
    flow.set_paused(false);
    // Each of the key's deliveries is sent only once the one
    // before it is delivered, while the unkeyed backlog is being read.
    assert_eventually!({
        let received = ids_received(&target);
        keyed.iter().all(|id| received.contains(id))
    });
    let delivered = target.received().len();
    assert!(
        delivered < 300,
        "the key's 10 deliveries took until {delivered} of 600 were delivered"
    );
    let order: Vec<_> = ids_received(&target)
        .into_iter()
        .filter(|id| keyed.contains(id))
        .collect();
    assert_eq!(order, keyed, "the key's deliveries out of order");
    env.stop().await;
}

/// The value of the series `name{route="orders",target="t"}` on /metrics.
async fn target_metric(env: &TestEnv, name: &str) -> Option<f64> {
    let text = env.client.admin_get("/metrics").await.body;
    let series = format!("{name}{{route=\"orders\",target=\"t\"}} ");
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str())?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_its_oldest_age_and_dead_letters_are_metrics() {
    let target =
        FakeTarget::start(|r, _| Answer::Status(if r.body.as_ref() == b"bad" { 400 } else { 200 }))
            .await;
    let rest = route("orders", &[("t", &target)], "");
    let env = TestEnv::start_config(|url| {
        support::set_in(
            &support::base_config(url, &rest),
            "dispatch",
            "backlog_interval_ms = 100",
        )
    })
    .await;
    let flow = env.target("orders", "t").flow;
    flow.set_paused(true);
    for body in ["a", "b", "c", "d", "e", "bad"] {
        assert_eq!(env.client.post("/orders/x", body).await.status, 202);
    }
    assert_eventually!(target_metric(&env, "spool_backlog").await == Some(6.0));
    assert_eventually!(
        target_metric(&env, "spool_oldest_pending_age_seconds")
            .await
            .is_some_and(|age| age >= 0.2)
    );
    assert_eq!(target_metric(&env, "spool_dead_letters").await, Some(0.0));
    flow.set_paused(false);
    assert_eventually!(target_metric(&env, "spool_dead_letters").await == Some(1.0));
    assert_eventually!(target_metric(&env, "spool_backlog").await == Some(0.0));
    assert_eq!(
        target_metric(&env, "spool_oldest_pending_age_seconds").await,
        Some(0.0)
    );
    env.stop().await;
}
