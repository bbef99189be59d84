//! Takes back deliveries whose lease ran out: their spool died, or lost the
//! database, between claiming and recording. Every spool sweeps; a lease is
//! only ever put back once it expired, so sweeping together is harmless.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::Wakeups;
use crate::outbox::{sweep_expired_leases, with_connection};

/// Leases put back per statement, so that no sweep holds locks for long.
const SWEEP_CHUNK: i64 = 1_000;

/// Sweeps every `every` until `cancel`, and wakes the dispatchers (here and,
/// through NOTIFY, in other spools) of the routes it put deliveries back in.
pub async fn run(pool: Pool, wakeups: Arc<Wakeups>, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        let swept = with_connection(&pool, Duration::from_secs(10), async |client| {
            sweep_expired_leases(client, SWEEP_CHUNK).await
        })
        .await;
        match swept {
            Ok(routes) if routes.is_empty() => {}
            Ok(routes) => {
                tracing::info!(
                    deliveries = routes.len(),
                    "expired leases taken back; those deliveries are sent again"
                );
                wakeups.committed(routes.iter().map(String::as_str));
            }
            Err(e) => tracing::debug!(error = %e, "lease sweep failed; next time"),
        }
    }
}
