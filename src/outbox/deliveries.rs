//! Deliveries: claiming due ones under a lease, recording what became of
//! each attempt, and the dead-letter store.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::sql;

/// A claimed delivery: everything needed to send one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub message_id: Uuid,
    /// This attempt's number, from 1.
    pub attempts: u32,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers_json: String,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Time since the write was accepted.
    pub age: Duration,
}

/// Claims up to `limit` due deliveries of (route, target) for `owner`.
pub async fn claim_due(
    client: &ClientWrapper,
    route: &str,
    target: &str,
    limit: i64,
    owner: &str,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql::CLAIM_DUE).await?;
    let lease_s = lease.as_secs_f64();
    let rows = client
        .query(&statement, &[&route, &target, &limit, &owner, &lease_s])
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| ClaimedDelivery {
            message_id: row.get(0),
            attempts: row.get::<_, i32>(1).max(1) as u32,
            method: row.get(2),
            path: row.get(3),
            query: row.get(4),
            headers_json: row.get(5),
            body: Bytes::from(row.get::<_, Vec<u8>>(6)),
            idempotency_key: row.get(7),
            traceparent: row.get(8),
            tracestate: row.get(9),
            age: Duration::from_secs_f64(row.get::<_, f64>(10).max(0.0)),
        })
        .collect())
}

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

/// Failed deliveries with their delay (retries only), status and error.
#[derive(Debug, Default)]
struct Failures {
    keys: Keys,
    delays_s: Vec<f64>,
    statuses: Vec<Option<i16>>,
    errors: Vec<String>,
}

impl Failures {
    fn push(
        &mut self,
        message_id: Uuid,
        target: &str,
        delay: Duration,
        status: Option<u16>,
        error: String,
    ) {
        self.keys.push(message_id, target);
        self.delays_s.push(delay.as_secs_f64());
        self.statuses.push(status.map(|s| s as i16));
        self.errors.push(error);
    }
}

/// Outcomes gathered from many attempts, written in one transaction.
#[derive(Debug, Default)]
pub struct OutcomeBatch {
    delivered: Keys,
    retry: Failures,
    dead: Failures,
}

impl OutcomeBatch {
    pub fn push(&mut self, message_id: Uuid, target: &str, fate: Fate) {
        match fate {
            Fate::Delivered => self.delivered.push(message_id, target),
            Fate::RetryIn {
                delay,
                status,
                error,
            } => self.retry.push(message_id, target, delay, status, error),
            Fate::Dead { status, error } => {
                self.dead
                    .push(message_id, target, Duration::ZERO, status, error)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.delivered.ids.len() + self.retry.keys.ids.len() + self.dead.keys.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every outcome in one transaction. Rows whose lease `owner` no
    /// longer holds (taken over after expiry) are left to their new owner.
    pub async fn write(
        &self,
        client: &mut ClientWrapper,
        owner: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let delivered = &self.delivered;
        if !delivered.ids.is_empty() {
            tx.execute(sql::LOCK_MESSAGES, &[&delivered.ids]).await?;
            tx.execute(
                sql::DELETE_DELIVERED,
                &[&delivered.ids, &delivered.targets, &owner],
            )
            .await?;
            tx.execute(sql::DELETE_FINISHED_MESSAGES, &[&delivered.ids])
                .await?;
        }
        let retry = &self.retry;
        if !retry.keys.ids.is_empty() {
            let params: [&(dyn ToSql + Sync); 6] = [
                &retry.keys.ids,
                &retry.keys.targets,
                &retry.delays_s,
                &retry.statuses,
                &retry.errors,
                &owner,
            ];
            tx.execute(sql::SCHEDULE_RETRY, &params).await?;
        }
        let dead = &self.dead;
        if !dead.keys.ids.is_empty() {
            let params: [&(dyn ToSql + Sync); 5] = [
                &dead.keys.ids,
                &dead.keys.targets,
                &dead.statuses,
                &dead.errors,
                &owner,
            ];
            tx.execute(sql::MARK_DEAD, &params).await?;
        }
        tx.commit().await
    }
}
