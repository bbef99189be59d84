//! Postgres down, crashed or frozen: writes are refused with 503 and
//! Retry-After within a bounded wait, nothing is acknowledged, and spool
//! recovers on its own when Postgres does.

mod support;

use std::time::{Duration, Instant};

use support::{Reply, TestEnv};

/// commit_timeout_ms is 1000 in the test config; allow slack for a busy machine.
const BOUND: Duration = Duration::from_secs(4);

async fn timed_write(env: &TestEnv, body: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = env.client.post("/orders/x", body.to_owned()).await;
    (reply, started.elapsed())
}

fn assert_refused(reply: &Reply, took: Duration) {
    reply.assert_problem(503);
    assert!(
        reply.header("retry-after").is_some(),
        "503 without Retry-After"
    );
    assert!(took < BOUND, "refused only after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_then_back() {
    // Readiness follows the write path only when asked to.
    let env = TestEnv::start_config(|url| {
        support::set_in(
            &support::config_text(url, ""),
            "server",
            "ready_requires_outbox = true",
        )
    })
    .await;
    assert_eq!(env.client.post("/orders/x", "before").await.status, 202);
    env.pg.crash().await;
    for i in 0..5 {
        let (reply, took) = timed_write(&env, &format!("during-{i}")).await;
        assert_refused(&reply, took);
    }
    let ready = env.client.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"][0]["pass"], false);

    env.pg.restart().await;
    assert_eventually!(env.client.post("/orders/x", "after").await.status == 202);
    assert_eq!(env.client.admin_get("/readyz").await.status, 200);
    let bodies = env
        .pg
        .scalar("SELECT count(*) FROM spool_message WHERE body LIKE 'during%'")
        .await;
    assert_eq!(bodies, 0, "nothing refused was stored");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frozen_then_thawed() {
    let env = TestEnv::start().await;
    assert_eq!(env.client.post("/orders/x", "before").await.status, 202);
    env.pg.freeze();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..8 {
        let client = env.client.clone();
        writes.spawn(async move {
            let started = Instant::now();
            let reply = client.post("/orders/x", format!("frozen-{i}")).await;
            (reply, started.elapsed())
        });
    }
    let mut in_doubt = 0;
    while let Some(result) = writes.join_next().await {
        let (reply, took) = result.unwrap();
        assert_refused(&reply, took);
        if reply.json()["type"] == "urn:spool:problem:outbox-outcome-unknown" {
            in_doubt += 1;
        }
    }
    // By default the check fails without taking the pod out of rotation.
    let started = Instant::now();
    let ready = env.client.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"][0]["name"], "outbox_writable");
    assert_eq!(ready.json()["checks"][0]["pass"], false);
    assert_eq!(ready.json()["checks"][0]["gates_readiness"], false);
    assert!(started.elapsed() < BOUND);

    env.pg.thaw();
    assert_eventually!(env.client.post("/orders/x", "after").await.status == 202);
    // Every acknowledged write is there, and none refused as not stored:
    // their COMMIT was never sent, and the thawed server aborts them.
    assert_eq!(
        env.pg
            .scalar("SELECT count(*) FROM spool_message WHERE body IN ('before', 'after')")
            .await,
        2
    );
    if in_doubt == 0 {
        assert_eq!(
            env.pg
                .scalar("SELECT count(*) FROM spool_message WHERE body LIKE 'frozen%'")
                .await,
            0,
            "a write refused as not stored was stored"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn postgres_down_at_startup_is_waited_for() {
    let pg = support::TestPg::start().await;
    pg.crash().await;
    let config = spool::config::from_toml(&support::config_text(&pg.url, "")).unwrap();
    let starting = tokio::spawn(spool::Spool::start(config));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !starting.is_finished(),
        "spool gave up while Postgres was down"
    );
    pg.restart().await;
    let spool = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("spool started once Postgres was back")
        .unwrap()
        .expect("spool starts");
    spool.shutdown().await;
}
