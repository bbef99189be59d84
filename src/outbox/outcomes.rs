//! What became of each attempt, written back in batches: delivered rows
//! removed (with their message once no target is left), retries scheduled,
//! dead letters marked.

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

/// The statements' arrays for the outcomes of one batch that may be written.
#[derive(Debug, Default)]
struct Arrays {
    /// Delivered to the only target of their route.
    delivered_sole: Keys,
    /// Delivered to one of several targets.
    delivered_shared: Keys,
    retry: Failures,
    dead: Failures,
}

impl Arrays {
    fn push(&mut self, outcome: &Outcome) {
        let target = &*outcome.target;
        let (id, attempt) = (outcome.message_id, outcome.attempt);
        match &outcome.fate {
            Fate::Delivered if outcome.sole_target => self.delivered_sole.push(id, target),
            Fate::Delivered => self.delivered_shared.push(id, target),
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
}

/// (route, target, shard, epoch): the lease an outcome was made under.
type Fence = (String, String, i32, i64);

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

    /// Writes in one transaction the outcomes whose shard `owner` still
    /// holds at their epoch, and returns, in push order, whether each was
    /// written. The others belong to the shard's new owner: writing them
    /// could undo what it has done since.
    pub async fn write(
        &self,
        client: &mut deadpool_postgres::Client,
        owner: &str,
    ) -> Result<Vec<bool>, tokio_postgres::Error> {
        let mut fences: Vec<Fence> = self
            .outcomes
            .iter()
            .map(|o| (o.route.to_string(), o.target.to_string(), o.shard, o.epoch))
            .collect();
        fences.sort();
        fences.dedup();
        let tx = client.transaction().await?;
        let held = fence(&tx, &fences, owner).await?;
        let applied: Vec<bool> = self
            .outcomes
            .iter()
            .map(|o| held.contains(&(o.route.to_string(), o.target.to_string(), o.shard, o.epoch)))
            .collect();
        let mut arrays = Arrays::default();
        // A later outcome of the same delivery supersedes an earlier one.
        let mut seen = std::collections::HashSet::new();
        for (outcome, _) in self
            .outcomes
            .iter()
            .zip(&applied)
            .rev()
            .filter(|(_, applied)| **applied)
        {
            if seen.insert((outcome.message_id, &outcome.target)) {
                arrays.push(outcome);
            }
        }
        arrays.write(&tx).await?;
        tx.commit().await?;
        Ok(applied)
    }
}

/// Locks the shard rows of `fences` and returns those `owner` still holds.
async fn fence(
    tx: &deadpool_postgres::Transaction<'_>,
    fences: &[Fence],
    owner: &str,
) -> Result<std::collections::HashSet<Fence>, tokio_postgres::Error> {
    let routes: Vec<&str> = fences.iter().map(|f| f.0.as_str()).collect();
    let targets: Vec<&str> = fences.iter().map(|f| f.1.as_str()).collect();
    let shards: Vec<i32> = fences.iter().map(|f| f.2).collect();
    let epochs: Vec<i64> = fences.iter().map(|f| f.3).collect();
    let statement = tx.prepare_cached(sql::FENCE_SHARDS).await?;
    let params: [&(dyn ToSql + Sync); 5] = [&routes, &targets, &shards, &epochs, &owner];
    let rows = tx.query(&statement, &params).await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect())
}

impl Arrays {
    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        let sole = &self.delivered_sole;
        if !sole.ids.is_empty() {
            let statement = tx.prepare_cached(sql::DELETE_DELIVERED_SOLE).await?;
            tx.execute(&statement, &[&sole.ids, &sole.targets]).await?;
        }
        let shared = &self.delivered_shared;
        if !shared.ids.is_empty() {
            let lock = tx.prepare_cached(sql::LOCK_MESSAGES).await?;
            tx.execute(&lock, &[&shared.ids]).await?;
            let delete = tx.prepare_cached(sql::DELETE_DELIVERED).await?;
            tx.execute(&delete, &[&shared.ids, &shared.targets]).await?;
            let finished = tx.prepare_cached(sql::DELETE_FINISHED_MESSAGES).await?;
            tx.execute(&finished, &[&shared.ids]).await?;
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
