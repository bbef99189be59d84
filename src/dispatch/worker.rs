//! One dispatcher per (route, target): reads the due deliveries of the
//! shards this spool owns, holds them (unkeyed in read order, keyed in one
//! lane per key), sends what breaker, flow control and the shard leases
//! allow, each attempt as its own task, and otherwise sleeps until woken (a
//! commit, a NOTIFY, an answer, a recorded outcome, a change of shards or
//! settings, a retry coming due, or the slow poll).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::attempt;
use super::forward::Forwarder;
use super::held::{Answer, Held, Item, LANE_DEPTH, LaneRead};
use super::ownership::ShardView;
use super::recorder::ToRecord;
use crate::breaker::{Breaker, BreakerState, Permit};
use crate::flow::{Blocked, FlowControl};
use crate::outbox::{
    DueDelivery, ReadPosition, ShardSet, read_due, read_lane, with_connection_sized,
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
    /// Earliest unkeyed retry this spool scheduled and has not read yet.
    pub next_due: Mutex<Option<Instant>>,
    pub metrics: TargetMetrics,
}

/// Settings every dispatcher shares.
#[derive(Clone)]
pub struct DispatchSettings {
    pub pool: Pool,
    /// Most deliveries read at once; about twice this many are held.
    pub read_batch: usize,
    pub poll: Duration,
    pub records: mpsc::Sender<ToRecord>,
    pub cancel: CancellationToken,
}

/// What attempts and the recorder tell their worker.
pub enum Event {
    /// An attempt was answered (or gave up): `item` comes back for a
    /// keyed retry.
    Answered { item: Box<Item>, answer: Answer },
    /// A batch's outcomes of this worker's deliveries reached the outbox,
    /// or were refused there.
    Recorded { message_ids: Vec<Uuid> },
}

/// Bound on one read, the wait for a connection included.
const DB_CALL_LIMIT: Duration = Duration::from_secs(10);

/// Body bytes a dispatcher holds unsent, at most (give or take a read's
/// worth when bodies grow).
const HELD_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How soon to look again when the next delivery's lease is too close to
/// its end to start an attempt (its renewal is on the way).
const LEASE_RECHECK: Duration = Duration::from_millis(50);

pub async fn run(
    target: Arc<Target>,
    view: watch::Receiver<ShardView>,
    settings: DispatchSettings,
) {
    let now = Instant::now();
    let (events_in, events) = mpsc::unbounded_channel();
    let mut worker = Worker {
        target,
        settings,
        view,
        owned: Vec::new(),
        held: Held::default(),
        events_in,
        events,
        attempts: JoinSet::new(),
        reads: JoinSet::new(),
        reading_due: false,
        reading_lane: false,
        lane_reads: VecDeque::new(),
        maybe_due: true,
        poll_at: now,
        cursor: None,
        full_scan_at: now,
        mean_body: None,
    };
    worker.shards_changed();
    while !worker.settings.cancel.is_cancelled() {
        worker.step().await;
    }
    worker.shut_down().await;
}

struct ReadDone {
    /// The lane read, if it was one.
    lane: Option<LaneRead>,
    asked: usize,
    rows: Result<Vec<DueDelivery>, String>,
}

/// One target's dispatcher between two wake-ups.
struct Worker {
    target: Arc<Target>,
    settings: DispatchSettings,
    view: watch::Receiver<ShardView>,
    /// The (shard, epoch) pairs owned when last looked.
    owned: Vec<(i32, i64)>,
    held: Held,
    events_in: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    attempts: JoinSet<()>,
    reads: JoinSet<ReadDone>,
    reading_due: bool,
    reading_lane: bool,
    /// Lanes that ran dry with more of their key in the outbox.
    lane_reads: VecDeque<LaneRead>,
    /// Whether a read may find something. False once a read came back
    /// short, until a wake-up, a retry coming due or the poll.
    maybe_due: bool,
    /// When to read again although nothing woke us (the slow poll).
    poll_at: Instant,
    /// Where the last full read ended: the next starts after it, not at
    /// the head, where entries of delivered rows linger until vacuum.
    cursor: Option<ReadPosition>,
    /// When the next read starts from the head anyway, for what came due
    /// behind the cursor: a late commit, a replay, a retry.
    full_scan_at: Instant,
    /// Mean body size of the last read, to size the next one.
    mean_body: Option<usize>,
}

impl Worker {
    /// Takes in what attempts and the recorder said, sends what may go,
    /// starts a read if little is held, then sleeps until something changes.
    async fn step(&mut self) {
        while self.attempts.try_join_next().is_some() {}
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event);
        }
        let timer = self.held.wake_timers(Instant::now());
        let send_at = self.send_ready();
        let read_at = self.read_if_low();
        self.wait([send_at, timer, read_at].into_iter().flatten().min())
            .await;
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Answered { item, answer } => {
                let (shard, epoch) = (item.delivery.shard, item.epoch);
                if let Some(read) = self.held.answered(*item, answer) {
                    self.lane_reads.push_back(read);
                }
                if self.view.borrow().epoch_of(shard) != Some(epoch) {
                    // A retry of a shard lost meanwhile went back to its lane.
                    self.drop_lost_shards();
                }
            }
            Event::Recorded { message_ids } => {
                for id in message_ids {
                    self.held.recorded(id);
                }
            }
        }
    }

    /// The shards owned changed: what is held of lost ones is dropped, and
    /// new ones are read from their head.
    fn shards_changed(&mut self) {
        let owned: Vec<(i32, i64)> = {
            let view = self.view.borrow_and_update();
            view.held.iter().map(|(s, h)| (*s, h.epoch)).collect()
        };
        if owned.iter().any(|o| !self.owned.contains(o)) {
            self.cursor = None;
            self.maybe_due = true;
        }
        self.owned = owned;
        self.drop_lost_shards();
    }

    fn drop_lost_shards(&mut self) {
        let view = self.view.borrow().clone();
        let dropped = self
            .held
            .retain_shards(|shard, epoch| view.epoch_of(shard) == Some(epoch));
        self.lane_reads
            .retain(|read| view.epoch_of(read.shard).is_some());
        if dropped > 0 {
            tracing::info!(route = %self.target.route, target_name = %self.target.name, deliveries = dropped,
                "dropped held deliveries of shards now owned by another spool");
        }
    }

    /// Sends held deliveries while breaker, flow control and the shard
    /// leases allow. Returns when sending may resume, if a timer says so
    /// (else an event will: an answer, a settings change).
    fn send_ready(&mut self) -> Option<Instant> {
        while self.held.ready_len() > 0 {
            let (want, probe) = match self.target.breaker.permit() {
                Permit::Go => (self.held.ready_len(), false),
                Permit::Probe => (1, true),
                // Open: nothing goes out before the cool-down ends; what is
                // held stays held.
                Permit::Wait(until) => return until,
            };
            let granted = match self.target.flow.take(want) {
                Ok(granted) => granted,
                Err(blocked) => {
                    if probe {
                        self.target.breaker.return_probe();
                    }
                    return match blocked {
                        Blocked::Until(at) => Some(at),
                        Blocked::Full => None,
                        Blocked::Stopped => {
                            // Paused or at rate 0, perhaps for long: what is
                            // held waits in the outbox instead, and is read
                            // again (as it then is) on resume.
                            self.held.let_go();
                            self.cursor = None;
                            None
                        }
                    };
                }
            };
            let view = self.view.borrow();
            let timeout = self.target.forwarder.timeout();
            let mut sent = 0;
            while sent < granted {
                let next = self
                    .held
                    .next(|item| view.may_send(item.delivery.shard, item.epoch, timeout));
                let Some(item) = next else { break };
                let target = Arc::clone(&self.target);
                let records = self.settings.records.clone();
                let events = self.events_in.clone();
                self.attempts
                    .spawn(attempt::run(target, item, records, events));
                sent += 1;
            }
            drop(view);
            for _ in sent..granted {
                self.target.flow.finished();
            }
            if sent == 0 {
                if probe {
                    self.target.breaker.return_probe();
                }
                // Refused by a lease about to be renewed, or nothing ready.
                return (self.held.ready_len() > 0).then(|| Instant::now() + LEASE_RECHECK);
            }
            if probe {
                // Nothing more until the probe's result is in.
                return None;
            }
        }
        None
    }

    /// Starts a read of what is due when little is held and it may find
    /// something the breaker and flow control would let out, and a read of
    /// a lane that ran dry. Returns when the breaker will allow one, if it
    /// does not now.
    fn read_if_low(&mut self) -> Option<Instant> {
        if self.view.borrow().held.is_empty() {
            return None;
        }
        let flow = self.target.flow.settings();
        let blocked = match self.target.breaker.peek() {
            Err(until) => Some(until),
            Ok(()) if flow.paused || flow.per_second <= 0.0 => Some(None),
            Ok(()) => None,
        };
        if let Some(until) = blocked {
            // Rows may come due meanwhile, unannounced: look as soon as
            // sending may resume.
            self.maybe_due = true;
            return until;
        }
        if !self.reading_lane
            && let Some(lane) = self.lane_reads.pop_front()
        {
            self.reading_lane = true;
            self.start_read(Some(lane), LANE_DEPTH + 1);
        }
        if self.reading_due || !self.maybe_due {
            return None;
        }
        let limit = match self.target.breaker.state() {
            // At most a second's worth of sends.
            BreakerState::Closed => self
                .settings
                .read_batch
                .min(flow.per_second.ceil() as usize)
                .max(1),
            // Enough for the probe.
            _ => 1,
        };
        if self.held.unsent() >= limit {
            return None;
        }
        let room = (2 * self.settings.read_batch).saturating_sub(self.held.len());
        let mean = self.mean_body.unwrap_or(64 * 1024).max(1);
        let fit = HELD_BYTES_MAX.saturating_sub(self.held.bytes()) / mean;
        let floor = usize::from(self.held.unsent() == 0);
        let batch = limit.min(room).min(fit).max(floor);
        if batch == 0 {
            return None;
        }
        let now = Instant::now();
        if now >= self.full_scan_at {
            self.cursor = None;
        }
        if self.cursor.is_none() {
            self.full_scan_at = now + self.settings.poll;
        }
        self.reading_due = true;
        self.start_read(None, batch);
        None
    }

    fn start_read(&mut self, lane: Option<LaneRead>, limit: usize) {
        self.held.begin_read();
        let pool = self.settings.pool.clone();
        let target = Arc::clone(&self.target);
        let (shards, owned) = {
            let view = self.view.borrow();
            let owned = match &lane {
                Some(lane) => vec![lane.shard],
                None => view.owned(),
            };
            (view.shards, owned)
        };
        let after = self.cursor;
        self.reads.spawn(async move {
            let body_bytes = |rows: &Vec<DueDelivery>| rows.iter().map(|r| r.body.len()).sum();
            let rows = with_connection_sized(
                &pool,
                DB_CALL_LIMIT,
                async |client| {
                    let set = ShardSet {
                        route: &target.route,
                        target: &target.name,
                        shards,
                        owned: &owned,
                    };
                    match &lane {
                        Some(lane) => {
                            read_lane(&*client, &set, &lane.key, lane.after_seq, limit as i64).await
                        }
                        None => read_due(&*client, &set, limit as i64, after).await,
                    }
                },
                body_bytes,
            )
            .await
            .map_err(|e| e.to_string());
            ReadDone {
                lane,
                asked: limit,
                rows,
            }
        });
    }

    fn on_read(&mut self, done: ReadDone) {
        self.take_in(done);
        // After taking in: until then, what was recorded during the read
        // must stay filtered out.
        self.held.end_read();
    }

    fn take_in(&mut self, done: ReadDone) {
        if done.lane.is_some() {
            self.reading_lane = false;
        } else {
            self.reading_due = false;
        }
        let rows = match done.rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(route = %self.target.route, target_name = %self.target.name, error = %e,
                    "cannot read due deliveries; retrying in a second");
                if done.lane.is_none() {
                    self.maybe_due = false;
                    self.cursor = None;
                    self.poll_at = Instant::now() + Duration::from_secs(1);
                }
                return;
            }
        };
        let full = rows.len() >= done.asked;
        let last_seq = rows.iter().map(|d| d.position.seq).max();
        if done.lane.is_none() {
            self.maybe_due = full;
            self.cursor = if self.maybe_due {
                rows.iter().map(|d| d.position).max()
            } else {
                None
            };
            if !self.maybe_due {
                self.poll_at = Instant::now() + self.settings.poll;
            }
            if !rows.is_empty() {
                let bytes: usize = rows.iter().map(|d| d.body.len()).sum();
                self.mean_body = Some(bytes / rows.len());
            }
        }
        let view = self.view.borrow();
        self.held.admit(rows, |shard| view.epoch_of(shard));
        drop(view);
        if let (Some(lane), true, Some(last_seq)) = (&done.lane, full, last_seq)
            && let Some(read) = self.held.more_of(&lane.key, lane.shard, last_seq)
        {
            self.lane_reads.push_back(read);
        }
    }

    /// Sleeps until `until`, a read's result, an event, a wake-up, a
    /// change of shards or settings, a retry coming due, the poll, or
    /// shutdown.
    async fn wait(&mut self, until: Option<Instant>) {
        let due = *self
            .target
            .next_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let reading = !self.reads.is_empty();
        tokio::select! {
            biased;
            () = self.settings.cancel.cancelled() => {}
            Some(done) = self.reads.join_next(), if reading => match done {
                Ok(done) => self.on_read(done),
                Err(e) => {
                    tracing::error!(error = %e, "a read task failed");
                    self.held.end_read();
                    (self.reading_due, self.reading_lane) = (false, false);
                }
            },
            Some(event) = self.events.recv() => self.on_event(event),
            () = self.target.wake.notified() => self.maybe_due = true,
            () = self.target.flow.changed() => {}
            Ok(()) = self.view.changed() => self.shards_changed(),
            () = sleep => {}
        }
        let now = Instant::now();
        if !self.maybe_due && self.poll_at <= now {
            self.maybe_due = true;
        }
        let mut next_due = self
            .target
            .next_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if next_due.is_some_and(|at| at <= now) {
            // A retry may come due behind the cursor.
            *next_due = None;
            self.maybe_due = true;
            self.cursor = None;
        }
    }

    /// Lets the attempts in flight finish (each bounded by the route's
    /// timeout) so that their outcomes reach the recorder before it stops.
    /// What is held unsent stays in the outbox for the next owner.
    async fn shut_down(mut self) {
        self.reads.abort_all();
        while self.attempts.join_next().await.is_some() {}
    }
}
