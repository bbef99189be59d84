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

    pub fn settings(&self) -> FlowSettings {
        self.bucket.lock().expect("flow lock").settings
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
        let mut bucket = self.bucket.lock().expect("flow lock");
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
        let mut bucket = self.bucket.lock().expect("flow lock");
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
            return Err(Blocked::Until(now + Duration::from_secs_f64(wait)));
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
