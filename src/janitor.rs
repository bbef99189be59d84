//! Housekeeping that keeps the tables bounded: Idempotency-Keys past their
//! retention and kept read answers past every route's `max_stale` are
//! deleted, a bounded number per statement. (Delivered rows are removed by
//! the recorder as they complete.)

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::outbox::sql;

/// Rows deleted per statement, so that no sweep holds locks for long.
const SWEEP_CHUNK: i64 = 10_000;

/// How long rows of each kind are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub idempotency_keys: Duration,
    pub read_cache: Duration,
}

/// Sweeps every `every` until `cancel`. Several spools may sweep at once:
/// deleting an already deleted row is a no-op.
pub async fn run(pool: Pool, retention: Retention, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        for (statement, kept_for, what) in [
            (
                sql::EXPIRE_IDEMPOTENCY_KEYS,
                retention.idempotency_keys,
                "Idempotency-Keys",
            ),
            (
                sql::EXPIRE_READ_CACHE,
                retention.read_cache,
                "kept read answers",
            ),
        ] {
            match sweep(&pool, statement, kept_for).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, what, "expired rows removed"),
                Err(e) => tracing::debug!(error = %e, what, "sweep failed; next time"),
            }
        }
    }
}

/// Runs `statement` (taking the age limit in seconds and a chunk size)
/// until it deletes less than a chunk; returns how many rows went.
pub async fn sweep(pool: &Pool, statement: &str, retention: Duration) -> Result<u64, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let retention_s = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = client
            .execute(statement, &[&retention_s, &SWEEP_CHUNK])
            .await
            .map_err(|e| e.to_string())?;
        total += deleted;
        if deleted < SWEEP_CHUNK as u64 {
            return Ok(total);
        }
    }
}
