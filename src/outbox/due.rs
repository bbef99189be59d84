//! Reading what is due: the owned shards' deliveries of a target, in order,
//! with no row lock and no write (only the shard's owner dispatches it).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::sql;

/// A delivery read from the outbox: everything needed to send one attempt.
#[derive(Debug, Clone)]
pub struct DueDelivery {
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
    /// Time since the write was accepted, when it was read.
    pub age: Duration,
    /// Where it stands in the read order.
    pub position: ReadPosition,
    pub ordering_key: Option<String>,
    pub shard: i32,
    /// The delivery of the same key queued just before this one, if any.
    pub prev_id: Option<Uuid>,
}

/// A place in a target's read order: due time, then acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadPosition {
    pub due_at: SystemTime,
    pub seq: i64,
}

/// Which deliveries of a target a read is for.
pub struct ShardSet<'a> {
    pub route: &'a str,
    pub target: &'a str,
    /// The target's shard count.
    pub shards: i32,
    /// The shards this spool owns.
    pub owned: &'a [i32],
}

/// Up to `limit` due deliveries of the owned shards, only those past
/// `after` when it is given.
pub async fn read_due(
    client: &impl GenericClient,
    set: &ShardSet<'_>,
    limit: i64,
    after: Option<ReadPosition>,
) -> Result<Vec<DueDelivery>, tokio_postgres::Error> {
    let owned = set.owned.to_vec();
    let rows = match after {
        None => {
            let statement = client.prepare_cached(sql::READ_DUE).await?;
            let params: [&(dyn ToSql + Sync); 5] =
                [&set.route, &set.target, &set.shards, &owned, &limit];
            client.query(&statement, &params).await?
        }
        Some(after) => {
            let statement = client.prepare_cached(sql::READ_DUE_AFTER).await?;
            let params: [&(dyn ToSql + Sync); 7] = [
                &set.route,
                &set.target,
                &set.shards,
                &owned,
                &limit,
                &after.due_at,
                &after.seq,
            ];
            client.query(&statement, &params).await?
        }
    };
    Ok(rows.iter().map(due_delivery).collect())
}

/// Up to `limit` queued deliveries of one key after `after_seq`, due or not,
/// in acceptance order.
pub async fn read_lane(
    client: &impl GenericClient,
    set: &ShardSet<'_>,
    key: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<DueDelivery>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql::READ_LANE).await?;
    let params: [&(dyn ToSql + Sync); 6] = [
        &set.route,
        &set.target,
        &key,
        &after_seq,
        &limit,
        &set.shards,
    ];
    let rows = client.query(&statement, &params).await?;
    Ok(rows.iter().map(due_delivery).collect())
}

fn due_delivery(row: &Row) -> DueDelivery {
    DueDelivery {
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
        position: ReadPosition {
            due_at: row.get(11),
            seq: row.get(12),
        },
        ordering_key: row.get(13),
        shard: row.get(14),
        prev_id: row.get(15),
    }
}
