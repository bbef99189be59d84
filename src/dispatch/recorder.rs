//! Writes attempt outcomes in batches: delivered rows removed (with their
//! message once no target is left), retries scheduled, dead letters marked.
//! A failed write is tried again with the same batch; while the database is
//! away, attempts wait on the bounded channel instead of piling up.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outcome, OutcomeBatch, with_connection};

/// Runs until every sender is gone and the channel is drained. After
/// `cancel`, a batch that cannot be written is given up after a few tries.
pub async fn run(
    mut records: mpsc::Receiver<Outcome>,
    pool: Pool,
    owner: Arc<str>,
    batch_max: usize,
    cancel: CancellationToken,
) {
    while let Some(first) = records.recv().await {
        let mut batch = OutcomeBatch::default();
        batch.push(first);
        while batch.len() < batch_max {
            match records.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        write_until_done(&batch, &pool, &owner, &cancel).await;
    }
}

async fn write_until_done(
    batch: &OutcomeBatch,
    pool: &Pool,
    owner: &str,
    cancel: &CancellationToken,
) {
    let mut wait = Duration::from_millis(100);
    for tries in 1.. {
        if cancel.is_cancelled() && tries > 3 {
            tracing::warn!(
                outcomes = batch.len(),
                "shutting down with delivery outcomes unrecorded; those deliveries will be sent again"
            );
            return;
        }
        let written = with_connection(pool, Duration::from_secs(10), async |client| {
            batch.write(client, owner).await
        });
        match written.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, outcomes = batch.len(), "cannot record delivery outcomes; retrying")
            }
        }
        // If this spool dies meanwhile, the leases expire and the deliveries
        // are sent again: a duplicate, never a loss.
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
