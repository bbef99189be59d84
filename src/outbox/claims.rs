//! Claiming due deliveries under a lease, and giving leases back: what a
//! dispatcher does before an attempt.

use std::time::{Duration, SystemTime};

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
    pub attempt: u32,
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
    /// Where it stood in the claim order.
    pub position: ClaimPosition,
    /// It has an ordering key.
    pub keyed: bool,
}

/// A place in a target's claim order: due time, then acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimPosition {
    pub due_at: SystemTime,
    pub seq: i64,
}

/// Claims up to `limit` due deliveries of (route, target) for `owner`,
/// only those past `after` when it is given.
pub async fn claim_due(
    client: &ClientWrapper,
    route: &str,
    target: &str,
    limit: i64,
    owner: &str,
    lease: Duration,
    after: Option<ClaimPosition>,
) -> Result<Vec<ClaimedDelivery>, tokio_postgres::Error> {
    let lease_s = lease.as_secs_f64();
    let rows = match after {
        None => {
            let statement = client.prepare_cached(sql::CLAIM_DUE).await?;
            client
                .query(&statement, &[&route, &target, &limit, &owner, &lease_s])
                .await?
        }
        Some(after) => {
            let statement = client.prepare_cached(sql::CLAIM_DUE_AFTER).await?;
            let params: [&(dyn ToSql + Sync); 7] = [
                &route,
                &target,
                &limit,
                &owner,
                &lease_s,
                &after.due_at,
                &after.seq,
            ];
            client.query(&statement, &params).await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|row| ClaimedDelivery {
            message_id: row.get(0),
            attempt: row.get::<_, i32>(1).max(0) as u32 + 1,
            method: row.get(2),
            path: row.get(3),
            query: row.get(4),
            headers_json: row.get(5),
            body: Bytes::from(row.get::<_, Vec<u8>>(6)),
            idempotency_key: row.get(7),
            traceparent: row.get(8),
            tracestate: row.get(9),
            age: Duration::from_secs_f64(row.get::<_, f64>(10).max(0.0)),
            position: ClaimPosition {
                due_at: row.get(11),
                seq: row.get(12),
            },
            keyed: row.get(13),
        })
        .collect())
}

/// Frees the leases of claimed deliveries of `target` that were not sent.
pub async fn release_leases(
    client: &ClientWrapper,
    message_ids: &[Uuid],
    target: &str,
    owner: &str,
) -> Result<u64, tokio_postgres::Error> {
    let targets = vec![target; message_ids.len()];
    client
        .execute(sql::RELEASE_LEASES, &[&message_ids, &targets, &owner])
        .await
}

/// Puts up to `limit` deliveries whose lease ran out back to pending;
/// returns the route of each.
pub async fn sweep_expired_leases(
    client: &ClientWrapper,
    limit: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql::SWEEP_EXPIRED_LEASES).await?;
    let rows = client.query(&statement, &[&limit]).await?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}
