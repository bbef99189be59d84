//! Group commit: concurrent writes share one transaction, so throughput is
//! not one fsync per request.
//!
//! Handlers put a write on a bounded queue and wait for its outcome. A few
//! committer tasks each take whatever is queued (up to `batch_max`), store
//! it in one statement and answer every write of the batch only after the
//! commit. Invariant: `Ok(Stored::Accepted)` is sent only for a committed
//! row; a failed or timed-out batch answers every write with an error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use crate::config::IngestConfig;
use crate::dispatch::Wakeups;
use crate::outbox::{DbError, NewMessage, Stored, insert_batch};
use crate::telemetry::Metrics;

/// How often a write is tried again after losing an idempotency race to
/// another spool's concurrent transaction.
const MAX_TRIES: u8 = 3;

/// Why a write was not committed. None of these acknowledges anything.
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
    wait: Duration,
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
        let shared = Arc::new(Committer {
            receiver: Mutex::new(receiver),
            requeue: queue.downgrade(),
            pool,
            batch_max: config.batch_max,
            retention_s: config.idempotency_retention_s as f64,
            healthy: AtomicBool::new(true),
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
            wait: config.commit_timeout(),
        };
        (handle, tasks)
    }

    /// Queues `message` and waits, at most the commit timeout, for its
    /// outcome. An error means the write was not acknowledged; after a
    /// timeout it may still have been committed, which is why clients
    /// retry with the same Idempotency-Key.
    pub async fn submit(&self, message: NewMessage) -> Result<Stored, CommitError> {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            message,
            deadline: Instant::now() + self.wait,
            tries: 0,
            reply,
        };
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommitError::QueueFull(self.capacity),
            mpsc::error::TrySendError::Closed(_) => CommitError::ShuttingDown,
        })?;
        match timeout(self.wait, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommitError::ShuttingDown),
            Err(_) => Err(CommitError::Timeout(self.wait)),
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
    /// Whether the last batch committed, so an outage is logged once.
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
    wakeups: Arc<Wakeups>,
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
            Err(DbError::Timeout(_)) => "timeout",
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
            Err(e) => {
                let error = match e {
                    DbError::Timeout(d) => CommitError::Timeout(d),
                    other => CommitError::Database(other.to_string().into()),
                };
                for job in batch {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// One statement within `deadline`; a connection that times out is
    /// discarded, since it may be stuck on a frozen server.
    async fn store(
        &self,
        messages: &[&NewMessage],
        deadline: Instant,
    ) -> Result<Vec<Stored>, DbError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let client = timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| DbError::Timeout(budget))??;
        match timeout_at(deadline, insert_batch(&client, messages, self.retention_s)).await {
            Ok(stored) => Ok(stored?),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(DbError::Timeout(budget))
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

    fn note_health<T>(&self, result: &Result<T, DbError>, writes: usize) {
        match result {
            Ok(_) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("outbox writable again; writes are being accepted");
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
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
