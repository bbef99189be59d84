//! The write path against a real Postgres: acknowledged means committed,
//! what is stored, and idempotency.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use http::Method;
use support::TestEnv;
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_committed_exactly_once() {
    let env = TestEnv::start().await;
    let client = Arc::new(env.client.clone());
    let mut tasks = JoinSet::new();
    for worker in 0..32 {
        let client = Arc::clone(&client);
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let body = format!(r#"{{"worker":{worker},"i":{i}}}"#);
                let reply = client.post(&format!("/orders/w{worker}/{i}"), body).await;
                assert_eq!(reply.status, 202, "{reply:?}");
                assert_eq!(
                    reply.header("spool-message-id").unwrap(),
                    reply.id().to_string()
                );
                ids.push(reply.id());
            }
            ids
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        acknowledged.extend(ids.unwrap());
    }
    assert_eq!(acknowledged.len(), 800);
    assert_eq!(
        acknowledged.iter().collect::<HashSet<_>>().len(),
        800,
        "ids are unique"
    );

    let db = env.pg.client().await;
    let rows = db
        .query(
            "SELECT m.id, count(d.target) FROM spool_message m JOIN spool_delivery d ON d.message_id = m.id GROUP BY m.id",
            &[],
        )
        .await
        .unwrap();
    let stored: HashSet<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        rows.len(),
        800,
        "exactly the acknowledged messages, once each"
    );
    assert!(acknowledged.iter().all(|id| stored.contains(id)));
    assert!(
        rows.iter().all(|r| r.get::<_, i64>(1) == 2),
        "one delivery per target"
    );
    // Group commit did group: fewer commits than writes.
    let batches = env
        .spool
        .as_ref()
        .unwrap()
        .metrics
        .commit_batch_size
        .get_sample_count();
    assert!(batches < 800, "{batches} commits for 800 concurrent writes");
    env.stop().await;
}

#[tokio::test]
async fn a_write_is_stored_whole_with_allow_listed_headers() {
    let env = TestEnv::start().await;
    let body: Vec<u8> = (0..=255u8).collect();
    let reply = env
        .client
        .send(
            Method::PUT,
            "/orders/v1/items/7?expand=all&x=%20y",
            &[
                ("content-type", "application/octet-stream"),
                ("x-request-id", "req-1"),
                ("authorization", "Bearer secret"),
                ("cookie", "a=b"),
                ("spool-ordering-key", "customer-9"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "vendor=1"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["route"], "orders");
    assert_eq!(
        reply.json()["targets"],
        serde_json::json!(["billing", "analytics"])
    );

    let db = env.pg.client().await;
    let row = db
        .query_one(
            "SELECT method, path, query, headers::text, body, ordering_key, traceparent, tracestate, format_version, idempotency_key FROM spool_message WHERE id = $1",
            &[&reply.id()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "PUT");
    assert_eq!(row.get::<_, &str>(1), "/v1/items/7");
    assert_eq!(row.get::<_, Option<&str>>(2), Some("expand=all&x=%20y"));
    let headers: serde_json::Value = serde_json::from_str(row.get(3)).unwrap();
    assert_eq!(
        headers,
        serde_json::json!([
            ["content-type", "application/octet-stream"],
            ["x-request-id", "req-1"]
        ]),
        "authorization and cookie are not allow-listed by default"
    );
    assert_eq!(row.get::<_, &[u8]>(4), &body[..]);
    assert_eq!(row.get::<_, Option<&str>>(5), Some("customer-9"));
    assert_eq!(
        row.get::<_, Option<&str>>(6),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(row.get::<_, Option<&str>>(7), Some("vendor=1"));
    assert_eq!(row.get::<_, i16>(8), 1);
    assert_eq!(row.get::<_, Option<&str>>(9), None);
    env.stop().await;
}

#[tokio::test]
async fn empty_bodies_and_every_write_method_are_accepted() {
    let env = TestEnv::start().await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let reply = env.client.send(method.clone(), "/orders/x", &[], "").await;
        assert_eq!(reply.status, 202, "{method}");
    }
    let empty = env
        .pg
        .scalar("SELECT count(*) FROM spool_message WHERE length(body) = 0")
        .await;
    assert_eq!(empty, 4);
    env.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_message_and_adds_no_row() {
    let env = TestEnv::start().await;
    let key = [("idempotency-key", "order-42")];
    let first = env
        .client
        .send(Method::POST, "/orders/x", &key, "same")
        .await;
    assert_eq!(first.status, 202);
    assert_eq!(first.header("spool-idempotent-replay"), None);
    let again = env
        .client
        .send(Method::POST, "/orders/x", &key, "same")
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("spool-idempotent-replay"), Some("true"));
    assert_eq!(again.id(), first.id());
    assert_eq!(
        again.header("spool-message-id").unwrap(),
        first.id().to_string()
    );

    let conflict = env
        .client
        .send(Method::POST, "/orders/x", &key, "different")
        .await;
    conflict.assert_problem(409);
    assert!(
        conflict.json()["detail"]
            .as_str()
            .unwrap()
            .contains(&first.id().to_string())
    );

    assert_eq!(env.pg.scalar("SELECT count(*) FROM spool_message").await, 1);
    assert_eq!(
        env.pg.scalar("SELECT count(*) FROM spool_delivery").await,
        2
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_store_one_message() {
    let env = TestEnv::start().await;
    let mut tasks = JoinSet::new();
    for _ in 0..40 {
        let client = env.client.clone();
        tasks.spawn(async move {
            client
                .send(
                    Method::POST,
                    "/orders/pay",
                    &[("idempotency-key", "pay-1")],
                    "charge",
                )
                .await
        });
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap();
        assert!(reply.status == 202 || reply.status == 200, "{reply:?}");
        created += usize::from(reply.status == 202);
        ids.insert(reply.id());
    }
    assert_eq!(created, 1, "exactly one request created the message");
    assert_eq!(ids.len(), 1, "every request got the same id");
    assert_eq!(env.pg.scalar("SELECT count(*) FROM spool_message").await, 1);
    env.stop().await;
}

#[tokio::test]
async fn keys_are_per_route_and_expire_after_retention() {
    let extra = r#"
[[routes]]
name = "refunds"
  [[routes.targets]]
  name = "billing"
  url = "http://127.0.0.1:9"
"#;
    let env = TestEnv::start_with(extra).await;
    let key = [("idempotency-key", "k")];
    let orders = env.client.send(Method::POST, "/orders/x", &key, "a").await;
    let refunds = env.client.send(Method::POST, "/refunds/x", &key, "a").await;
    assert_eq!(
        (orders.status.as_u16(), refunds.status.as_u16()),
        (202, 202)
    );
    assert_ne!(orders.id(), refunds.id());

    // Age the key past the retention window: the next use is a new message.
    let db = env.pg.client().await;
    db.execute(
        "UPDATE spool_idempotency SET created_at = now() - interval '25 hours' WHERE route = 'orders'",
        &[],
    )
    .await
    .unwrap();
    let later = env.client.send(Method::POST, "/orders/x", &key, "b").await;
    assert_eq!(later.status, 202);
    assert_ne!(later.id(), orders.id());
    env.stop().await;
}

#[tokio::test]
async fn expired_idempotency_keys_are_swept() {
    let env = TestEnv::start().await;
    for key in ["old-1", "old-2", "fresh"] {
        env.client
            .send(Method::POST, "/orders/x", &[("idempotency-key", key)], key)
            .await;
    }
    let db = env.pg.client().await;
    db.execute(
        "UPDATE spool_idempotency SET created_at = now() - interval '2 days' WHERE key LIKE 'old-%'",
        &[],
    )
    .await
    .unwrap();
    let pool = env.pg.pool();
    let deleted = spool::janitor::sweep(
        &pool,
        spool::outbox::sql::EXPIRE_IDEMPOTENCY_KEYS,
        std::time::Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(
        env.pg
            .scalar("SELECT count(*) FROM spool_idempotency")
            .await,
        1
    );
    env.stop().await;
}
