//! One attempt: sent, its result turned into the breaker's verdict and the
//! delivery's fate (delivered, retried later, or dead-lettered), counted,
//! and handed to the recorder.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::forward::AttemptResult;
use super::worker::Target;
use crate::breaker::Verdict;
use crate::outbox::{ClaimedDelivery, Fate, Outcome};
use crate::retry::{Decision, RetryPolicy};

/// Sends one claimed delivery, counts it for the breaker and the metrics,
/// and hands its outcome to the recorder.
pub async fn run(target: Arc<Target>, delivery: ClaimedDelivery, records: mpsc::Sender<Outcome>) {
    let started = Instant::now();
    let result = target.forwarder.send(&delivery).await;
    let metrics = &target.metrics;
    metrics
        .attempt_seconds
        .observe(started.elapsed().as_secs_f64());
    let (verdict, fate) = judge(&target.policy, &delivery, result);
    if let Some(state) = target.breaker.record(verdict) {
        metrics.breaker_state.set(state.as_gauge());
    }
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
            let at = Instant::now() + *delay;
            let mut next = target.next_due.lock().expect("next_due lock");
            *next = Some(next.map_or(at, |n| n.min(at)));
            metrics.retried.inc();
        }
        Fate::Dead { error, .. } => {
            tracing::warn!(route = %target.route, target_name = %target.name, message_id = %delivery.message_id,
                attempts = delivery.attempt, error = %error, "delivery dead-lettered; replay it from the admin API once fixed");
            metrics.dead.inc();
        }
    }
    let record = Outcome {
        message_id: delivery.message_id,
        target: Arc::clone(&target.name),
        attempt: delivery.attempt,
        sole_target: target.sole_target,
        fate,
    };
    // Waits while the recorder is behind (the database is slow): back-pressure.
    let _ = records.send(record).await;
    target.flow.finished();
}

/// How an attempt counts for the breaker and what becomes of the delivery.
pub fn judge(
    policy: &RetryPolicy,
    delivery: &ClaimedDelivery,
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
    delivery: &ClaimedDelivery,
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
