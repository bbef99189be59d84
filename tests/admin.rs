//! The admin API on a real spool: the bearer token, the routes' live state,
//! run-time rate and pause, and dead letters listed, replayed and deleted.

mod support;

use http::Method;
use support::{Answer, FakeTarget, TestEnv, route};

const TOKEN: &str = "s3cret-admin-token";

async fn start(target: &FakeTarget) -> TestEnv {
    let rest = route(
        "orders",
        &[("t", target)],
        "  [routes.retry]\n  initial_ms = 20\n  max_ms = 100\n",
    );
    TestEnv::start_config(|url| {
        support::set_in(
            &support::base_config(url, &rest),
            "server",
            &format!("admin_token = \"{TOKEN}\""),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_and_health_does_not() {
    let target = FakeTarget::healthy().await;
    let env = start(&target).await;
    for token in [None, Some("wrong")] {
        let reply = env
            .client
            .admin(Method::GET, "/admin/routes", token, "")
            .await;
        reply.assert_problem(401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let reply = env
        .client
        .admin(Method::GET, "/admin/routes", Some(TOKEN), "")
        .await;
    assert_eq!(reply.status, 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(env.client.admin_get(open).await.status, 200, "{open}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_show_live_state_and_take_rate_and_pause_at_run_time() {
    let target = FakeTarget::healthy().await;
    let env = start(&target).await;
    let call = |method, path: &'static str, body: &'static str| {
        let client = &env.client;
        async move { client.admin(method, path, Some(TOKEN), body).await }
    };
    let paused = call(Method::POST, "/admin/routes/orders/targets/t/pause", "").await;
    assert_eq!(paused.status, 200);
    assert_eq!(paused.json()["paused"], true);
    for i in 0..3 {
        assert_eq!(
            env.client.post("/orders/x", format!("{i}")).await.status,
            202
        );
    }
    let listed = call(Method::GET, "/admin/routes", "").await.json();
    let shown = &listed["routes"][0]["targets"][0];
    assert_eq!(listed["routes"][0]["route"], "orders");
    assert_eq!(shown["target"], "t");
    assert_eq!(shown["backlog"], 3);
    assert!(shown["oldest_pending_age_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(shown["breaker"], "closed");
    assert_eq!(shown["paused"], true);
    assert!(target.received().is_empty(), "sent while paused");

    let rate = call(
        Method::PUT,
        "/admin/routes/orders/targets/t/rate",
        r#"{"per_second": 250, "burst": 5, "concurrency": 3}"#,
    )
    .await;
    assert_eq!(rate.status, 200);
    assert_eq!(rate.json()["rate"]["per_second"], 250.0);
    let flow = env.target("orders", "t").flow;
    let settings = flow.settings();
    assert_eq!(
        (settings.per_second, settings.burst, settings.concurrency),
        (250.0, 5, 3)
    );
    let resumed = call(Method::POST, "/admin/routes/orders/targets/t/resume", "").await;
    assert_eq!(resumed.json()["paused"], false);
    assert_eventually!(target.received().len() == 3);

    // Mistakes are problem+json naming what is wrong.
    call(Method::POST, "/admin/routes/nope/targets/t/pause", "")
        .await
        .assert_problem(404);
    call(Method::POST, "/admin/routes/orders/targets/nope/pause", "")
        .await
        .assert_problem(404);
    let bad = call(
        Method::PUT,
        "/admin/routes/orders/targets/t/rate",
        r#"{"per_second": -1}"#,
    )
    .await;
    bad.assert_problem(400);
    assert!(
        bad.json()["detail"]
            .as_str()
            .unwrap()
            .contains("per_second")
    );
    call(
        Method::PUT,
        "/admin/routes/orders/targets/t/rate",
        r#"{"rate": 5}"#,
    )
    .await
    .assert_problem(400);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_in_pages_replayed_and_deleted() {
    let target = FakeTarget::start(|_, _| Answer::Status(400)).await;
    let env = start(&target).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(env.client.post("/orders/x", format!("{i}")).await.id());
    }
    let call = |method, path: String, body: String| {
        let client = &env.client;
        async move { client.admin(method, &path, Some(TOKEN), &body).await }
    };
    let dead_count = || async {
        call(
            Method::GET,
            "/admin/dead-letters?route=orders".into(),
            String::new(),
        )
        .await
        .json()["dead_letters"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eventually!(dead_count().await == 3);

    // Two pages of two, newest first, nothing twice.
    let first = call(
        Method::GET,
        "/admin/dead-letters?limit=2".into(),
        String::new(),
    )
    .await
    .json();
    let next = first["next"].as_str().expect("a next page").to_owned();
    let second = call(
        Method::GET,
        format!("/admin/dead-letters?limit=2&after={next}"),
        String::new(),
    )
    .await
    .json();
    let mut listed: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page["dead_letters"].as_array().unwrap().clone())
        .map(|letter| {
            assert_eq!(letter["last_status"], 400);
            assert_eq!(letter["attempts"], 1);
            letter["message_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(second["next"].is_null());
    listed.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);

    // Fixed target: replaying one message delivers it.
    target.set_rule(|_, _| Answer::Status(200));
    let replayed = call(
        Method::POST,
        "/admin/dead-letters/replay".into(),
        format!(r#"{{"message_id": "{}"}}"#, ids[0]),
    )
    .await;
    assert_eq!(replayed.json()["replayed"], 1);
    let attempts_of = |id| {
        target
            .received()
            .iter()
            .filter(|r| r.message_id() == id)
            .count()
    };
    assert_eventually!(attempts_of(ids[0]) == 2);
    assert_eventually!(dead_count().await == 2);

    // Delete one; deleting it again is a 404.
    let path = format!("/admin/dead-letters/{}", ids[1]);
    let deleted = call(Method::DELETE, path.clone(), String::new()).await;
    assert_eq!(deleted.json()["deleted"], 1);
    call(Method::DELETE, path, String::new())
        .await
        .assert_problem(404);
    assert_eq!(dead_count().await, 1);

    // Replaying everything needs saying so.
    call(
        Method::POST,
        "/admin/dead-letters/replay".into(),
        "{}".into(),
    )
    .await
    .assert_problem(400);
    let all = call(
        Method::POST,
        "/admin/dead-letters/replay".into(),
        r#"{"all": true}"#.into(),
    )
    .await;
    assert_eq!(all.json()["replayed"], 1);
    assert_eventually!(dead_count().await == 0);
    assert_eventually!(env.pg.scalar("SELECT count(*) FROM spool_delivery").await == 0);
    env.stop().await;
}

/// `spool ctl ARGS` against `env`'s admin port: exit code and output.
async fn ctl(env: &TestEnv, token: &str, args: &[&str]) -> (i32, String) {
    let admin = format!("http://{}", env.client.admin);
    // No spool.toml there: defaults, and the token from the environment.
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .current_dir(dir.path())
        .env("SPOOL_ADMIN_TOKEN", token)
        .args(["ctl", "--admin", &admin])
        .args(args)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_ctl_speaks_to_the_admin_port() {
    let target = FakeTarget::healthy().await;
    let env = start(&target).await;
    let (code, out) = ctl(&env, TOKEN, &["routes"]).await;
    assert_eq!(code, 0, "{out}");
    let routes: serde_json::Value = serde_json::from_str(&out).expect("JSON out");
    assert_eq!(routes["routes"][0]["targets"][0]["target"], "t");

    let (code, out) = ctl(&env, TOKEN, &["pause", "orders", "t"]).await;
    assert_eq!(code, 0, "{out}");
    let flow = env.target("orders", "t").flow;
    assert!(flow.settings().paused);
    let (code, out) = ctl(&env, TOKEN, &["rate", "orders", "t", "7", "--burst", "2"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (flow.settings().per_second, flow.settings().burst),
        (7.0, 2)
    );

    // Refusals say why, and exit non-zero.
    let (code, out) = ctl(&env, "wrong", &["routes"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("401") && out.contains("bearer token"), "{out}");
    let (code, out) = ctl(&env, TOKEN, &["pause", "orders", "nope"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("no target named `nope`"), "{out}");
    env.stop().await;
}
