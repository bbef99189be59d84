//! One dispatcher per (route, target): asks the breaker and flow control,
//! claims what they allow, sends each claimed delivery as its own task, and
//! otherwise sleeps until woken (a commit, a NOTIFY, a freed slot, a retry
//! coming due, or the slow poll).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::attempt::judge;
use super::forward::Forwarder;
use super::recorder::Record;
use crate::breaker::{Breaker, Permit};
use crate::flow::{Blocked, FlowControl};
use crate::outbox::{ClaimedDelivery, Fate, claim_due};
use crate::retry::RetryPolicy;
use crate::telemetry::Metrics;

/// Everything one target's dispatcher and its attempts share.
pub struct Target {
    pub route: Arc<str>,
    pub name: Arc<str>,
    pub forwarder: Forwarder,
    pub policy: RetryPolicy,
    pub breaker: Arc<Breaker>,
    pub flow: Arc<FlowControl>,
    pub wake: Arc<Notify>,
    /// Earliest retry this spool scheduled and has not claimed yet.
    pub next_due: Mutex<Option<Instant>>,
    pub metrics: Arc<Metrics>,
}

/// Settings every dispatcher shares.
#[derive(Clone)]
pub struct DispatchSettings {
    pub pool: Pool,
    pub owner: Arc<str>,
    pub lease: Duration,
    pub claim_batch: usize,
    pub poll: Duration,
    pub records: mpsc::Sender<Record>,
    pub cancel: CancellationToken,
}

pub async fn run(target: Arc<Target>, settings: DispatchSettings) {
    let mut attempts = JoinSet::new();
    while !settings.cancel.is_cancelled() {
        while attempts.try_join_next().is_some() {}
        let (want, probe) = match target.breaker.permit() {
            Permit::Go => (settings.claim_batch, false),
            Permit::Probe => (1, true),
            Permit::Wait(until) => {
                idle(&target, &settings, until).await;
                continue;
            }
        };
        let granted = match target.flow.take(want) {
            Ok(granted) => granted,
            Err(blocked) => {
                if probe {
                    target.breaker.return_probe();
                }
                let until = match blocked {
                    Blocked::Until(at) => Some(at),
                    Blocked::Stopped => None,
                };
                idle(&target, &settings, until).await;
                continue;
            }
        };
        let claimed = claim(&target, &settings, granted).await;
        target.flow.unused(granted - claimed.len());
        if claimed.is_empty() {
            if probe {
                target.breaker.return_probe();
            }
            idle(&target, &settings, None).await;
            continue;
        }
        for delivery in claimed {
            let target = Arc::clone(&target);
            let records = settings.records.clone();
            attempts.spawn(attempt(target, delivery, records));
        }
    }
    // Attempts in flight finish (each bounded by the route's timeout) and
    // their outcomes are recorded before the recorder stops.
    while attempts.join_next().await.is_some() {}
}

async fn claim(target: &Target, settings: &DispatchSettings, limit: usize) -> Vec<ClaimedDelivery> {
    if limit == 0 {
        return Vec::new();
    }
    let claimed = async {
        let client = settings.pool.get().await.map_err(|e| e.to_string())?;
        claim_due(
            &client,
            &target.route,
            &target.name,
            limit as i64,
            &settings.owner,
            settings.lease,
        )
        .await
        .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(10), claimed).await {
        Ok(Ok(claimed)) => claimed,
        Ok(Err(e)) => {
            tracing::warn!(route = %target.route, target_name = %target.name, error = %e, "cannot claim deliveries; retrying");
            backoff_on_error(settings).await;
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(route = %target.route, target_name = %target.name, "claiming deliveries timed out; retrying");
            Vec::new()
        }
    }
}

async fn backoff_on_error(settings: &DispatchSettings) {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = settings.cancel.cancelled() => {}
    }
}

/// Sleeps until `until`, a wake-up, a scheduled retry, the poll interval or
/// shutdown, whichever is first.
async fn idle(target: &Target, settings: &DispatchSettings, until: Option<Instant>) {
    let poll = Instant::now() + settings.poll;
    let due = target.next_due.lock().expect("next_due lock").take();
    let deadline = [until, due].into_iter().flatten().fold(poll, Instant::min);
    tokio::select! {
        () = target.wake.notified() => {}
        () = target.flow.changed() => {}
        () = sleep_until(deadline) => {}
        () = settings.cancel.cancelled() => {}
    }
    if let Some(due) = due
        && due > Instant::now()
    {
        // Not reached yet: keep it for the next sleep.
        let mut next = target.next_due.lock().expect("next_due lock");
        *next = Some(next.map_or(due, |n| n.min(due)));
    }
}

async fn attempt(target: Arc<Target>, delivery: ClaimedDelivery, records: mpsc::Sender<Record>) {
    let started = Instant::now();
    let result = target.forwarder.send(&delivery).await;
    let labels = [&*target.route, &*target.name];
    target
        .metrics
        .attempt_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    let (verdict, fate) = judge(&target.policy, &delivery, result);
    if let Some(state) = target.breaker.record(verdict) {
        target
            .metrics
            .breaker_state
            .with_label_values(&labels)
            .set(state.as_gauge());
    }
    let outcome = match &fate {
        Fate::Delivered => {
            target
                .metrics
                .delivery_lag_seconds
                .with_label_values(&labels)
                .observe((delivery.age + started.elapsed()).as_secs_f64());
            "delivered"
        }
        Fate::RetryIn { delay, error, .. } => {
            tracing::debug!(route = %target.route, target_name = %target.name, message_id = %delivery.message_id,
                attempt = delivery.attempts, ?delay, error = %error, "attempt failed; retrying later");
            let at = Instant::now() + *delay;
            let mut next = target.next_due.lock().expect("next_due lock");
            *next = Some(next.map_or(at, |n| n.min(at)));
            "retry"
        }
        Fate::Dead { error, .. } => {
            tracing::warn!(route = %target.route, target_name = %target.name, message_id = %delivery.message_id,
                attempts = delivery.attempts, error = %error, "delivery dead-lettered; replay it from the admin API once fixed");
            "dead"
        }
    };
    target
        .metrics
        .deliveries
        .with_label_values(&[&*target.route, &*target.name, outcome])
        .inc();
    let record = Record {
        message_id: delivery.message_id,
        target: Arc::clone(&target.name),
        fate,
    };
    // Waits while the recorder is behind (the database is slow): back-pressure.
    let _ = records.send(record).await;
    target.flow.finished();
}
