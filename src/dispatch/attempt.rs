//! One attempt: sent, its result turned into the breaker's verdict and the
//! delivery's fate (delivered, retried later, or dead-lettered), counted,
//! and handed to the recorder.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::forward::AttemptResult;
use super::held::{Answer, Item};
use super::recorder::ToRecord;
use super::worker::{Event, Target};
use crate::breaker::Verdict;
use crate::outbox::{DueDelivery, Fate, Outcome};
use crate::retry::{Decision, RetryPolicy};

/// Sends one held delivery, counts it for the breaker and the metrics,
/// tells the worker (so that the delivery's lane moves on at once) and
/// hands the outcome to the recorder.
pub async fn run(
    target: Arc<Target>,
    mut item: Item,
    records: mpsc::Sender<ToRecord>,
    events: mpsc::UnboundedSender<Event>,
) {
    let started = Instant::now();
    // Its age now, not when it was read: a retry held in a lane ages there.
    item.delivery.age += item.read_at.elapsed();
    item.read_at = started;
    let delivery = &item.delivery;
    let result = target.forwarder.send(delivery).await;
    let metrics = &target.metrics;
    metrics
        .attempt_seconds
        .observe(started.elapsed().as_secs_f64());
    let (verdict, fate) = judge(&target.policy, delivery, result);
    if let Some(state) = target.breaker.record(verdict) {
        metrics.breaker_state.set(state.as_gauge());
    }
    let answer = match &fate {
        Fate::RetryIn { delay, .. } => Answer::RetryAt(Instant::now() + *delay),
        Fate::Delivered | Fate::Dead { .. } => Answer::Done,
    };
    match &fate {
        Fate::Delivered => {
            metrics.delivered.inc();
            metrics
                .delivery_lag_seconds
                .observe((delivery.age + started.elapsed()).as_secs_f64());
        }
        Fate::RetryIn { delay, error, .. } => {
            tracing::debug!(route = %target.route, target_name = %target.name, message_id = %delivery.message_id,
                attempt = delivery.attempt, ?delay, error = %error, "attempt failed; retrying later");
            if delivery.ordering_key.is_none() {
                // Read again from the outbox when due.
                let at = Instant::now() + *delay;
                let mut next = target
                    .next_due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *next = Some(next.map_or(at, |n| n.min(at)));
            }
            metrics.retried.inc();
        }
        Fate::Dead { error, .. } => {
            tracing::warn!(route = %target.route, target_name = %target.name, message_id = %delivery.message_id,
                attempts = delivery.attempt, error = %error, "delivery dead-lettered; replay it from the admin API once fixed");
            metrics.dead.inc();
        }
    }
    let outcome = Outcome {
        message_id: delivery.message_id,
        route: Arc::clone(&target.route),
        target: Arc::clone(&target.name),
        shard: delivery.shard,
        epoch: item.epoch,
        attempt: delivery.attempt,
        sole_target: target.sole_target,
        fate,
    };
    let _ = events.send(Event::Answered {
        item: Box::new(item),
        answer,
    });
    // Waits while the recorder is behind (the database is slow): back-pressure.
    let _ = records
        .send(ToRecord {
            outcome,
            reply: events,
        })
        .await;
    target.flow.finished();
}

/// How an attempt counts for the breaker and what becomes of the delivery.
pub fn judge(
    policy: &RetryPolicy,
    delivery: &DueDelivery,
    result: AttemptResult,
) -> (Verdict, Fate) {
    match result {
        AttemptResult::Answered {
            status: 200..=299, ..
        } => (Verdict::Healthy, Fate::Delivered),
        AttemptResult::Answered {
            status,
            retry_after,
            snippet,
        } if policy.is_retryable_status(status) => {
            let verdict = if status >= 500 {
                Verdict::Failed
            } else {
                Verdict::Neutral
            };
            let error = format!("HTTP {status}: {snippet}");
            (
                verdict,
                after_failure(policy, delivery, Some(status), error, retry_after),
            )
        }
        AttemptResult::Answered {
            status, snippet, ..
        } => (
            // The target is up; this request will not get better by retrying.
            Verdict::Healthy,
            Fate::Dead {
                status: Some(status),
                error: format!("HTTP {status} is not retried: {snippet}"),
            },
        ),
        AttemptResult::NoAnswer { error } => (
            Verdict::Failed,
            after_failure(policy, delivery, None, error, None),
        ),
        AttemptResult::Invalid { error } => (
            Verdict::Neutral,
            Fate::Dead {
                status: None,
                error,
            },
        ),
    }
}

fn after_failure(
    policy: &RetryPolicy,
    delivery: &DueDelivery,
    status: Option<u16>,
    error: String,
    retry_after: Option<std::time::Duration>,
) -> Fate {
    match policy.after_failure(delivery.attempt, delivery.age, retry_after) {
        Decision::RetryIn(delay) => Fate::RetryIn {
            delay,
            status,
            error,
        },
        Decision::Dead(reason) => Fate::Dead {
            status,
            error: format!("{reason}; last: {error}"),
        },
    }
}
