//! Shard leases: which spool dispatches each (route, target, shard), and at
//! which epoch. The statements are in sql.rs; the policy (how many to hold,
//! when to renew) is the dispatcher's.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::sql;

/// A shard held at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShardLease {
    pub shard: i32,
    pub epoch: i64,
}

/// The shard count stored for a target, after making its rows if it has
/// none. A different configured count replaces the rows only while no
/// other spool holds a live lease on them; else the stored count is kept
/// (returned as `Err` with it, for the caller to say so).
pub async fn ensure_shards(
    client: &mut deadpool_postgres::Client,
    route: &str,
    target: &str,
    configured: i32,
    owner: &str,
) -> Result<Result<i32, i32>, tokio_postgres::Error> {
    client
        .execute(sql::ENSURE_SHARDS, &[&route, &target, &configured])
        .await?;
    let tx = client.transaction().await?;
    // Serializes resharding with takes of this target's shards.
    tx.execute(sql::LOCK_TARGET_SHARDS, &[&route, &target])
        .await?;
    let row = tx
        .query_one(sql::SHARD_COUNT, &[&route, &target, &owner])
        .await?;
    let stored: i32 = row.get(0);
    let held_by_others: i64 = row.get(1);
    if stored == configured {
        tx.commit().await?;
        return Ok(Ok(stored));
    }
    if held_by_others > 0 {
        tx.commit().await?;
        return Ok(Err(stored));
    }
    tx.execute(sql::RESHARD, &[&route, &target, &configured])
        .await?;
    tx.commit().await?;
    Ok(Ok(configured))
}

/// Says `owner` serves these targets for `ttl`; returns every live spool
/// serving each of them as (route, target, owner).
pub async fn heartbeat_members(
    client: &impl GenericClient,
    targets: &[(String, String)],
    owner: &str,
    ttl: Duration,
) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
    let routes: Vec<&str> = targets.iter().map(|(r, _)| r.as_str()).collect();
    let names: Vec<&str> = targets.iter().map(|(_, t)| t.as_str()).collect();
    let ttl_s = ttl.as_secs_f64();
    let statement = client.prepare_cached(sql::HEARTBEAT_MEMBERS).await?;
    let rows = client
        .query(&statement, &[&routes, &names, &owner, &ttl_s])
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

pub async fn forget_members(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    client.execute(sql::FORGET_MEMBERS, &[]).await
}

fn split(leases: &[ShardLease]) -> (Vec<i32>, Vec<i64>) {
    leases.iter().map(|l| (l.shard, l.epoch)).unzip()
}

fn leases(rows: Vec<tokio_postgres::Row>) -> Vec<ShardLease> {
    let mut leases: Vec<_> = rows
        .into_iter()
        .map(|row| ShardLease {
            shard: row.get(0),
            epoch: row.get(1),
        })
        .collect();
    leases.sort();
    leases
}

/// Renews `held` for `ttl`; returns those still held (the others were taken).
pub async fn renew_shards(
    client: &impl GenericClient,
    route: &str,
    target: &str,
    held: &[ShardLease],
    owner: &str,
    ttl: Duration,
) -> Result<Vec<ShardLease>, tokio_postgres::Error> {
    let (shards, epochs) = split(held);
    let ttl_s = ttl.as_secs_f64();
    let statement = client.prepare_cached(sql::RENEW_SHARDS).await?;
    let params: [&(dyn ToSql + Sync); 6] = [&route, &target, &shards, &epochs, &owner, &ttl_s];
    Ok(leases(client.query(&statement, &params).await?))
}

/// Takes up to `count` shards nobody holds, other than `held`.
pub async fn take_shards(
    client: &impl GenericClient,
    route: &str,
    target: &str,
    count: i64,
    held: &[ShardLease],
    owner: &str,
    ttl: Duration,
) -> Result<Vec<ShardLease>, tokio_postgres::Error> {
    let (shards, _) = split(held);
    let ttl_s = ttl.as_secs_f64();
    let statement = client.prepare_cached(sql::TAKE_SHARDS).await?;
    let params: [&(dyn ToSql + Sync); 6] = [&route, &target, &count, &shards, &owner, &ttl_s];
    Ok(leases(client.query(&statement, &params).await?))
}

/// Hands `released` back, so that another spool may take them at once.
pub async fn release_shards(
    client: &impl GenericClient,
    route: &str,
    target: &str,
    released: &[ShardLease],
    owner: &str,
) -> Result<u64, tokio_postgres::Error> {
    let (shards, epochs) = split(released);
    let params: [&(dyn ToSql + Sync); 5] = [&route, &target, &shards, &epochs, &owner];
    client.execute(sql::RELEASE_SHARDS, &params).await
}

/// Hands back everything `owner` holds (at shutdown).
pub async fn leave(client: &impl GenericClient, owner: &str) -> Result<u64, tokio_postgres::Error> {
    client.execute(sql::LEAVE, &[&owner]).await
}

/// Who dispatches one shard, as the lease table says.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardOwner {
    pub route: String,
    pub target: String,
    pub shard: i32,
    /// None, or an owner whose lease ran out (`lease_left_s` <= 0), means
    /// nobody sends that shard's deliveries until a spool takes it.
    pub owner: Option<String>,
    pub epoch: i64,
    pub lease_left_s: f64,
}

impl ShardOwner {
    /// The owner whose lease is still running.
    pub fn live_owner(&self) -> Option<&str> {
        self.owner.as_deref().filter(|_| self.lease_left_s > 0.0)
    }
}

/// Every shard of every target, ordered by route, target and shard.
pub async fn shard_owners(
    client: &impl GenericClient,
) -> Result<Vec<ShardOwner>, tokio_postgres::Error> {
    let rows = client.query(sql::SHARD_OWNERS, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| ShardOwner {
            route: row.get(0),
            target: row.get(1),
            shard: row.get(2),
            owner: row.get(3),
            epoch: row.get(4),
            lease_left_s: row.get(5),
        })
        .collect())
}
