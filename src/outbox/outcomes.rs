//! What became of each attempt, written back in batches: delivered rows
//! removed (with their message once no target is left), retries scheduled,
//! dead letters marked.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::sql;

/// One delivery's fate after an attempt.
#[derive(Debug, Clone)]
pub enum Fate {
    Delivered,
    RetryIn {
        delay: Duration,
        status: Option<u16>,
        error: String,
    },
    Dead {
        status: Option<u16>,
        error: String,
    },
}

/// (message, target) pairs, as the two arrays the statements take.
#[derive(Debug, Default)]
struct Keys {
    ids: Vec<Uuid>,
    targets: Vec<String>,
}

impl Keys {
    fn push(&mut self, message_id: Uuid, target: &str) {
        self.ids.push(message_id);
        self.targets.push(target.to_owned());
    }
}

/// Failed deliveries with the attempt made, their delay (retries only),
/// status and error.
#[derive(Debug, Default)]
struct Failures {
    keys: Keys,
    attempts: Vec<i32>,
    delays_s: Vec<f64>,
    statuses: Vec<Option<i16>>,
    errors: Vec<String>,
}

impl Failures {
    fn push(
        &mut self,
        message_id: Uuid,
        target: &str,
        attempt: u32,
        delay: Duration,
        status: Option<u16>,
        error: String,
    ) {
        self.keys.push(message_id, target);
        self.attempts.push(attempt.min(i32::MAX as u32) as i32);
        self.delays_s.push(delay.as_secs_f64());
        self.statuses.push(status.map(|s| s as i16));
        self.errors.push(error);
    }
}

/// One attempt's outcome, on its way to the database.
#[derive(Debug)]
pub struct Outcome {
    pub message_id: Uuid,
    pub route: Arc<str>,
    pub target: Arc<str>,
    /// The delivery's shard, and the epoch at which its owner read it: the
    /// outcome is written only while that epoch holds.
    pub shard: i32,
    pub epoch: i64,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// The target is its route's only one: a delivered message has no
    /// other delivery to wait for.
    pub sole_target: bool,
    pub fate: Fate,
}

/// Outcomes gathered from many attempts, written in one transaction.
#[derive(Debug, Default)]
pub struct OutcomeBatch {
    outcomes: Vec<Outcome>,
}

/// The lease an outcome was made under: (route, target, shard, epoch).
type Fence = (String, String, i32, i64);

fn same_fence(fence: &Fence, outcome: &Outcome) -> bool {
    *fence.0 == *outcome.route
        && *fence.1 == *outcome.target
        && fence.2 == outcome.shard
        && fence.3 == outcome.epoch
}

impl OutcomeBatch {
    pub fn push(&mut self, outcome: Outcome) {
        self.outcomes.push(outcome);
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// Writes the outcomes whose shard `owner` still holds at their epoch
    /// and returns, in push order, whether each was written; the others
    /// belong to the shard's new owner, and writing them could undo what it
    /// has done since. A batch of deliveries to sole targets only (the
    /// common case) is one statement; any other is one transaction that
    /// starts with it.
    pub async fn write(
        &self,
        client: &mut deadpool_postgres::Client,
        owner: &str,
    ) -> Result<Vec<bool>, tokio_postgres::Error> {
        // A later outcome of the same delivery (a keyed retry answered
        // again before the first was written) supersedes an earlier one.
        let mut seen = HashSet::new();
        let mut latest: Vec<&Outcome> = self
            .outcomes
            .iter()
            .rev()
            .filter(|o| seen.insert((o.message_id, &o.target)))
            .collect();
        latest.reverse();
        let (sole, rest): (Vec<&Outcome>, Vec<&Outcome>) = latest
            .into_iter()
            .partition(|o| o.sole_target && matches!(o.fate, Fate::Delivered));
        let held = if rest.is_empty() {
            self.fence_and_delete_sole(&*client, &sole, owner).await?
        } else {
            let tx = client.transaction().await?;
            let held = self.fence_and_delete_sole(&tx, &sole, owner).await?;
            let mut arrays = Arrays::default();
            for outcome in rest {
                if held.iter().any(|f| same_fence(f, outcome)) {
                    arrays.push(outcome);
                }
            }
            arrays.write(&tx).await?;
            tx.commit().await?;
            held
        };
        Ok(self
            .outcomes
            .iter()
            .map(|o| held.iter().any(|f| same_fence(f, o)))
            .collect())
    }

    /// Runs `FENCE_AND_DELETE_DELIVERED_SOLE` for the whole batch's fences
    /// and `sole`'s rows; returns the fences held.
    async fn fence_and_delete_sole(
        &self,
        client: &impl GenericClient,
        sole: &[&Outcome],
        owner: &str,
    ) -> Result<Vec<Fence>, tokio_postgres::Error> {
        let mut fences: Vec<(&str, &str, i32, i64)> = self
            .outcomes
            .iter()
            .map(|o| (&*o.route, &*o.target, o.shard, o.epoch))
            .collect();
        fences.sort_unstable();
        fences.dedup();
        let routes: Vec<&str> = fences.iter().map(|f| f.0).collect();
        let targets: Vec<&str> = fences.iter().map(|f| f.1).collect();
        let shards: Vec<i32> = fences.iter().map(|f| f.2).collect();
        let epochs: Vec<i64> = fences.iter().map(|f| f.3).collect();
        let ids: Vec<Uuid> = sole.iter().map(|o| o.message_id).collect();
        let sole_targets: Vec<&str> = sole.iter().map(|o| &*o.target).collect();
        let sole_shards: Vec<i32> = sole.iter().map(|o| o.shard).collect();
        let sole_epochs: Vec<i64> = sole.iter().map(|o| o.epoch).collect();
        let statement = client
            .prepare_cached(sql::FENCE_AND_DELETE_DELIVERED_SOLE)
            .await?;
        let params: [&(dyn ToSql + Sync); 9] = [
            &routes,
            &targets,
            &shards,
            &epochs,
            &owner,
            &ids,
            &sole_targets,
            &sole_shards,
            &sole_epochs,
        ];
        let rows = client.query(&statement, &params).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect())
    }
}

/// The statements' arrays for a batch's outcomes other than deliveries
/// to sole targets.
#[derive(Debug, Default)]
struct Arrays {
    delivered: Keys,
    retry: Failures,
    dead: Failures,
}

impl Arrays {
    fn push(&mut self, outcome: &Outcome) {
        let target = &*outcome.target;
        let (id, attempt) = (outcome.message_id, outcome.attempt);
        match &outcome.fate {
            Fate::Delivered => self.delivered.push(id, target),
            Fate::RetryIn {
                delay,
                status,
                error,
            } => self
                .retry
                .push(id, target, attempt, *delay, *status, error.clone()),
            Fate::Dead { status, error } => {
                self.dead
                    .push(id, target, attempt, Duration::ZERO, *status, error.clone())
            }
        }
    }

    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        let delivered = &self.delivered;
        if !delivered.ids.is_empty() {
            let lock = tx.prepare_cached(sql::LOCK_MESSAGES).await?;
            tx.execute(&lock, &[&delivered.ids]).await?;
            let delete = tx.prepare_cached(sql::DELETE_DELIVERED).await?;
            tx.execute(&delete, &[&delivered.ids, &delivered.targets])
                .await?;
            let finished = tx.prepare_cached(sql::DELETE_FINISHED_MESSAGES).await?;
            tx.execute(&finished, &[&delivered.ids]).await?;
        }
        let retry = &self.retry;
        if !retry.keys.ids.is_empty() {
            let params: [&(dyn ToSql + Sync); 6] = [
                &retry.keys.ids,
                &retry.keys.targets,
                &retry.attempts,
                &retry.delays_s,
                &retry.statuses,
                &retry.errors,
            ];
            let statement = tx.prepare_cached(sql::SCHEDULE_RETRY).await?;
            tx.execute(&statement, &params).await?;
        }
        let dead = &self.dead;
        if !dead.keys.ids.is_empty() {
            let params: [&(dyn ToSql + Sync); 5] = [
                &dead.keys.ids,
                &dead.keys.targets,
                &dead.attempts,
                &dead.statuses,
                &dead.errors,
            ];
            let statement = tx.prepare_cached(sql::MARK_DEAD).await?;
            tx.execute(&statement, &params).await?;
        }
        Ok(())
    }
}
