//! spool acknowledges a write only on a database that keeps commits through
//! a crash, and `/readyz` shows the write path as the writes see it.

mod support;

use std::time::Duration;

use support::{TestEnv, TestPg, config_text, set_in};

/// A test cluster made durable (the harness runs them with fsync and
/// full_page_writes off), then `change` applied and the server reloaded.
async fn cluster_with(change: &str) -> TestPg {
    let pg = TestPg::start().await;
    let client = pg.client().await;
    // One by one: ALTER SYSTEM may not run in a multi-statement query.
    for statement in [
        "ALTER SYSTEM SET fsync = on",
        "ALTER SYSTEM SET full_page_writes = on",
        change,
        "SELECT pg_reload_conf()",
    ] {
        if !statement.is_empty() {
            client.batch_execute(statement).await.unwrap();
        }
    }
    // A reload reaches the backends at their next command.
    tokio::time::sleep(Duration::from_millis(200)).await;
    pg
}

async fn spool_on(pg: TestPg, allow: bool) -> TestEnv {
    TestEnv::start_on(pg, |url| {
        config_text(url, "").replace(
            "allow_non_durable = true",
            &format!("allow_non_durable = {allow}"),
        )
    })
    .await
}

fn durable_gauge(metrics: &str) -> &str {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("spool_outbox_durable "))
        .expect("spool_outbox_durable exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_setting_that_loses_commits_refuses_writes_unless_allowed() {
    let cases = [
        ("", None),
        ("ALTER SYSTEM SET fsync = off", Some("fsync = off")),
        (
            "ALTER SYSTEM SET full_page_writes = off",
            Some("full_page_writes = off"),
        ),
        // As spool's own sessions see it: a role's setting counts.
        (
            "ALTER ROLE postgres SET synchronous_commit = off",
            Some("synchronous_commit = off"),
        ),
        // Durable locally: not a problem.
        ("ALTER ROLE postgres SET synchronous_commit = local", None),
    ];
    for (change, problem) in cases {
        let env = spool_on(cluster_with(change).await, false).await;
        let reply = env.client.post("/orders/x", "w").await;
        let ready = env.client.admin_get("/readyz").await;
        let check = ready.json()["checks"][1].clone();
        assert_eq!(check["name"], "outbox_durable");
        let metrics = env.client.admin_get("/metrics").await;
        let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
        match problem {
            None => {
                assert_eq!(reply.status, 202, "{change}");
                assert_eq!(check["pass"], true, "{change}: {check}");
                assert_eq!(durable_gauge(&metrics), "1", "{change}");
            }
            Some(setting) => {
                reply.assert_problem(503);
                let body = reply.json();
                assert_eq!(body["type"], "urn:spool:problem:outbox-not-durable");
                let detail = body["detail"].as_str().unwrap();
                assert!(detail.contains(setting), "{change}: {detail}");
                assert!(reply.header("retry-after").is_some());
                assert_eq!(check["pass"], false, "{change}: {check}");
                assert!(check["value"].as_str().unwrap().contains(setting));
                assert_eq!(durable_gauge(&metrics), "0", "{change}");
                // Not gating by default: a sidecar's readiness is its pod's.
                assert_eq!(ready.status, 200);
                assert_eq!(
                    env.pg.scalar("SELECT count(*) FROM spool_message").await,
                    0,
                    "{change}: a refused write was stored"
                );
            }
        }
        let pg = {
            let TestEnv { pg, spool, .. } = env;
            spool.unwrap().shutdown().await;
            pg
        };
        if problem.is_some() {
            // The same database, allowed: written, and still reported.
            let env = spool_on(pg, true).await;
            assert_eq!(
                env.client.post("/orders/x", "w").await.status,
                202,
                "{change}"
            );
            let ready = env.client.admin_get("/readyz").await;
            let check = &ready.json()["checks"][1];
            assert_eq!(check["pass"], true);
            assert!(
                check["value"]
                    .as_str()
                    .unwrap()
                    .contains("allowed by database.allow_non_durable")
            );
            env.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_outbox_fails_the_write_path_check_which_gates_only_when_asked() {
    for gate in [false, true] {
        let env = TestEnv::start_config(|url| {
            set_in(
                &config_text(url, ""),
                "server",
                &format!("ready_requires_outbox = {gate}"),
            )
        })
        .await;
        assert_eq!(env.client.admin_get("/readyz").await.status, 200);
        // Another session holds the message table, as a stray migration would.
        let locker = env.pg.client().await;
        locker
            .batch_execute("BEGIN; LOCK TABLE spool_message IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let write = env.client.post("/orders/x", "blocked").await;
        write.assert_problem(503);
        let ready = env.client.admin_get("/readyz").await;
        let check = &ready.json()["checks"][0];
        assert_eq!(check["name"], "outbox_writable");
        assert_eq!(check["pass"], false, "{check}");
        assert_eq!(check["gates_readiness"], gate);
        assert_eq!(ready.status, if gate { 503 } else { 200 });
        locker.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(env.client.post("/orders/x", "after").await.status, 202);
        let ready = env.client.admin_get("/readyz").await;
        assert_eq!(ready.status, 200);
        assert_eq!(ready.json()["checks"][0]["pass"], true);
        env.stop().await;
    }
}
