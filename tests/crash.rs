//! Crash-only: kill -9 of spool under load loses no acknowledged write, and
//! a restarted spool (schema already there) serves again.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{SpoolProcess, TestPg, config_text};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    let pg = TestPg::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&pg.url, "");
    let mut spool = SpoolProcess::start(dir.path(), &config).await;

    let client = spool.client();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = JoinSet::new();
    for worker in 0..16 {
        let client = client.clone();
        let stop = Arc::clone(&stop);
        writers.spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0u32;
            // Bounded: stops when told, or after 5000 writes.
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                i += 1;
                let sent = client
                    .try_send(
                        client.data,
                        http::Method::POST,
                        "/orders/x",
                        &[],
                        format!("{worker}-{i}").into(),
                    )
                    .await;
                match sent {
                    Ok(reply) if reply.status == 202 => acknowledged.push(reply.id()),
                    Ok(_) => {}
                    // The connection died with spool: unacknowledged.
                    Err(_) => break,
                }
            }
            acknowledged
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    spool.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    while let Some(ids) = writers.join_next().await {
        acknowledged.extend(ids.unwrap());
    }
    assert!(
        acknowledged.len() > 100,
        "only {} writes before the kill",
        acknowledged.len()
    );

    let db = pg.client().await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM spool_message WHERE id = ANY($1)",
            &[&acknowledged],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored as usize,
        acknowledged.len(),
        "an acknowledged write is missing"
    );

    let restarted = SpoolProcess::start(dir.path(), &config).await;
    assert_eq!(
        restarted.client().post("/orders/x", "after").await.status,
        202
    );
}
