//! A write whose COMMIT went unanswered: spool asks Postgres what became of
//! it before answering, so a 202 means stored, a plain 503 means not
//! stored, and only `outbox-outcome-unknown` leaves it open. The proxy in
//! front of Postgres breaks the connection at exactly that instant; the
//! crash test hits it by chance, with many writes in flight.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::pg_proxy::{AtCommit, PgProxy};
use support::{FakeTarget, Reply, TestEnv, TestPg, base_config, route, set_in};

struct Proxied {
    env: TestEnv,
    proxy: PgProxy,
    target: FakeTarget,
}

/// A spool whose database connections all go through a proxy, with one
/// route `orders` to a healthy target.
async fn start(outcome_lookup_ms: u64) -> Proxied {
    let pg = TestPg::start().await;
    let proxy = PgProxy::start(pg.pg.dir().to_path_buf()).await;
    let target = FakeTarget::healthy().await;
    let url = proxy.url();
    let routes = route("orders", &[("sink", &target)], "");
    let env = TestEnv::start_on(pg, |_| {
        set_in(
            &base_config(&url, &routes),
            "ingest",
            &format!("outcome_lookup_ms = {outcome_lookup_ms}"),
        )
    })
    .await;
    Proxied { env, proxy, target }
}

fn problem_type(reply: &Reply) -> String {
    reply.json()["type"].as_str().unwrap_or_default().to_owned()
}

fn bodies(target: &FakeTarget) -> Vec<String> {
    target
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_looked_up_and_acknowledged() {
    let p = start(5_000).await;
    assert_eq!(p.env.client.post("/orders/x", "before").await.status, 202);
    p.proxy.at_next_commit(AtCommit::LoseTheAnswer);
    let reply = p.env.client.post("/orders/x", "answer-lost").await;
    assert_eq!(
        p.proxy.commits_broken(),
        1,
        "the proxy never broke a commit"
    );
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eventually!(bodies(&p.target).contains(&"answer-lost".to_owned()));
    p.env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_reached_postgres_is_a_definite_503() {
    let p = start(5_000).await;
    p.proxy.at_next_commit(AtCommit::DropIt);
    let reply = p.env.client.post("/orders/x", "dropped").await;
    assert_eq!(
        p.proxy.commits_broken(),
        1,
        "the proxy never broke a commit"
    );
    reply.assert_problem(503);
    assert_eq!(problem_type(&reply), "urn:spool:problem:outbox-unavailable");
    assert!(reply.header("retry-after").is_some());
    // Something after it is delivered, and the refused write never is.
    assert_eq!(p.env.client.post("/orders/x", "after").await.status, 202);
    assert_eventually!(bodies(&p.target).contains(&"after".to_owned()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!bodies(&p.target).contains(&"dropped".to_owned()));
    p.env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_that_cannot_be_looked_up_says_it_does_not_know() {
    let p = start(1_000).await;
    p.proxy.at_next_commit(AtCommit::LoseTheAnswerThenCutOff);
    let started = Instant::now();
    let reply = p.env.client.post("/orders/x", "in-doubt").await;
    let took = started.elapsed();
    assert_eq!(
        p.proxy.commits_broken(),
        1,
        "the proxy never broke a commit"
    );
    reply.assert_problem(503);
    assert_eq!(
        problem_type(&reply),
        "urn:spool:problem:outbox-outcome-unknown"
    );
    let detail = reply.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("may or may not be stored"), "{detail}");
    assert!(detail.contains("Idempotency-Key"), "{detail}");
    assert!(reply.header("retry-after").is_some());
    // Within the commit timeout plus the lookup window, and some slack.
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // It had committed: "unknown" was the honest answer.
    p.proxy.cut_off(false);
    assert_eventually!(bodies(&p.target).contains(&"in-doubt".to_owned()));
    p.env.stop().await;
}

/// What the writers were told, by body.
#[derive(Default)]
struct Told {
    acknowledged: HashSet<String>,
    not_stored: HashSet<String>,
    unknown: HashSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_under_writes_never_makes_an_answer_false() {
    // The default route's targets are unreachable, so every stored message
    // stays in the table to be counted.
    let env = TestEnv::start_with("").await;
    let mut writers = tokio::task::JoinSet::new();
    let stop_at = Instant::now() + Duration::from_secs(6);
    for writer in 0..16 {
        let client = env.client.clone();
        writers.spawn(async move {
            let mut told = Told::default();
            let mut n = 0;
            while Instant::now() < stop_at {
                let body = format!("w{writer}-{n}");
                n += 1;
                let reply = client.post("/orders/x", body.clone()).await;
                match reply.status.as_u16() {
                    202 => told.acknowledged.insert(body),
                    503 if problem_type(&reply).ends_with(":outbox-outcome-unknown") => {
                        told.unknown.insert(body)
                    }
                    503 => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        told.not_stored.insert(body)
                    }
                    other => panic!("{other}: {}", String::from_utf8_lossy(&reply.body)),
                };
            }
            told
        });
    }
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        env.pg.crash().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.pg.restart().await;
    }
    let mut told = Told::default();
    while let Some(result) = writers.join_next().await {
        let one = result.unwrap();
        told.acknowledged.extend(one.acknowledged);
        told.not_stored.extend(one.not_stored);
        told.unknown.extend(one.unknown);
    }
    let client = env.pg.client().await;
    let stored: HashSet<String> = client
        .query("SELECT convert_from(body, 'UTF8') FROM spool_message", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let lost: Vec<_> = told.acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let false_refusals: Vec<_> = told.not_stored.intersection(&stored).collect();
    assert!(
        false_refusals.is_empty(),
        "answered 503 'not stored' but stored: {false_refusals:?}"
    );
    assert!(told.acknowledged.len() > 100, "too few writes to mean much");
    assert!(!told.not_stored.is_empty(), "the crashes refused nothing");
    eprintln!(
        "acknowledged {}, refused {}, unknown {} ({} of those stored)",
        told.acknowledged.len(),
        told.not_stored.len(),
        told.unknown.len(),
        told.unknown.intersection(&stored).count()
    );
    env.stop().await;
}
