//! A circuit breaker per target: closed, open after `failure_threshold`
//! consecutive failures, half-open after `open_for` with a single probe.
//!
//! It is a gate the dispatcher asks before claiming work, so an open
//! breaker spends no attempts: due deliveries stay in the outbox, unclaimed,
//! their attempt counts unchanged. Time is tokio's, so tests run on paused
//! time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the breaker shows to the read path and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// As the admin API shows it.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// For the `spool_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// May the dispatcher send now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send as flow control allows.
    Go,
    /// Half-open: send exactly one attempt, whose result decides.
    Probe,
    /// Open (or a probe is out): nothing until this instant, or until the
    /// probe's result arrives.
    Wait(Option<Instant>),
}

/// How one attempt's result counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The target answered: 2xx, or a 4xx that is the request's fault.
    Healthy,
    /// Connect error, timeout or 5xx.
    Failed,
    /// Says nothing about the target's health (408, 425, 429).
    Neutral,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    probe_out: bool,
}

#[derive(Debug)]
pub struct Breaker {
    name: String,
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// `name` (route/target) is used in the transition logs.
    pub fn new(name: String, threshold: u32, open_for: Duration) -> Self {
        Breaker {
            name,
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: Instant::now(),
                probe_out: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state
    }

    /// Asks to send. Past the cool-down an open breaker turns half-open and
    /// hands out one probe.
    pub fn permit(&self) -> Permit {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match inner.state {
            BreakerState::Closed => Permit::Go,
            BreakerState::Open => {
                let until = inner.opened_at + self.open_for;
                if Instant::now() < until {
                    return Permit::Wait(Some(until));
                }
                inner.state = BreakerState::HalfOpen;
                inner.probe_out = true;
                tracing::info!(target_name = %self.name, "circuit half-open: sending a probe");
                Permit::Probe
            }
            BreakerState::HalfOpen if inner.probe_out => Permit::Wait(None),
            BreakerState::HalfOpen => {
                inner.probe_out = true;
                Permit::Probe
            }
        }
    }

    /// Whether `permit` would hand out a send now, without taking it; if
    /// not, when it may (None: once the probe out has its result). The
    /// dispatcher asks before claiming, so an open breaker claims nothing.
    pub fn peek(&self) -> Result<(), Option<Instant>> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => {
                let until = inner.opened_at + self.open_for;
                if Instant::now() < until {
                    Err(Some(until))
                } else {
                    Ok(())
                }
            }
            BreakerState::HalfOpen if inner.probe_out => Err(None),
            BreakerState::HalfOpen => Ok(()),
        }
    }

    /// A probe was handed out but never sent (nothing was due): give it back.
    pub fn return_probe(&self) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .probe_out = false;
    }

    /// Records an attempt's result; returns the new state if it changed.
    pub fn record(&self, verdict: Verdict) -> Option<BreakerState> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = inner.state;
        match (verdict, inner.state) {
            (Verdict::Neutral, BreakerState::HalfOpen) => inner.probe_out = false,
            (Verdict::Neutral, _) => {}
            (Verdict::Healthy, _) => {
                inner.consecutive_failures = 0;
                inner.state = BreakerState::Closed;
                inner.probe_out = false;
            }
            (Verdict::Failed, BreakerState::Closed) => {
                inner.consecutive_failures += 1;
                if inner.consecutive_failures >= self.threshold {
                    inner.state = BreakerState::Open;
                    inner.opened_at = Instant::now();
                }
            }
            (Verdict::Failed, BreakerState::HalfOpen) => {
                inner.state = BreakerState::Open;
                inner.opened_at = Instant::now();
                inner.probe_out = false;
            }
            // Attempts that were already out when it opened: no news.
            (Verdict::Failed, BreakerState::Open) => {}
        }
        let after = inner.state;
        let failures = inner.consecutive_failures;
        drop(inner);
        if after == before {
            return None;
        }
        match after {
            BreakerState::Open => tracing::warn!(
                target_name = %self.name, failures, open_for = ?self.open_for,
                "circuit opened: no attempts to this target until the cool-down ends"
            ),
            BreakerState::Closed => {
                tracing::info!(target_name = %self.name, "circuit closed: target healthy again")
            }
            BreakerState::HalfOpen => {}
        }
        Some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new("r/t".into(), 3, Duration::from_secs(30))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker();
        b.record(Verdict::Failed);
        b.record(Verdict::Failed);
        b.record(Verdict::Healthy);
        b.record(Verdict::Failed);
        b.record(Verdict::Failed);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        assert_eq!(b.record(Verdict::Failed), Some(BreakerState::Open));
        assert!(matches!(b.permit(), Permit::Wait(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_after_cool_down_with_one_probe() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Verdict::Failed);
        }
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(matches!(b.permit(), Permit::Wait(Some(_))));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.permit(), Permit::Wait(None), "only one probe at a time");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_good_probe_closes() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Verdict::Failed);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.record(Verdict::Failed), Some(BreakerState::Open));
        assert_eq!(
            b.permit(),
            Permit::Wait(Some(Instant::now() + Duration::from_secs(30)))
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.record(Verdict::Healthy), Some(BreakerState::Closed));
        assert_eq!(b.permit(), Permit::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_results_neither_open_nor_close() {
        let b = breaker();
        for _ in 0..10 {
            b.record(Verdict::Neutral);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        for _ in 0..3 {
            b.record(Verdict::Failed);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.permit(), Permit::Probe);
        b.record(Verdict::Neutral);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.permit(),
            Permit::Probe,
            "a neutral probe result frees the probe slot"
        );
    }
}
