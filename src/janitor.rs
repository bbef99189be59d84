//! Housekeeping that keeps the tables bounded: Idempotency-Keys past their
//! retention are deleted, a bounded number per statement. (Delivered rows
//! are removed by the recorder as they complete.)

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::outbox::sql;

/// Rows deleted per statement, so that no sweep holds locks for long.
const SWEEP_CHUNK: i64 = 10_000;

/// Sweeps every `every` until `cancel`. Several spools may sweep at once:
/// deleting an already deleted row is a no-op.
pub async fn run(pool: Pool, retention: Duration, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        match sweep(&pool, retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "expired Idempotency-Keys removed"),
            Err(e) => tracing::debug!(error = %e, "idempotency sweep failed; next time"),
        }
    }
}

/// Deletes expired keys, chunk by chunk; returns how many.
pub async fn sweep(pool: &Pool, retention: Duration) -> Result<u64, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let retention_s = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = client
            .execute(sql::EXPIRE_IDEMPOTENCY_KEYS, &[&retention_s, &SWEEP_CHUNK])
            .await
            .map_err(|e| e.to_string())?;
        total += deleted;
        if deleted < SWEEP_CHUNK as u64 {
            return Ok(total);
        }
    }
}
