//! Who decides to retry: which results are worth another attempt, how long
//! to wait (exponential backoff with full jitter, or the target's
//! Retry-After), and when a delivery becomes a dead letter.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetryConfig;

/// What to do with a delivery whose attempt failed in a retryable way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RetryIn(Duration),
    /// Give up: `max_attempts` or `max_age` reached.
    Dead(&'static str),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    initial: Duration,
    max: Duration,
    max_attempts: u32,
    max_age: Duration,
    retry_statuses: Vec<u16>,
    jitter: bool,
}

impl RetryPolicy {
    pub fn from_config(config: &RetryConfig) -> Self {
        RetryPolicy {
            initial: Duration::from_millis(config.initial_ms),
            max: Duration::from_millis(config.max_ms),
            max_attempts: config.max_attempts,
            max_age: Duration::from_secs(config.max_age_s),
            retry_statuses: config.retry_statuses.clone(),
            jitter: true,
        }
    }

    /// The exact schedule, for tests.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// 5xx always; 4xx only those listed (408, 425 and 429 by default).
    pub fn is_retryable_status(&self, status: u16) -> bool {
        status >= 500 || self.retry_statuses.contains(&status)
    }

    /// The wait after `attempts` failed attempts: `initial * 2^(attempts-1)`
    /// capped at `max`, then full jitter (uniform between 0 and that).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let ceiling = ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(attempts.saturating_sub(1) as usize)
            .unwrap_or(self.max);
        if self.jitter {
            ceiling.mul_f64(fastrand::f64())
        } else {
            ceiling
        }
    }

    /// After a retryable failure of attempt number `attempts`, for a write
    /// accepted `age` ago. A Retry-After is honoured up to `max`.
    pub fn after_failure(
        &self,
        attempts: u32,
        age: Duration,
        retry_after: Option<Duration>,
    ) -> Decision {
        if attempts >= self.max_attempts {
            return Decision::Dead("max_attempts reached");
        }
        let delay = match retry_after {
            Some(asked) => asked.min(self.max),
            None => self.backoff(attempts),
        };
        if age + delay > self.max_age {
            return Decision::Dead("max_age reached");
        }
        Decision::RetryIn(delay)
    }
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_config(&RetryConfig {
            initial_ms: 100,
            max_ms: 1_000,
            max_attempts: 6,
            max_age_s: 60,
            retry_statuses: vec![408, 425, 429],
        })
        .without_jitter()
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let p = policy();
        let waits: Vec<u64> = (1..=6).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling() {
        let mut p = policy();
        p.jitter = true;
        let waits: Vec<Duration> = (0..100).map(|_| p.backoff(3)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        // Spread over the whole range, not pinned to the ceiling.
        assert!(waits.iter().any(|w| *w < Duration::from_millis(200)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(200)));
    }

    #[test]
    fn gives_up_at_max_attempts_and_max_age() {
        let p = policy();
        assert_eq!(
            p.after_failure(5, Duration::ZERO, None),
            Decision::RetryIn(Duration::from_millis(1000))
        );
        assert_eq!(
            p.after_failure(6, Duration::ZERO, None),
            Decision::Dead("max_attempts reached")
        );
        assert_eq!(
            p.after_failure(1, Duration::from_secs(60), None),
            Decision::Dead("max_age reached")
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_max() {
        let p = policy();
        assert_eq!(
            p.after_failure(1, Duration::ZERO, Some(Duration::from_millis(700))),
            Decision::RetryIn(Duration::from_millis(700))
        );
        assert_eq!(
            p.after_failure(1, Duration::ZERO, Some(Duration::from_secs(30))),
            Decision::RetryIn(Duration::from_secs(1))
        );
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_worth_retrying() {
        let p = policy();
        assert!(
            p.is_retryable_status(503) && p.is_retryable_status(429) && p.is_retryable_status(408)
        );
        assert!(
            !p.is_retryable_status(400)
                && !p.is_retryable_status(404)
                && !p.is_retryable_status(301)
        );
    }
}
