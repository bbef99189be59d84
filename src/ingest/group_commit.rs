//! Group commit: concurrent writes share one transaction, so throughput is
//! not one fsync per request.
//!
//! Handlers put a write on a bounded queue and wait for its outcome. A few
//! committer tasks each take whatever is queued (up to `batch_max`), store
//! it in one statement and answer every write of the batch only after the
//! commit. Invariant: `Ok(Stored::Accepted)` is sent only for a committed
//! row; a batch known not to be stored answers every write with an error
//! that says so, and one whose COMMIT went unanswered is looked up
//! (`outbox::transaction_status`) before it is answered either way, or
//! answered `OutcomeUnknown` when Postgres cannot say in time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::config::IngestConfig;
use crate::dispatch::Wakeups;
use crate::outbox::{
    BatchCommit, DbError, Incarnation, NewMessage, Stored, TransactionStatus, commit_batch,
    transaction_status,
};
use crate::telemetry::Metrics;

/// How often a write is tried again after losing an idempotency race to
/// another spool's concurrent transaction.
const MAX_TRIES: u8 = 3;

/// Why a write was not acknowledged. Every variant but `OutcomeUnknown`
/// means the write is known not to be stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("the write queue is full ({0} writes waiting)")]
    QueueFull(usize),
    #[error("the outbox did not commit within {0:?}")]
    Timeout(Duration),
    #[error("the outbox could not commit: {0}")]
    Database(Arc<str>),
    #[error("spool is shutting down")]
    ShuttingDown,
    /// The COMMIT was sent but its answer lost, and Postgres could not be
    /// asked in time what became of it: the write may be stored.
    #[error("the outbox's answer to the commit was lost ({lost}) and {lookup}")]
    OutcomeUnknown { lost: Arc<str>, lookup: Arc<str> },
}

impl CommitError {
    /// Whether the write is known not to be stored.
    pub fn is_definite(&self) -> bool {
        !matches!(self, CommitError::OutcomeUnknown { .. })
    }
}

impl From<DbError> for CommitError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Timeout(d) => CommitError::Timeout(d),
            other => CommitError::Database(other.to_string().into()),
        }
    }
}

/// How the latest batches of real writes fared: `/readyz` reports the
/// write path from them, not only from its own heartbeat.
#[derive(Debug, Default)]
pub struct CommitHealth {
    latest: std::sync::Mutex<Latest>,
}

#[derive(Debug, Default)]
struct Latest {
    committed: Option<Instant>,
    failed: Option<(Instant, String)>,
}

impl Latest {
    fn is_failing(&self) -> bool {
        match (&self.failed, self.committed) {
            (Some((failed, _)), Some(committed)) => *failed > committed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl CommitHealth {
    /// Records a commit; says whether the latest batch before it failed.
    fn committed(&self) -> bool {
        let mut latest = self.lock();
        let was_failing = latest.is_failing();
        latest.committed = Some(Instant::now());
        was_failing
    }

    /// Records a failure; says whether the latest batch before it committed
    /// (or there was none).
    fn failed(&self, error: &CommitError) -> bool {
        let mut latest = self.lock();
        let was_failing = latest.is_failing();
        latest.failed = Some((Instant::now(), error.to_string()));
        !was_failing
    }

    /// The latest failure within `within` with no commit since: how long
    /// ago, and why.
    pub fn failing(&self, within: Duration) -> Option<(Duration, String)> {
        let latest = self.lock();
        if !latest.is_failing() {
            return None;
        }
        let (at, why) = latest.failed.as_ref()?;
        let ago = at.elapsed();
        (ago <= within).then(|| (ago, why.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Job {
    message: NewMessage,
    deadline: Instant,
    tries: u8,
    reply: oneshot::Sender<Result<Stored, CommitError>>,
}

/// The handlers' side: submit a write, wait for its commit.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
    capacity: usize,
    commit_timeout: Duration,
    wait: Duration,
    health: Arc<CommitHealth>,
}

impl GroupCommit {
    /// Starts `config.committers` committer tasks on `pool`. They stop once
    /// every `GroupCommit` clone is dropped and the queue is drained.
    /// `wakeups` is told which routes got new writes after each commit.
    pub fn start(
        pool: Pool,
        config: &IngestConfig,
        metrics: Arc<Metrics>,
        wakeups: Arc<Wakeups>,
    ) -> (Self, JoinSet<()>) {
        let (queue, receiver) = mpsc::channel(config.queue_capacity);
        let health = Arc::new(CommitHealth::default());
        let shared = Arc::new(Committer {
            health: Arc::clone(&health),
            receiver: Mutex::new(receiver),
            requeue: queue.downgrade(),
            pool,
            batch_max: config.batch_max,
            retention_s: config.idempotency_retention_s as f64,
            outcome_lookup: config.outcome_lookup(),
            incarnation: Incarnation::default(),
            metrics,
            wakeups,
        });
        let mut tasks = JoinSet::new();
        for _ in 0..config.committers {
            tasks.spawn(Arc::clone(&shared).run());
        }
        let handle = GroupCommit {
            queue,
            capacity: config.queue_capacity,
            commit_timeout: config.commit_timeout(),
            // The committer answers by then; the slack covers a busy runtime.
            wait: config.commit_timeout() + config.outcome_lookup() + Duration::from_secs(1),
            health,
        };
        (handle, tasks)
    }

    /// How the latest batches fared.
    pub fn health(&self) -> Arc<CommitHealth> {
        Arc::clone(&self.health)
    }

    /// Queues `message` and waits for its outcome: committed by the commit
    /// timeout, or looked up after that within the outcome lookup window.
    /// An error means the write was not acknowledged; only
    /// `CommitError::OutcomeUnknown` leaves open whether it is stored, which
    /// is why clients retry with the same Idempotency-Key.
    pub async fn submit(&self, message: NewMessage) -> Result<Stored, CommitError> {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            message,
            deadline: Instant::now() + self.commit_timeout,
            tries: 0,
            reply,
        };
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommitError::QueueFull(self.capacity),
            mpsc::error::TrySendError::Closed(_) => CommitError::ShuttingDown,
        })?;
        // Without an answer from the committer, the write may be anywhere
        // between the queue and a COMMIT: say so rather than guess.
        let unanswered = |lost: &str| CommitError::OutcomeUnknown {
            lost: lost.into(),
            lookup: "no lookup could be made".into(),
        };
        match timeout(self.wait, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unanswered("spool stopped while committing")),
            Err(_) => Err(unanswered("the committer did not answer in time")),
        }
    }
}

struct Committer {
    receiver: Mutex<mpsc::Receiver<Job>>,
    /// Weak, so that the queue closes when the last handler-side sender goes.
    requeue: mpsc::WeakSender<Job>,
    pool: Pool,
    batch_max: usize,
    retention_s: f64,
    /// How long past its deadline a batch in doubt is looked up.
    outcome_lookup: Duration,
    /// Which run of the server the batches go to.
    incarnation: Incarnation,
    metrics: Arc<Metrics>,
    wakeups: Arc<Wakeups>,
    /// How the latest batches fared; its transitions are logged once.
    health: Arc<CommitHealth>,
}

impl Committer {
    async fn run(self: Arc<Self>) {
        while let Some(batch) = self.next_batch().await {
            self.commit(batch).await;
        }
    }

    /// Waits for one write, then takes what else is already queued. No
    /// lingering: while one batch commits, the next one fills up.
    async fn next_batch(&self) -> Option<Vec<Job>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut batch = Vec::with_capacity(self.batch_max.min(receiver.len() + 1));
        batch.push(first);
        while batch.len() < self.batch_max {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        self.metrics.commit_queue.set(receiver.len() as i64);
        drop(receiver);
        // A handler that gave up is not waiting: its write is not stored.
        batch.retain(|job| !job.reply.is_closed());
        Some(batch)
    }

    async fn commit(&self, batch: Vec<Job>) {
        // A write that waited past its deadline in the queue is refused
        // before anything is sent for it.
        let now = Instant::now();
        let (late, batch): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|job| job.deadline <= now);
        for job in late {
            let _ = job.reply.send(Err(CommitError::Timeout(Duration::ZERO)));
        }
        if batch.is_empty() {
            return;
        }
        let deadline = batch
            .iter()
            .map(|job| job.deadline)
            .min()
            .expect("non-empty");
        let (leaders, followers) = fold_duplicate_keys(&batch);
        let started = Instant::now();
        let messages: Vec<&NewMessage> = leaders.iter().map(|&i| &batch[i].message).collect();
        self.metrics
            .commit_batch_size
            .observe(messages.len() as f64);
        let result = self.store(&messages, deadline).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CommitError::Timeout(_)) => "timeout",
            Err(CommitError::OutcomeUnknown { .. }) => "unknown",
            Err(_) => "error",
        };
        self.metrics
            .commit_seconds
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        self.note_health(&result, batch.len());
        match result {
            Ok(stored) => {
                let routes: HashSet<&str> = leaders
                    .iter()
                    .zip(&stored)
                    .filter(|(_, outcome)| **outcome == Stored::Accepted)
                    .map(|(&i, _)| &*batch[i].message.route)
                    .collect();
                if !routes.is_empty() {
                    self.wakeups.committed(routes);
                }
                self.answer(batch, &leaders, &followers, &stored)
            }
            Err(error) => {
                for job in batch {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Commits `messages` by `deadline`; a batch in doubt is looked up for
    /// `outcome_lookup` more.
    async fn store(
        &self,
        messages: &[&NewMessage],
        deadline: Instant,
    ) -> Result<Vec<Stored>, CommitError> {
        let committed = commit_batch(
            &self.pool,
            messages,
            self.retention_s,
            deadline,
            &self.incarnation,
        );
        match committed.await {
            BatchCommit::Committed(stored) => Ok(stored),
            BatchCommit::NotCommitted(error) => Err(error.into()),
            BatchCommit::InDoubt {
                inserted,
                incarnation,
                error,
            } => {
                let lookup_until = Instant::now().max(deadline) + self.outcome_lookup;
                let status =
                    transaction_status(&self.pool, &inserted, &incarnation, lookup_until).await;
                tracing::warn!(
                    error = %error,
                    status = ?status,
                    writes = messages.len(),
                    "the answer to a commit was lost; asked Postgres what became of it"
                );
                match status {
                    TransactionStatus::Committed => Ok(inserted.stored),
                    TransactionStatus::Aborted => Err(CommitError::Database(
                        format!("{error}; Postgres reports the transaction aborted").into(),
                    )),
                    TransactionStatus::Unknown(why) => Err(CommitError::OutcomeUnknown {
                        lost: error.to_string().into(),
                        lookup: why.into(),
                    }),
                }
            }
        }
    }

    fn answer(
        &self,
        batch: Vec<Job>,
        leaders: &[usize],
        followers: &HashMap<usize, usize>,
        stored: &[Stored],
    ) {
        let mut leader_outcome: HashMap<usize, Stored> = HashMap::with_capacity(leaders.len());
        for (&index, &outcome) in leaders.iter().zip(stored) {
            leader_outcome.insert(index, outcome);
        }
        let hashes: Vec<[u8; 32]> = batch.iter().map(|job| job.message.request_hash).collect();
        let ids: Vec<uuid::Uuid> = batch.iter().map(|job| job.message.id).collect();
        for (index, job) in batch.into_iter().enumerate() {
            let outcome = match followers.get(&index) {
                None => leader_outcome[&index],
                Some(&leader) => {
                    let same = hashes[index] == hashes[leader];
                    match (leader_outcome[&leader], same) {
                        (Stored::Accepted, true) => Stored::Replayed(ids[leader]),
                        (Stored::Accepted, false) => Stored::Conflict(ids[leader]),
                        (Stored::Replayed(holder), true) => Stored::Replayed(holder),
                        (Stored::Replayed(holder), false) => Stored::Conflict(holder),
                        (Stored::Conflict(holder), true) => Stored::Conflict(holder),
                        // Unknown whether it matches the holder: look again.
                        (Stored::Conflict(_), false) | (Stored::Retry, _) => Stored::Retry,
                    }
                }
            };
            if outcome == Stored::Retry {
                self.retry(job);
            } else {
                let _ = job.reply.send(Ok(outcome));
            }
        }
    }

    /// Puts a write back on the queue after losing a race for its key.
    fn retry(&self, mut job: Job) {
        job.tries += 1;
        if job.tries >= MAX_TRIES {
            let _ = job.reply.send(Err(CommitError::Database(
                "the Idempotency-Key is being claimed concurrently; try again".into(),
            )));
            return;
        }
        let Some(queue) = self.requeue.upgrade() else {
            let _ = job.reply.send(Err(CommitError::ShuttingDown));
            return;
        };
        if let Err(e) = queue.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            let _ = job
                .reply
                .send(Err(CommitError::QueueFull(queue.max_capacity())));
        }
    }

    fn note_health<T>(&self, result: &Result<T, CommitError>, writes: usize) {
        match result {
            Ok(_) => {
                if self.health.committed() {
                    tracing::info!("outbox writable again; writes are being accepted");
                }
            }
            Err(e) => {
                if self.health.failed(e) {
                    tracing::error!(error = %e, writes, "outbox not writable; writes are refused with 503 until it recovers");
                } else {
                    tracing::debug!(error = %e, writes, "group commit failed");
                }
            }
        }
    }
}

/// Within one batch, the first write with a given (route, Idempotency-Key)
/// is stored; the others follow its outcome. Returns the leaders' indexes
/// and a map from each follower to its leader.
fn fold_duplicate_keys(batch: &[Job]) -> (Vec<usize>, HashMap<usize, usize>) {
    let mut leaders = Vec::with_capacity(batch.len());
    let mut followers = HashMap::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (index, job) in batch.iter().enumerate() {
        let message = &job.message;
        match message.idempotency_key.as_deref() {
            Some(key) => match seen.get(&(&*message.route, key)) {
                Some(&leader) => {
                    followers.insert(index, leader);
                }
                None => {
                    seen.insert((&message.route, key), index);
                    leaders.push(index);
                }
            },
            None => leaders.push(index),
        }
    }
    (leaders, followers)
}
