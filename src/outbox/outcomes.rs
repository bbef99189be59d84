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
    pub target: Arc<str>,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// The target is its route's only one: a delivered message has no
    /// other delivery to wait for, so it goes without locking.
    pub sole_target: bool,
    pub fate: Fate,
}

/// Outcomes gathered from many attempts, written in one transaction.
#[derive(Debug, Default)]
pub struct OutcomeBatch {
    /// Delivered to the only target of their route.
    delivered_sole: Keys,
    /// Delivered to one of several targets.
    delivered_shared: Keys,
    retry: Failures,
    dead: Failures,
}

impl OutcomeBatch {
    pub fn push(&mut self, outcome: Outcome) {
        let Outcome {
            message_id,
            target,
            attempt,
            sole_target,
            fate,
        } = outcome;
        let target = &*target;
        match fate {
            Fate::Delivered if sole_target => self.delivered_sole.push(message_id, target),
            Fate::Delivered => self.delivered_shared.push(message_id, target),
            Fate::RetryIn {
                delay,
                status,
                error,
            } => self
                .retry
                .push(message_id, target, attempt, delay, status, error),
            Fate::Dead { status, error } => {
                self.dead
                    .push(message_id, target, attempt, Duration::ZERO, status, error)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.delivered_sole.ids.len()
            + self.delivered_shared.ids.len()
            + self.retry.keys.ids.len()
            + self.dead.keys.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every outcome in one transaction. Rows whose lease `owner` no
    /// longer holds (taken over after expiry) are left to their new owner.
    pub async fn write(
        &self,
        client: &mut deadpool_postgres::Client,
        owner: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let sole = &self.delivered_sole;
        let only_sole = self.len() == sole.ids.len();
        if only_sole {
            // One statement: its own transaction.
            return delete_delivered_sole(client, sole, owner).await;
        }
        let tx = client.transaction().await?;
        if !sole.ids.is_empty() {
            delete_delivered_sole(&tx, sole, owner).await?;
        }
        let shared = &self.delivered_shared;
        if !shared.ids.is_empty() {
            let lock = tx.prepare_cached(sql::LOCK_MESSAGES).await?;
            tx.execute(&lock, &[&shared.ids]).await?;
            let delete = tx.prepare_cached(sql::DELETE_DELIVERED).await?;
            tx.execute(&delete, &[&shared.ids, &shared.targets, &owner])
                .await?;
            let finished = tx.prepare_cached(sql::DELETE_FINISHED_MESSAGES).await?;
            tx.execute(&finished, &[&shared.ids]).await?;
        }
        let retry = &self.retry;
        if !retry.keys.ids.is_empty() {
            let params: [&(dyn ToSql + Sync); 7] = [
                &retry.keys.ids,
                &retry.keys.targets,
                &retry.attempts,
                &retry.delays_s,
                &retry.statuses,
                &retry.errors,
                &owner,
            ];
            let statement = tx.prepare_cached(sql::SCHEDULE_RETRY).await?;
            tx.execute(&statement, &params).await?;
        }
        let dead = &self.dead;
        if !dead.keys.ids.is_empty() {
            let params: [&(dyn ToSql + Sync); 6] = [
                &dead.keys.ids,
                &dead.keys.targets,
                &dead.attempts,
                &dead.statuses,
                &dead.errors,
                &owner,
            ];
            let statement = tx.prepare_cached(sql::MARK_DEAD).await?;
            tx.execute(&statement, &params).await?;
        }
        tx.commit().await
    }
}

/// Deletes delivered rows of sole targets with their messages.
async fn delete_delivered_sole(
    client: &impl GenericClient,
    delivered: &Keys,
    owner: &str,
) -> Result<(), tokio_postgres::Error> {
    let statement = client.prepare_cached(sql::DELETE_DELIVERED_SOLE).await?;
    client
        .execute(&statement, &[&delivered.ids, &delivered.targets, &owner])
        .await?;
    Ok(())
}
