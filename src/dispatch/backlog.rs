//! Reads each target's backlog from the outbox into the metrics every few
//! seconds: what is waiting, how long the oldest has waited, and the dead
//! letters. It counts the whole table, so every spool sharing a database
//! reports the same figures (aggregate them with `max`, not `sum`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::outbox::{TargetBacklog, backlog_by_target, with_connection};
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
pub async fn run(pool: Pool, targets: Vec<Gauged>, every: Duration, cancel: CancellationToken) {
    loop {
        let started = tokio::time::Instant::now();
        let read = with_connection(&pool, Duration::from_secs(30), async |client| {
            backlog_by_target(client).await
        });
        match read.await {
            Ok(rows) => show(&targets, rows),
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
