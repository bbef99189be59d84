//! One attempt's result turned into the breaker's verdict and the
//! delivery's fate: delivered, retried later, or dead-lettered.

use crate::breaker::Verdict;
use crate::outbox::{ClaimedDelivery, Fate};
use crate::retry::{Decision, RetryPolicy};

use super::forward::AttemptResult;

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
