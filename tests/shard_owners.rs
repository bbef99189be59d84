//! Shard owners and per-key lanes: a key's deliveries follow each other as
//! fast as the target answers; spools on one database share a target's
//! shards, never send a delivery twice without a crash, and keep each key's
//! order across owners, through kill -9 and a paused owner; and spools of
//! the previous protocol are fenced out by the migration.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::Method;
use support::{Answer, FakeTarget, SpoolProcess, TestClient, TestEnv, TestPg, base_config, route};
use uuid::Uuid;

/// What `target` received, as (ordering key, body) in arrival order.
fn arrivals(target: &FakeTarget) -> Vec<(String, String)> {
    target
        .received()
        .iter()
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body).into_owned();
            let key = body.split(':').next().unwrap_or_default().to_owned();
            (key, body)
        })
        .collect()
}

/// Writes `per_key` messages on each of `keys` keys, interleaved, with
/// bodies `key:n`; returns the bodies of each key in acceptance order.
async fn write_keyed(
    client: &TestClient,
    keys: usize,
    per_key: usize,
) -> HashMap<String, Vec<String>> {
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for n in 0..per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            let body = format!("{key}:{n}");
            let reply = client
                .send(
                    Method::POST,
                    "/orders/x",
                    &[("spool-ordering-key", key.as_str())],
                    body.clone(),
                )
                .await;
            assert_eq!(reply.status, 202);
            sent.entry(key).or_default().push(body);
        }
    }
    sent
}

/// Each key's deliveries arrived in acceptance order, counting a delivery
/// sent again (after a crash) only where it first arrived: a replayed
/// prefix is allowed, a later message overtaking an earlier one is not.
fn assert_order_kept(target: &FakeTarget, sent: &HashMap<String, Vec<String>>) {
    let mut first_seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    for (key, body) in arrivals(target) {
        if seen.insert(body.clone()) {
            first_seen.entry(key).or_default().push(body);
        }
    }
    for (key, bodies) in sent {
        assert_eq!(
            first_seen.get(key),
            Some(bodies),
            "key {key} arrived out of order or incomplete"
        );
    }
}

/// Distinct messages `target` received.
fn distinct(target: &FakeTarget) -> usize {
    let ids: HashSet<Uuid> = target.received().iter().map(|r| r.message_id()).collect();
    ids.len()
}

fn duplicates(target: &FakeTarget) -> usize {
    target.received().len() - distinct(target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_next_delivery_goes_as_soon_as_the_previous_is_answered() {
    let target = FakeTarget::healthy().await;
    let rest = route("orders", &[("t", &target)], "");
    let env = TestEnv::start_config(|url| {
        base_config(url, &rest).replace("poll_interval_ms = 200", "poll_interval_ms = 30000")
    })
    .await;
    // Nothing written yet: the first read of the poll has found nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let sent = write_keyed(&env.client, 1, 200).await;
    assert_eventually!(target.received().len() >= 200, Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "200 deliveries of one key took {:?}",
        started.elapsed()
    );
    assert_order_kept(&target, &sent);
    assert_eq!(duplicates(&target), 0);
    env.stop().await;
}

/// Shards of (orders, t) each spool owns, by owner.
async fn owners(pg: &TestPg) -> HashMap<String, i64> {
    let client = pg.client().await;
    client
        .query(
            "SELECT owner, count(*) FROM spool_shard
             WHERE owner IS NOT NULL AND lease_until > now() GROUP BY owner",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_spools_share_the_shards_send_once_and_keep_each_keys_order() {
    let pg = TestPg::start().await;
    let target = FakeTarget::start(|_, _| Answer::Slow(Duration::from_millis(2), 200)).await;
    let text = base_config(&pg.url, &route("orders", &[("t", &target)], ""));
    let mut spools = Vec::new();
    for _ in 0..3 {
        let config = spool::config::from_toml(&text).unwrap();
        spools.push(spool::Spool::start(config).await.unwrap());
    }
    // 16 shards over three spools: 6, 5 and 5 once they have rebalanced.
    assert_eventually!(
        {
            let owners = owners(&pg).await;
            let mut counts: Vec<_> = owners.values().copied().collect();
            counts.sort();
            counts == vec![5, 5, 6]
        },
        Duration::from_secs(20)
    );
    let clients: Vec<_> = spools
        .iter()
        .map(|s| TestClient::new(s.data_addr, s.admin_addr))
        .collect();
    // Each spool's admin API shows the same owners, and its own share.
    let mut held = Vec::new();
    for client in &clients {
        let routes = client.admin_get("/admin/routes").await.json();
        let shards = &routes["routes"][0]["targets"][0]["shards"];
        assert_eq!(shards["count"], 16, "{shards}");
        assert_eq!(shards["unowned"], 0, "{shards}");
        let each = shards["each"].as_array().unwrap();
        let mine = each.iter().filter(|s| s["mine"] == true).count();
        assert_eq!(shards["held_here"], mine);
        assert!(
            each.iter()
                .all(|s| s["owner"].is_string() && s["epoch"].as_i64() > Some(0))
        );
        held.push(mine);
    }
    held.sort();
    assert_eq!(held, vec![5, 5, 6]);
    // And its metrics, once the backlog reader has run.
    for client in &clients {
        assert_eventually!(
            {
                let metrics = client.admin_get("/metrics").await;
                let text = String::from_utf8_lossy(&metrics.body).into_owned();
                text.contains("spool_shards_unowned{route=\"orders\",target=\"t\"} 0")
                    && (5..=6).any(|n| {
                        text.contains(&format!(
                            "spool_shards_held{{route=\"orders\",target=\"t\"}} {n}"
                        ))
                    })
            },
            Duration::from_secs(20)
        );
    }
    // Each spool takes writes for every key: its owner may be another.
    let mut writers = tokio::task::JoinSet::new();
    for (n, client) in clients.into_iter().enumerate() {
        writers.spawn(async move {
            let mut sent = HashMap::new();
            for i in 0..100 {
                let key = format!("s{n}k{}", i % 10);
                let body = format!("{key}:{i}");
                let reply = client
                    .send(
                        Method::POST,
                        "/orders/x",
                        &[("spool-ordering-key", key.as_str())],
                        body.clone(),
                    )
                    .await;
                assert_eq!(reply.status, 202);
                sent.entry(key).or_insert_with(Vec::new).push(body);
            }
            sent
        });
    }
    let mut sent = HashMap::new();
    while let Some(done) = writers.join_next().await {
        sent.extend(done.unwrap());
    }
    assert_eventually!(target.received().len() >= 300, Duration::from_secs(30));
    assert_eq!(duplicates(&target), 0, "sent twice without a crash");
    assert_order_kept(&target, &sent);
    for spool in spools {
        spool.shutdown().await;
    }
    assert!(owners(&pg).await.is_empty(), "a lease outlived its spool");
}

/// Two spool processes on one database sending to a target that takes
/// `answer_ms` per request, once each owns a share of the shards.
struct TwoOwners {
    pg: TestPg,
    target: FakeTarget,
    spools: [SpoolProcess; 2],
    _dirs: [tempfile::TempDir; 2],
}

async fn two_owners(answer_ms: u64, extra: &str) -> TwoOwners {
    let pg = TestPg::start().await;
    let answer = Duration::from_millis(answer_ms);
    let target = FakeTarget::start(move |_, _| Answer::Slow(answer, 200)).await;
    let text = base_config(&pg.url, &route("orders", &[("t", &target)], extra));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let spools = [
        SpoolProcess::start(dirs[0].path(), &text).await,
        SpoolProcess::start(dirs[1].path(), &text).await,
    ];
    assert_eventually!(owners(&pg).await.len() == 2, Duration::from_secs(20));
    TwoOwners {
        pg,
        target,
        spools,
        _dirs: dirs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_owner_hands_its_shards_over_within_the_lease_and_keeps_order() {
    // 16 keys, one delivery at a time each: 160/s at most.
    let TwoOwners {
        pg,
        target,
        spools: [mut doomed, survivor],
        _dirs,
    } = two_owners(100, "").await;
    let sent = write_keyed(&survivor.client(), 16, 25).await;
    assert_eventually!(target.received().len() >= 50);
    doomed.kill9();
    assert!(
        target.received().len() < 400,
        "all delivered before the kill"
    );
    // Its leases run out (slowest timeout + margin: 2 s here), then the
    // survivor takes every shard.
    assert_eventually!(
        owners(&pg).await.values().sum::<i64>() == 16 && owners(&pg).await.len() == 1,
        Duration::from_secs(10)
    );
    assert_eventually!(distinct(&target) == 400, Duration::from_secs(30));
    assert_order_kept(&target, &sent);
    // Sent again: only what was in flight or answered and not yet recorded.
    let again = duplicates(&target);
    assert!(again <= 64, "{again} sent twice");
    assert_eventually!(pg.scalar("SELECT count(*) FROM spool_message").await == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_sends_nothing_once_its_lease_is_gone_and_records_nothing_over_its_successor()
 {
    let TwoOwners {
        pg,
        target,
        spools: [paused, other],
        _dirs,
    } = two_owners(20, "  [routes.rate]\n  concurrency = 2\n").await;
    let sent = write_keyed(&other.client(), 16, 20).await;
    assert_eventually!(target.received().len() >= 40);
    signal(&paused, "STOP");
    // Past its lease: the other spool owns everything.
    assert_eventually!(owners(&pg).await.len() == 1, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&paused, "CONT");
    assert_eventually!(distinct(&target) == 320, Duration::from_secs(30));
    assert_order_kept(&target, &sent);
    // At most what it had in flight (its concurrency), and what was
    // answered but not recorded when it stopped.
    let again = duplicates(&target);
    assert!(again <= 2 + 64, "{again} sent twice");
    assert_eventually!(pg.scalar("SELECT count(*) FROM spool_message").await == 0);
    // It takes its share again, and the database stays consistent.
    assert_eventually!(owners(&pg).await.len() == 2, Duration::from_secs(20));
}

fn signal(process: &SpoolProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(process.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The claim of the previous protocol (migration 4), as its spools run it.
const OLD_CLAIM: &str = "
WITH due AS (
    SELECT d.ctid FROM spool_delivery d
    WHERE d.route = $1 AND d.target = $2 AND d.state = 'pending' AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at, d.seq LIMIT 100 FOR UPDATE SKIP LOCKED
)
UPDATE spool_delivery d SET state = 'leased', lease_owner = 'old', lease_expires_at = now() + interval '1 minute'
WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM due))
RETURNING d.message_id";

/// The previous protocol's schema (migrations 1 to 4), as a database a
/// fleet of old spools left it.
async fn schema_at_version_4(pg: &TestPg) {
    let client = pg.client().await;
    client
        .batch_execute(
            "CREATE TABLE spool_schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    let migrations = [
        include_str!("../sql/0001_outbox.sql"),
        include_str!("../sql/0002_dispatch.sql"),
        include_str!("../sql/0003_read_cache.sql"),
        include_str!("../sql/0004_leased_state.sql"),
    ];
    for (version, text) in (1..).zip(migrations) {
        client.batch_execute(text).await.unwrap();
        client
            .execute(
                "INSERT INTO spool_schema_migrations (version, name) VALUES ($1, 'old')",
                &[&version],
            )
            .await
            .unwrap();
    }
}

/// Stores a write as an old spool does (naming no state); returns its id.
async fn old_insert(client: &tokio_postgres::Client, body: &str) -> Uuid {
    let id = Uuid::now_v7();
    client
        .execute(
            "WITH m AS (
                 INSERT INTO spool_message (id, format_version, route, method, path, headers, body)
                 VALUES ($1, 1, 'orders', 'POST', '/x', '[]', $2::text::bytea) RETURNING id, seq)
             INSERT INTO spool_delivery (message_id, route, target, seq)
             SELECT id, 'orders', 't', seq FROM m",
            &[&id, &body],
        )
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_fences_old_spools_out_and_loses_nothing_they_left() {
    let pg = TestPg::start().await;
    schema_at_version_4(&pg).await;
    let client = pg.client().await;
    // What old spools left: one delivery pending, one claimed mid-attempt.
    let pending = old_insert(&client, "pending").await;
    let leased = old_insert(&client, "leased").await;
    client
        .execute(
            "UPDATE spool_delivery SET state = 'leased', lease_owner = 'old',
                 lease_expires_at = now() + interval '1 hour' WHERE message_id = $1",
            &[&leased],
        )
        .await
        .unwrap();

    let target = FakeTarget::healthy().await;
    let rest = route("orders", &[("t", &target)], "");
    let env = TestEnv::start_on(pg, |url| base_config(url, &rest)).await;
    // Both are sent by the new protocol, the one leased to an old spool
    // included (a duplicate at worst, if that spool were still sending).
    assert_eventually!({
        let ids: HashSet<Uuid> = target.received().iter().map(|r| r.message_id()).collect();
        ids.contains(&pending) && ids.contains(&leased)
    });

    env.target("orders", "t").flow.set_paused(true);
    for i in 0..10 {
        assert_eq!(
            env.client.post("/orders/x", format!("{i}")).await.status,
            202
        );
    }
    let claimed = client.query(OLD_CLAIM, &[&"orders", &"t"]).await.unwrap();
    assert!(
        claimed.is_empty(),
        "an old spool claimed {} deliveries",
        claimed.len()
    );
    // An old spool's insert still works; its replay (back to 'pending') is
    // refused by the state check.
    old_insert(&client, "old").await;
    let replay = client
        .execute(
            "UPDATE spool_delivery SET state = 'pending' WHERE route = 'orders'",
            &[],
        )
        .await;
    assert!(replay.is_err(), "an old replay was accepted");
    env.target("orders", "t").flow.set_paused(false);
    assert_eventually!(distinct(&target) == 13);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_under_a_former_epoch_changes_nothing() {
    use spool::outbox::{Fate, Outcome, OutcomeBatch, ensure_shards, take_shards};
    use std::sync::Arc;

    let target = FakeTarget::healthy().await;
    let env = TestEnv::start_routes(&route("orders", &[("t", &target)], "")).await;
    // This test plays two owners of a target no spool serves.
    let pool = env.pg.pool();
    let mut client = pool.get().await.unwrap();
    ensure_shards(&mut client, "orders", "nobody", 1, "old-owner")
        .await
        .unwrap()
        .unwrap();
    let lease = Duration::from_millis(200);
    let first = take_shards(&client, "orders", "nobody", 1, &[], "old-owner", lease)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let id = Uuid::now_v7();
    client
        .execute(
            "WITH m AS (
                 INSERT INTO spool_message (id, format_version, route, method, path, headers, body)
                 VALUES ($1, 1, 'orders', 'POST', '/x', '[]', 'b') RETURNING id, seq)
             INSERT INTO spool_delivery (message_id, route, target, seq)
             SELECT id, 'orders', 'nobody', seq FROM m",
            &[&id],
        )
        .await
        .unwrap();
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let second = take_shards(&client, "orders", "nobody", 1, &[], "new-owner", lease)
        .await
        .unwrap();
    assert_eq!(
        second[0].epoch,
        first[0].epoch + 1,
        "a take moves the epoch on"
    );

    let outcome = |owner_epoch: i64, fate: Fate| Outcome {
        message_id: id,
        route: Arc::from("orders"),
        target: Arc::from("nobody"),
        shard: 0,
        epoch: owner_epoch,
        attempt: 1,
        sole_target: true,
        fate,
    };
    let dead = || Fate::Dead {
        status: Some(400),
        error: "stale".into(),
    };
    // A delivery (one statement) and a dead letter (a transaction) alike.
    for fate in [Fate::Delivered, dead()] {
        let mut stale = OutcomeBatch::default();
        stale.push(outcome(first[0].epoch, fate));
        assert_eq!(
            stale.write(&mut client, "old-owner").await.unwrap(),
            vec![false]
        );
    }
    let left = "SELECT count(*) FROM spool_delivery WHERE target = 'nobody' AND state = 'queued'";
    assert_eq!(
        env.pg.scalar(left).await,
        1,
        "the former owner's outcome landed"
    );
    let mut current = OutcomeBatch::default();
    current.push(outcome(second[0].epoch, Fate::Delivered));
    assert_eq!(
        current.write(&mut client, "new-owner").await.unwrap(),
        vec![true]
    );
    let rows = "SELECT count(*) FROM spool_delivery WHERE target = 'nobody'";
    assert_eq!(env.pg.scalar(rows).await, 0);
    env.stop().await;
}
