//! Writes attempt outcomes in batches, each under the epoch fence of the
//! shard it was made in: delivered rows removed (with their message once
//! no target is left), retries scheduled, dead letters marked. A failed
//! write is tried again with the same batch; while the database is away,
//! attempts wait on the bounded channel instead of piling up. Each outcome
//! is acknowledged to its worker once written (or refused by the fence).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::worker::Event;
use crate::outbox::{Outcome, OutcomeBatch, with_connection};

/// An outcome, and where to say it was recorded.
pub struct ToRecord {
    pub outcome: Outcome,
    pub reply: mpsc::UnboundedSender<Event>,
}

/// Runs until every sender is gone and the channel is drained. After
/// `cancel`, a batch that cannot be written is given up after a few tries.
pub async fn run(
    mut records: mpsc::Receiver<ToRecord>,
    pool: Pool,
    owner: Arc<str>,
    batch_max: usize,
    cancel: CancellationToken,
) {
    while let Some(first) = records.recv().await {
        let mut batch = OutcomeBatch::default();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(record) = next.take() {
            replies.push(record.reply);
            batch.push(record.outcome);
            if replies.len() < batch_max {
                next = records.try_recv().ok();
            }
        }
        let applied = write_until_done(&batch, &pool, &owner, &cancel).await;
        let fenced = applied.iter().filter(|a| !**a).count();
        if fenced > 0 {
            tracing::info!(
                outcomes = fenced,
                "outcomes not recorded: their shards were taken over meanwhile, and their new owner sends those deliveries again"
            );
        }
        // One event per worker, not per outcome: each wakes the worker.
        let mut by_worker: Vec<(mpsc::UnboundedSender<Event>, Vec<Uuid>)> = Vec::new();
        for (outcome, reply) in batch.outcomes().iter().zip(replies) {
            match by_worker.iter_mut().find(|(r, _)| r.same_channel(&reply)) {
                Some((_, ids)) => ids.push(outcome.message_id),
                None => by_worker.push((reply, vec![outcome.message_id])),
            }
        }
        for (reply, message_ids) in by_worker {
            let _ = reply.send(Event::Recorded { message_ids });
        }
    }
}

/// Whether each outcome was written; none when given up.
async fn write_until_done(
    batch: &OutcomeBatch,
    pool: &Pool,
    owner: &str,
    cancel: &CancellationToken,
) -> Vec<bool> {
    let mut wait = Duration::from_millis(100);
    for tries in 1.. {
        if cancel.is_cancelled() && tries > 3 {
            tracing::warn!(
                outcomes = batch.len(),
                "shutting down with delivery outcomes unrecorded; those deliveries will be sent again"
            );
            break;
        }
        let written = with_connection(pool, Duration::from_secs(10), async |client| {
            batch.write(client, owner).await
        });
        match written.await {
            Ok(applied) => return applied,
            Err(e) => {
                tracing::warn!(error = %e, outcomes = batch.len(), "cannot record delivery outcomes; retrying")
            }
        }
        // If this spool dies meanwhile, its shards' leases run out and the
        // deliveries are sent again by the next owner: a duplicate, never a
        // loss.
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    vec![false; batch.len()]
}
