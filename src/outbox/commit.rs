//! Committing a batch so that its outcome is known, or known to be unknown.
//!
//! The batch is inserted in an explicit transaction whose id comes back with
//! the insert, before COMMIT is sent. Up to the COMMIT, any failure means
//! nothing is stored: the connection is dropped, which aborts the
//! transaction. Once COMMIT is sent, a lost answer (the connection broke,
//! the database stopped answering) leaves the batch in doubt, and Postgres
//! is asked on another connection what became of the transaction
//! (`pg_xact_status`), which it can say for every recent one.

use std::sync::RwLock;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::time::{Instant, sleep_until, timeout_at};

use super::insert::{Inserted, NewMessage, Stored, insert_batch};
use super::pool::{DbError, LARGE_TRANSFER, with_connection};
use super::sql;

/// What became of a batch's transaction, as far as its COMMIT's answer says.
#[derive(Debug)]
pub enum BatchCommit {
    Committed(Vec<Stored>),
    /// Known not to be stored: the transaction never reached COMMIT, or
    /// Postgres answered the COMMIT with an error (it rolled back).
    NotCommitted(DbError),
    /// COMMIT was sent and no answer came back. `incarnation` is the
    /// server's, as known before the batch began.
    InDoubt {
        inserted: Inserted,
        incarnation: String,
        error: DbError,
    },
}

/// The server's incarnation (`sql::SERVER_INCARNATION`) as last read. It
/// changes only with a restart, which breaks every connection, so it is
/// read once and again after a batch lost its connection. A reading taken
/// before a batch began can only be older than the server the batch ran
/// on: a stale one makes a lookup cautious, never wrong.
#[derive(Debug, Default)]
pub struct Incarnation {
    known: RwLock<Option<String>>,
}

impl Incarnation {
    fn get(&self) -> Option<String> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, incarnation: String) {
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = Some(incarnation);
    }

    fn forget(&self) {
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Inserts and commits `batch` on one connection of `pool`, all by
/// `deadline`.
pub async fn commit_batch(
    pool: &Pool,
    batch: &[&NewMessage],
    idempotency_retention_s: f64,
    deadline: Instant,
    incarnation: &Incarnation,
) -> BatchCommit {
    let outcome = commit_on_pool(pool, batch, idempotency_retention_s, deadline, incarnation).await;
    let connection_lost = match &outcome {
        BatchCommit::Committed(_) => false,
        BatchCommit::NotCommitted(DbError::Postgres(e)) => e.as_db_error().is_none(),
        BatchCommit::NotCommitted(_) | BatchCommit::InDoubt { .. } => true,
    };
    if connection_lost {
        incarnation.forget();
    }
    outcome
}

async fn commit_on_pool(
    pool: &Pool,
    batch: &[&NewMessage],
    idempotency_retention_s: f64,
    deadline: Instant,
    incarnation: &Incarnation,
) -> BatchCommit {
    let budget = deadline.saturating_duration_since(Instant::now());
    let client = match timeout_at(deadline, pool.get()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return BatchCommit::NotCommitted(e.into()),
        Err(_) => return BatchCommit::NotCommitted(DbError::Timeout(budget)),
    };
    // Any failure before COMMIT is sent leaves nothing stored.
    let before_commit = async {
        let known = match incarnation.get() {
            Some(known) => known,
            None => {
                let row = bounded(
                    deadline,
                    budget,
                    client.query_one(sql::SERVER_INCARNATION, &[]),
                )
                .await?;
                let known: String = row.get(0);
                incarnation.set(known.clone());
                known
            }
        };
        let inserted = bounded(
            deadline,
            budget,
            insert_batch(&client, batch, idempotency_retention_s),
        )
        .await?;
        Ok::<_, DbError>((known, inserted))
    };
    let (known, inserted) = match before_commit.await {
        Ok(ready) => ready,
        Err(e) => {
            discard(client);
            return BatchCommit::NotCommitted(e);
        }
    };
    match bounded(deadline, budget, client.batch_execute("COMMIT")).await {
        Ok(()) => {
            let bytes: usize = batch.iter().map(|m| m.body.len()).sum();
            if bytes > LARGE_TRANSFER {
                discard(client);
            }
            BatchCommit::Committed(inserted.stored)
        }
        // Postgres answered: a refused COMMIT rolled back.
        Err(DbError::Postgres(e)) if e.as_db_error().is_some() => {
            discard(client);
            BatchCommit::NotCommitted(DbError::Postgres(e))
        }
        Err(error) => {
            discard(client);
            BatchCommit::InDoubt {
                inserted,
                incarnation: known,
                error,
            }
        }
    }
}

/// `work` by `deadline`, its timeout reported as taking `budget`.
async fn bounded<T>(
    deadline: Instant,
    budget: Duration,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match timeout_at(deadline, work).await {
        Ok(done) => done.map_err(DbError::from),
        Err(_) => Err(DbError::Timeout(budget)),
    }
}

/// Closes a connection instead of returning it to the pool: it may hold an
/// open or failed transaction, or sit on a frozen server. Closing it aborts
/// any transaction that has not committed.
fn discard(client: Object) {
    drop(Object::take(client));
}

/// What Postgres says of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionStatus {
    Committed,
    Aborted,
    /// Postgres could not be asked, or could not say, by the deadline.
    Unknown(String),
}

/// How long to wait between two questions about one transaction.
const ASK_AGAIN: Duration = Duration::from_millis(100);
/// Longest one question may take, so a frozen connection does not use up
/// the whole deadline.
const ONE_QUESTION: Duration = Duration::from_secs(1);

/// Asks Postgres, on fresh connections, until `deadline`, whether the
/// transaction of `inserted` committed. A transaction still in progress
/// (its backend finishing the COMMIT) is asked about again.
///
/// After a crash or a failover, an id can belong to a newer transaction:
/// only an id whose records never reached the disk is handed out again, and
/// a committed transaction's always have, so "aborted" still means this one
/// did not commit, while "committed" counts only if its messages are there
/// (they may be gone once delivered: then spool says it does not know).
pub async fn transaction_status(
    pool: &Pool,
    inserted: &Inserted,
    incarnation: &str,
    deadline: Instant,
) -> TransactionStatus {
    let Some(xact) = &inserted.xact else {
        return TransactionStatus::Unknown("its transaction id was not known".into());
    };
    let mut last = String::from("no time was left to ask");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return TransactionStatus::Unknown(last);
        }
        let answer = with_connection(pool, (deadline - now).min(ONE_QUESTION), async |client| {
            let row = client
                .query_one(sql::TRANSACTION_STATUS, &[xact, &inserted.accepted])
                .await?;
            Ok((
                row.get::<_, Option<String>>(0),
                row.get::<_, String>(1),
                row.get::<_, i64>(2),
            ))
        })
        .await;
        let (status, started, found) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                last = format!("could not ask Postgres: {e}");
                sleep_until((now + ASK_AGAIN).min(deadline)).await;
                continue;
            }
        };
        let restarted = started != incarnation || started.ends_with("unseen");
        let all_there = found == inserted.accepted.len() as i64;
        match status.as_deref() {
            Some("committed") if !restarted || all_there => return TransactionStatus::Committed,
            Some("committed") => {
                return TransactionStatus::Unknown(
                    "Postgres restarted since, and the writes are not in the outbox \
                     (delivered already, or never committed)"
                        .into(),
                );
            }
            Some("aborted") => return TransactionStatus::Aborted,
            // In progress: its backend is finishing the COMMIT, or (after
            // a crash) a newer transaction holds the id; it ends either way.
            Some(_) => last = "its transaction was still in progress".into(),
            None => {
                return TransactionStatus::Unknown(
                    "Postgres no longer knows its transaction".into(),
                );
            }
        }
        sleep_until((now + ASK_AGAIN).min(deadline)).await;
    }
}
