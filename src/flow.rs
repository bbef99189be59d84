//! Flow control per target: a token-bucket rate (per second, with burst) and
//! a cap on attempts in flight, both changeable at run time; rate 0 (or a
//! pause) stops sending, like the seed's `echo 0 >/etc/rates/publish`.
//!
//! Written here rather than taken from `governor` because its rate cannot
//! be zero or changed in place, and it keeps its own clock: this one runs
//! on tokio time, so tests use paused time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Slowest rate other than 0: one send every ~17 minutes. Below it the
/// wait for a token would be far longer than anyone means.
pub const MIN_RATE: f64 = 0.001;
/// Fastest rate, burst and concurrency: far past what one target takes,
/// and small enough that no arithmetic on them overflows.
pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_BURST: u32 = 1_000_000;
pub const MAX_CONCURRENCY: usize = 10_000;

/// What is wrong with a rate, burst or concurrency, each by its name; the
/// same bounds for the configuration and the admin API.
pub fn check_rate(per_second: f64) -> Result<(), String> {
    if per_second == 0.0 || (MIN_RATE..=MAX_RATE).contains(&per_second) {
        Ok(())
    } else {
        Err(format!(
            "must be 0 (stopped) or from {MIN_RATE} to {MAX_RATE} per second"
        ))
    }
}

pub fn check_burst(burst: u32) -> Result<(), String> {
    if (1..=MAX_BURST).contains(&burst) {
        Ok(())
    } else {
        Err(format!("must be from 1 to {MAX_BURST}"))
    }
}

pub fn check_concurrency(concurrency: usize) -> Result<(), String> {
    if (1..=MAX_CONCURRENCY).contains(&concurrency) {
        Ok(())
    } else {
        Err(format!("must be from 1 to {MAX_CONCURRENCY}"))
    }
}

/// The longest a dispatcher is told to wait for a token: it looks again
/// then (and on any settings change before).
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(3600);

/// The current settings, as shown by the admin API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowSettings {
    pub per_second: f64,
    pub burst: u32,
    pub concurrency: usize,
    pub paused: bool,
}

#[derive(Debug)]
struct Bucket {
    settings: FlowSettings,
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.settings.per_second).min(f64::from(self.settings.burst));
        self.refilled_at = now;
    }
}

/// Why nothing may be sent right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// A token will be there at this instant.
    Until(Instant),
    /// The concurrency cap is reached: wait for an attempt to finish.
    Full,
    /// Rate 0 or paused: wait for a settings change.
    Stopped,
}

#[derive(Debug)]
pub struct FlowControl {
    bucket: Mutex<Bucket>,
    in_flight: AtomicUsize,
    /// Signalled when settings change or an attempt finishes. Its one
    /// waiter is the target's dispatcher; `notify_one` keeps a permit if it
    /// is not waiting yet, so no wake-up is lost.
    changed: Notify,
}

impl FlowControl {
    /// `burst` defaults to one second's worth (at least 1).
    pub fn new(per_second: f64, burst: Option<u32>, concurrency: usize) -> Self {
        let settings = FlowSettings {
            per_second,
            burst: burst.unwrap_or_else(|| default_burst(per_second)),
            concurrency,
            paused: false,
        };
        FlowControl {
            bucket: Mutex::new(Bucket {
                settings,
                tokens: f64::from(settings.burst),
                refilled_at: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// The bucket, even after a panic elsewhere while it was held: its
    /// numbers are always whole (each change is one assignment), and a
    /// poisoned lock must not stop the admin API or the restarted task.
    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn settings(&self) -> FlowSettings {
        self.lock().settings
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Changes the rate; `burst` None keeps one second's worth.
    pub fn set_rate(&self, per_second: f64, burst: Option<u32>) {
        self.update(|s| {
            s.per_second = per_second;
            s.burst = burst.unwrap_or_else(|| default_burst(per_second));
        });
    }

    pub fn set_concurrency(&self, concurrency: usize) {
        self.update(|s| s.concurrency = concurrency.max(1));
    }

    pub fn set_paused(&self, paused: bool) {
        self.update(|s| s.paused = paused);
    }

    fn update(&self, change: impl FnOnce(&mut FlowSettings)) {
        let mut bucket = self.lock();
        bucket.refill(Instant::now());
        change(&mut bucket.settings);
        bucket.tokens = bucket.tokens.min(f64::from(bucket.settings.burst));
        drop(bucket);
        self.changed.notify_one();
    }

    /// Takes up to `want` sends (bounded by free concurrency and tokens).
    /// Each one granted must be given back with `finished`.
    pub fn take(&self, want: usize) -> Result<usize, Blocked> {
        let now = Instant::now();
        let mut bucket = self.lock();
        let settings = bucket.settings;
        if settings.paused || settings.per_second <= 0.0 {
            return Err(Blocked::Stopped);
        }
        let free = settings.concurrency.saturating_sub(self.in_flight());
        if free == 0 {
            return Err(Blocked::Full);
        }
        bucket.refill(now);
        let whole = bucket.tokens.floor() as usize;
        if whole == 0 {
            let wait = (1.0 - bucket.tokens) / settings.per_second;
            let wait = Duration::try_from_secs_f64(wait)
                .unwrap_or(MAX_TOKEN_WAIT)
                .min(MAX_TOKEN_WAIT);
            return Err(Blocked::Until(now + wait));
        }
        let granted = want.min(free).min(whole);
        bucket.tokens -= granted as f64;
        self.in_flight.fetch_add(granted, Ordering::Relaxed);
        Ok(granted)
    }

    /// An attempt finished: its concurrency slot is free again.
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Every attempt counted in flight is gone (their task was dropped).
    pub fn forget_in_flight(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Resolves on the next settings change or finished attempt.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

fn default_burst(per_second: f64) -> u32 {
    per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let flow = FlowControl::new(10.0, Some(5), 100);
        assert_eq!(flow.take(100), Ok(5));
        let Err(Blocked::Until(at)) = flow.take(1) else {
            panic!("should wait")
        };
        assert_eq!(at - Instant::now(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(flow.take(100), Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_slowest_rate_waits_a_bounded_time() {
        let flow = FlowControl::new(1e-300, Some(1), 1);
        assert_eq!(flow.take(1), Ok(1));
        flow.finished();
        let Err(Blocked::Until(at)) = flow.take(1) else {
            panic!("should wait")
        };
        assert_eq!(at - Instant::now(), MAX_TOKEN_WAIT);
        assert!(check_rate(1e-300).is_err());
        assert!(check_rate(0.0).is_ok() && check_rate(MIN_RATE).is_ok());
        assert!(check_rate(f64::NAN).is_err() && check_rate(-1.0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_caps_in_flight() {
        let flow = FlowControl::new(1000.0, None, 2);
        assert_eq!(flow.take(10), Ok(2));
        assert_eq!(flow.take(1), Err(Blocked::Full));
        flow.finished();
        assert_eq!(flow.take(10), Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_and_pause_stop_sending_until_changed() {
        let flow = FlowControl::new(0.0, None, 4);
        assert_eq!(flow.take(1), Err(Blocked::Stopped));
        flow.set_rate(100.0, None);
        assert_eq!(flow.take(1), Ok(1));
        flow.set_paused(true);
        assert_eq!(flow.take(1), Err(Blocked::Stopped));
        flow.set_paused(false);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(flow.take(1), Ok(1));
    }
}
