//! Several spools on one database, and spools killed while delivering:
//! shard leases keep each delivery to one sender at a time, and a dead
//! spool's shards are taken over once their leases run out, so nothing is
//! lost.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{Answer, FakeTarget, SpoolProcess, TestClient, TestPg, base_config, route};

fn counts(target: &FakeTarget) -> HashMap<uuid::Uuid, usize> {
    let mut counts = HashMap::new();
    for r in target.received() {
        *counts.entry(r.message_id()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spools_on_one_database_never_send_a_delivery_twice() {
    let pg = TestPg::start().await;
    // Slow enough that both spools are claiming at once.
    let target = FakeTarget::start(|_, _| Answer::Slow(Duration::from_millis(5), 200)).await;
    let text = base_config(&pg.url, &route("orders", &[("t", &target)], ""));
    let a = spool::Spool::start(spool::config::from_toml(&text).unwrap())
        .await
        .unwrap();
    let b = spool::Spool::start(spool::config::from_toml(&text).unwrap())
        .await
        .unwrap();
    let clients = [
        TestClient::new(a.data_addr, a.admin_addr),
        TestClient::new(b.data_addr, b.admin_addr),
    ];
    let mut writers = tokio::task::JoinSet::new();
    for (n, client) in clients.iter().enumerate() {
        let client = client.clone();
        writers.spawn(async move {
            for i in 0..200 {
                assert_eq!(
                    client.post("/orders/x", format!("{n}-{i}")).await.status,
                    202
                );
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    assert_eventually!(counts(&target).len() == 400, Duration::from_secs(30));
    let twice: Vec<_> = counts(&target)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_delivering_loses_nothing() {
    let pg = TestPg::start().await;
    let target = FakeTarget::start(|_, _| Answer::Slow(Duration::from_millis(50), 200)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = base_config(
        &pg.url,
        &route(
            "orders",
            &[("t", &target)],
            "  [routes.rate]\n  concurrency = 8\n",
        ),
    );
    let mut spool = SpoolProcess::start(dir.path(), &text).await;
    let client = spool.client();
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(client.post("/orders/x", format!("{i}")).await.id());
    }
    // Some delivered, some in flight, most still pending.
    assert_eventually!(target.received().len() >= 20);
    spool.kill9();
    let before_restart = counts(&target);
    assert!(
        before_restart.len() < 300,
        "all delivered before the kill; nothing tested"
    );

    let _restarted = SpoolProcess::start(dir.path(), &text).await;
    assert_eventually!(counts(&target).len() == 300, Duration::from_secs(60));
    let counts = counts(&target);
    assert!(
        ids.iter().all(|id| counts.contains_key(id)),
        "a delivery was lost"
    );
    // Duplicates only for what was in flight at the kill (at most the
    // concurrency cap) or delivered but not yet recorded.
    let duplicates = counts.values().filter(|n| **n > 1).count();
    assert!(duplicates <= 8 + 64, "{duplicates} duplicates");
    assert_eventually!(pg.scalar("SELECT count(*) FROM spool_message").await == 0);
}
