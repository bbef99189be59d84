//! One dispatcher per (route, target): claims due deliveries in batches
//! ahead of sending, sends each as its own task as the breaker and flow
//! control allow, and otherwise sleeps until woken (a commit, a NOTIFY, a
//! freed slot, a retry coming due, or the slow poll).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use super::attempt;
use super::forward::Forwarder;
use super::queue::ClaimQueue;
use crate::breaker::{Breaker, BreakerState, Permit};
use crate::flow::{Blocked, FlowControl};
use crate::outbox::{
    ClaimPosition, ClaimedDelivery, Outcome, claim_due, release_leases, with_connection,
};
use crate::retry::RetryPolicy;
use crate::telemetry::TargetMetrics;

/// Everything one target's dispatcher and its attempts share.
pub struct Target {
    pub route: Arc<str>,
    pub name: Arc<str>,
    /// The route has no other target.
    pub sole_target: bool,
    pub forwarder: Forwarder,
    pub policy: RetryPolicy,
    pub breaker: Arc<Breaker>,
    pub flow: Arc<FlowControl>,
    pub wake: Arc<Notify>,
    /// Earliest retry this spool scheduled and has not claimed yet.
    pub next_due: Mutex<Option<Instant>>,
    pub metrics: TargetMetrics,
}

/// Settings every dispatcher shares.
#[derive(Clone)]
pub struct DispatchSettings {
    pub pool: Pool,
    pub owner: Arc<str>,
    pub lease: Duration,
    /// The part of the lease beyond the slowest attempt.
    pub lease_margin: Duration,
    pub claim_batch: usize,
    pub poll: Duration,
    pub records: mpsc::Sender<Outcome>,
    pub cancel: CancellationToken,
}

/// Bound on one claim or give-back, the wait for a connection included.
const DB_CALL_LIMIT: Duration = Duration::from_secs(10);

/// Body bytes a dispatcher holds claimed ahead of sending, at most (give or
/// take a claim's worth when bodies grow).
const QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;

pub async fn run(target: Arc<Target>, settings: DispatchSettings) {
    let now = Instant::now();
    let mut worker = Worker {
        target,
        settings,
        queue: ClaimQueue::default(),
        tasks: JoinSet::new(),
        claiming: None,
        maybe_due: true,
        poll_at: now,
        cursor: None,
        full_scan_at: now,
        head_scans_until: now,
    };
    while !worker.settings.cancel.is_cancelled() {
        worker.step().await;
    }
    worker.shut_down().await;
}

type ClaimResult = Result<Vec<ClaimedDelivery>, String>;

/// One target's dispatcher between two wake-ups.
struct Worker {
    target: Arc<Target>,
    settings: DispatchSettings,
    queue: ClaimQueue,
    /// Attempts under way, and leases being given back.
    tasks: JoinSet<()>,
    /// The claim under way, with the number asked for and when it started.
    claiming: Option<(JoinHandle<ClaimResult>, usize, Instant)>,
    /// Whether a claim may find something. False once a claim came back
    /// short, until a wake-up, a retry coming due or the poll.
    maybe_due: bool,
    /// When to claim again although nothing woke us (the slow poll).
    poll_at: Instant,
    /// Where the last full batch ended: the next claim starts after it, not
    /// at the head, where entries of delivered rows linger until vacuum.
    cursor: Option<ClaimPosition>,
    /// When the next claim scans from the head anyway, for what came due
    /// behind the cursor: a late commit, a swept lease, a replay.
    full_scan_at: Instant,
    /// Until when every claim scans from the head, because ordering keys
    /// are about: the next of a key becomes claimable only once its head is
    /// delivered, long after a cursor has passed it by.
    head_scans_until: Instant,
}

impl Worker {
    /// Sends what breaker and flow control allow, starts a claim if the
    /// queue runs low, then sleeps until something changes.
    async fn step(&mut self) {
        while self.tasks.try_join_next().is_some() {}
        let stale = self.queue.take_stale(Instant::now());
        self.give_back(stale);
        let send_at = self.send_ready();
        let claim_at = self.claim_if_low();
        self.wait([send_at, claim_at].into_iter().flatten().min())
            .await;
    }

    /// Sends queued deliveries while breaker and flow control allow.
    /// Returns when sending may resume, if a timer says so (else an event
    /// will: a finished attempt, a settings change).
    fn send_ready(&mut self) -> Option<Instant> {
        while !self.queue.is_empty() {
            let (want, probe) = match self.target.breaker.permit() {
                Permit::Go => (self.queue.len(), false),
                Permit::Probe => (1, true),
                Permit::Wait(until) => {
                    if until.is_some() {
                        // Open: nothing goes out before the cool-down ends;
                        // let the queued deliveries go back to the outbox.
                        let queued = self.queue.take_all();
                        self.give_back(queued);
                    }
                    return until;
                }
            };
            match self.target.flow.take(want) {
                Ok(granted) => {
                    for delivery in std::iter::from_fn(|| self.queue.pop()).take(granted) {
                        let target = Arc::clone(&self.target);
                        let records = self.settings.records.clone();
                        self.tasks.spawn(attempt::run(target, delivery, records));
                    }
                }
                Err(blocked) => {
                    if probe {
                        self.target.breaker.return_probe();
                    }
                    return match blocked {
                        Blocked::Until(at) => Some(at),
                        Blocked::Full => None,
                        Blocked::Stopped => {
                            let queued = self.queue.take_all();
                            self.give_back(queued);
                            None
                        }
                    };
                }
            }
            if probe {
                // Nothing more until the probe's result is in.
                return None;
            }
        }
        None
    }

    /// Starts a claim when the queue holds less than one batch and a claim
    /// may find something the breaker and flow control would let out.
    /// Returns when the breaker will allow one, if it does not now.
    fn claim_if_low(&mut self) -> Option<Instant> {
        if self.claiming.is_some() {
            return None;
        }
        let flow = self.target.flow.settings();
        let blocked = match self.target.breaker.peek() {
            Err(until) => Some(until),
            Ok(()) if flow.paused || flow.per_second <= 0.0 => Some(None),
            Ok(()) => None,
        };
        if let Some(until) = blocked {
            // Rows may come due meanwhile, unannounced (a retry's time, an
            // expired lease): look as soon as sending may resume.
            self.maybe_due = true;
            return until;
        }
        if !self.maybe_due {
            return None;
        }
        let limit = match self.target.breaker.state() {
            // At most a second's worth of sends, so that a slow rate does
            // not hold leases on more than it can send before they end.
            BreakerState::Closed => self
                .settings
                .claim_batch
                .min(flow.per_second.ceil() as usize)
                .max(1),
            // Enough for the probe.
            _ => 1,
        };
        if self.queue.len() >= limit {
            return None;
        }
        let batch = self.queue.room(limit, QUEUE_BYTES_MAX);
        if batch == 0 {
            return None;
        }
        let started = Instant::now();
        if started >= self.full_scan_at || started < self.head_scans_until {
            self.cursor = None;
        }
        if self.cursor.is_none() {
            self.full_scan_at = started + self.settings.poll;
        }
        let claim = claim(
            self.settings.pool.clone(),
            Arc::clone(&self.target),
            self.settings.owner.clone(),
            self.settings.lease,
            batch,
            self.cursor,
        );
        self.claiming = Some((tokio::spawn(claim), batch, started));
        None
    }

    /// Sleeps until `until`, a claim's result, a wake-up, a finished
    /// attempt or settings change, a retry coming due, the poll, or shutdown.
    async fn wait(&mut self, until: Option<Instant>) {
        let due = *self.target.next_due.lock().expect("next_due lock");
        let mut deadline = [until, due].into_iter().flatten().min();
        if !self.maybe_due {
            deadline = Some(deadline.map_or(self.poll_at, |d| d.min(self.poll_at)));
        }
        let sleep = async {
            match deadline {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let claimed = async {
            match self.claiming.as_mut() {
                Some((handle, _, _)) => handle.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.settings.cancel.cancelled() => {}
            claimed = claimed => self.claimed(claimed.unwrap_or_else(|e| Err(e.to_string()))),
            () = self.target.wake.notified() => self.maybe_due = true,
            () = self.target.flow.changed() => {}
            () = sleep => {}
        }
        let now = Instant::now();
        if !self.maybe_due && self.poll_at <= now {
            self.maybe_due = true;
        }
        let mut next_due = self.target.next_due.lock().expect("next_due lock");
        if next_due.is_some_and(|at| at <= now) {
            // A retry may come due behind the cursor.
            *next_due = None;
            self.maybe_due = true;
            self.cursor = None;
        }
    }

    fn claimed(&mut self, result: ClaimResult) {
        let Some((_, asked, started)) = self.claiming.take() else {
            return;
        };
        match result {
            Ok(claimed) => {
                self.maybe_due = claimed.len() >= asked;
                if claimed.iter().any(|d| d.keyed) {
                    self.head_scans_until = Instant::now() + self.settings.poll;
                }
                self.cursor = if self.maybe_due {
                    claimed.iter().map(|d| d.position).max()
                } else {
                    None
                };
                if !self.maybe_due {
                    self.poll_at = Instant::now() + self.settings.poll;
                }
                // Half the margin is left for recording the outcome.
                let send_by = started + self.settings.lease_margin / 2;
                self.queue.extend(claimed, send_by);
            }
            Err(e) => {
                tracing::warn!(route = %self.target.route, target_name = %self.target.name, error = %e, "cannot claim deliveries; retrying in a second");
                self.maybe_due = false;
                self.cursor = None;
                self.poll_at = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Frees the leases of claimed deliveries that will not be sent, in
    /// the background. If that fails, the leases run out on their own.
    fn give_back(&mut self, message_ids: Vec<Uuid>) {
        if message_ids.is_empty() {
            return;
        }
        // They keep their place in the claim order, behind the cursor.
        self.cursor = None;
        let pool = self.settings.pool.clone();
        let target = Arc::clone(&self.target);
        let owner = self.settings.owner.clone();
        self.tasks.spawn(async move {
            let released = with_connection(&pool, DB_CALL_LIMIT, async |client| {
                release_leases(client, &message_ids, &target.name, &owner).await
            })
            .await;
            let Err(error) = released else { return };
            tracing::warn!(route = %target.route, target_name = %target.name, deliveries = message_ids.len(), error = %error,
                "cannot give back unsent deliveries; they are claimable again when their lease runs out");
        });
    }

    /// Gives back what was claimed and not sent, then lets the attempts in
    /// flight finish (each bounded by the route's timeout) so that their
    /// outcomes are recorded before the recorder stops.
    async fn shut_down(mut self) {
        if let Some((handle, _, _)) = self.claiming.take()
            && let Ok(Ok(claimed)) = handle.await
        {
            self.queue.extend(claimed, Instant::now());
        }
        let queued = self.queue.take_all();
        self.give_back(queued);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn claim(
    pool: Pool,
    target: Arc<Target>,
    owner: Arc<str>,
    lease: Duration,
    limit: usize,
    after: Option<ClaimPosition>,
) -> ClaimResult {
    with_connection(&pool, DB_CALL_LIMIT, async |client| {
        let (route, name) = (&target.route, &target.name);
        claim_due(client, route, name, limit as i64, &owner, lease, after).await
    })
    .await
    .map_err(|e| e.to_string())
}
