//! Reads each target's backlog from the outbox into the metrics every few
//! seconds: what is waiting, how long the oldest has waited, the dead
//! letters, and the shards with no live owner. It counts the whole table,
//! so every spool sharing a database reports the same figures (aggregate
//! them with `max`, not `sum`); only the shards held are this spool's own.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::outbox::{ShardOwner, TargetBacklog, backlog_by_target, shard_owners, with_connection};
use crate::telemetry::TargetMetrics;

/// A configured target and its metric series.
pub struct Gauged {
    pub route: Arc<str>,
    pub target: Arc<str>,
    pub metrics: TargetMetrics,
}

/// Reads are spaced by at least this many times what the last one took:
/// on a big backlog the pass takes longer (about half a second for a
/// million rows), and reading then stays under 2% of a Postgres core
/// instead of weighing on delivery.
const SPACING: u32 = 50;

/// Reads at once, then every `every` (or more, see `SPACING`) until
/// `cancel`.
pub async fn run(
    pool: Pool,
    targets: Vec<Gauged>,
    owner: Arc<str>,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        let started = tokio::time::Instant::now();
        let read = with_connection(&pool, Duration::from_secs(30), async |client| {
            Ok((
                backlog_by_target(client).await?,
                shard_owners(client).await?,
            ))
        });
        match read.await {
            Ok((rows, shards)) => {
                show(&targets, rows);
                show_shards(&targets, &shards, &owner);
            }
            // The figures stay as last read; /readyz tells the outage.
            Err(e) => tracing::debug!(error = %e, "cannot read the backlog; next time"),
        }
        let pause = every.max(started.elapsed() * SPACING);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = cancel.cancelled() => return,
        }
    }
}

fn show(targets: &[Gauged], rows: Vec<TargetBacklog>) {
    for gauged in targets {
        let backlog = TargetBacklog::of(&rows, &gauged.route, &gauged.target);
        let metrics = &gauged.metrics;
        metrics.backlog.set(backlog.waiting);
        metrics
            .oldest_pending_seconds
            .set(backlog.oldest.as_secs_f64());
        metrics.dead_letters.set(backlog.dead);
    }
}

fn show_shards(targets: &[Gauged], shards: &[ShardOwner], owner: &str) {
    for gauged in targets {
        let of_target = shards
            .iter()
            .filter(|s| s.route == *gauged.route && s.target == *gauged.target);
        let (mut unowned, mut held) = (0, 0);
        for shard in of_target {
            match shard.live_owner() {
                None => unowned += 1,
                Some(live) if live == owner => held += 1,
                Some(_) => {}
            }
        }
        gauged.metrics.shards_unowned.set(unowned);
        gauged.metrics.shards_held.set(held);
    }
}
