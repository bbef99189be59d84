//! Which shards of each target this spool dispatches. Every few seconds it
//! says it is alive, renews its shard leases, takes free shards up to its
//! fair share (the target's shards split over the live spools serving it)
//! and hands back what it holds beyond that share once what is in flight
//! there had time to finish. Each target's worker watches the result.
//!
//! A lease is valid here until the instant its renewal was sent plus the
//! lease's length: never later than Postgres ends it, so a spool that was
//! paused or cut off sends nothing once another may have taken over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbox::{
    ShardLease, ensure_shards, forget_members, heartbeat_members, leave, release_shards,
    renew_shards, take_shards,
};

/// One held shard, as a worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldShard {
    pub epoch: i64,
    /// Past this instant nothing of the shard may be sent.
    pub valid_until: Instant,
}

/// A target's shards as this spool holds them.
#[derive(Debug, Clone, Default)]
pub struct ShardView {
    /// The target's shard count, 0 until known.
    pub shards: i32,
    pub held: BTreeMap<i32, HeldShard>,
}

impl ShardView {
    /// The epoch of `shard` if held.
    pub fn epoch_of(&self, shard: i32) -> Option<i64> {
        self.held.get(&shard).map(|h| h.epoch)
    }

    /// Whether a delivery of `shard` read under `epoch` may be sent now,
    /// with `needed` (the attempt's timeout) still to run on the lease.
    pub fn may_send(&self, shard: i32, epoch: i64, needed: Duration) -> bool {
        self.held
            .get(&shard)
            .is_some_and(|h| h.epoch == epoch && Instant::now() + needed <= h.valid_until)
    }

    pub fn owned(&self) -> Vec<i32> {
        self.held.keys().copied().collect()
    }

    fn same_shards(&self, other: &ShardView) -> bool {
        self.shards == other.shards
            && self.held.len() == other.held.len()
            && self
                .held
                .iter()
                .zip(&other.held)
                .all(|((a, x), (b, y))| a == b && x.epoch == y.epoch)
    }
}

/// One target as the ownership task keeps it.
pub struct OwnedTarget {
    pub route: Arc<str>,
    pub target: Arc<str>,
    /// The shard count from the configuration.
    pub configured: i32,
    /// How long an attempt may take: a shard handed back waits this long
    /// (and a little) for what is in flight there.
    pub drain: Duration,
    pub view: watch::Sender<ShardView>,
}

struct Leases {
    shards: Option<i32>,
    held: Vec<(ShardLease, Instant)>,
    /// Handed back once the instant passes; renewed until then.
    draining: Vec<(ShardLease, Instant)>,
}

pub struct Settings {
    pub pool: Pool,
    pub owner: Arc<str>,
    pub ttl: Duration,
}

/// Bound on one round of statements, the wait for a connection included.
const ROUND_LIMIT: Duration = Duration::from_secs(5);

/// Runs until `stop`, then hands every lease back.
pub async fn run(targets: Vec<OwnedTarget>, settings: Settings, stop: CancellationToken) {
    let mut leases: Vec<Leases> = targets
        .iter()
        .map(|_| Leases {
            shards: None,
            held: Vec::new(),
            draining: Vec::new(),
        })
        .collect();
    let every = settings.ttl / 4;
    for round in 0u64.. {
        let result = tokio::time::timeout(
            ROUND_LIMIT.min(settings.ttl / 2),
            one_round(&targets, &mut leases, &settings, round),
        )
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew shard leases; deliveries stop when they run out")
            }
            Err(_) => {
                tracing::warn!("renewing shard leases timed out; deliveries stop when they run out")
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    for target in &targets {
        target.view.send_modify(|view| view.held.clear());
    }
    let left = async {
        let client = settings.pool.get().await.map_err(|e| e.to_string())?;
        leave(&client, &settings.owner)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(ROUND_LIMIT, left).await {
        Ok(Ok(_)) => tracing::info!("shard leases handed back"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot hand shard leases back; others take them when they run out")
        }
        Err(_) => tracing::warn!("handing shard leases back timed out"),
    }
}

async fn one_round(
    targets: &[OwnedTarget],
    leases: &mut [Leases],
    settings: &Settings,
    round: u64,
) -> Result<(), String> {
    let (owner, ttl) = (&*settings.owner, settings.ttl);
    let mut client = settings.pool.get().await.map_err(|e| e.to_string())?;
    let names: Vec<(String, String)> = targets
        .iter()
        .map(|t| (t.route.to_string(), t.target.to_string()))
        .collect();
    let members = heartbeat_members(&client, &names, owner, ttl)
        .await
        .map_err(|e| e.to_string())?;
    if round % 1000 == 999 {
        forget_members(&client).await.map_err(|e| e.to_string())?;
    }
    for (target, leases) in targets.iter().zip(leases.iter_mut()) {
        let serving = members
            .iter()
            .filter(|(r, t, _)| *r == *target.route && *t == *target.target)
            .map(|(_, _, o)| o.as_str());
        tend(&mut client, target, leases, serving, settings).await?;
    }
    Ok(())
}

/// One target's round: its shard count (first time), renewals, shards
/// handed back after draining, then its fair share taken or trimmed.
async fn tend<'a>(
    client: &mut deadpool_postgres::Client,
    target: &OwnedTarget,
    leases: &mut Leases,
    serving: impl Iterator<Item = &'a str>,
    settings: &Settings,
) -> Result<(), String> {
    let (owner, ttl) = (&*settings.owner, settings.ttl);
    let (route, name) = (&*target.route, &*target.target);
    let shards = match leases.shards {
        Some(shards) => shards,
        None => {
            let stored = ensure_shards(client, route, name, target.configured, owner)
                .await
                .map_err(|e| e.to_string())?;
            let shards = stored.unwrap_or_else(|stored| {
                tracing::warn!(route, target_name = name, configured = target.configured, stored,
                    "dispatch.shards differs from the count other running spools use; following theirs until none of them holds a lease");
                stored
            });
            *leases.shards.insert(shards)
        }
    };
    let mut serving: Vec<&str> = serving.collect();
    serving.sort_unstable();
    serving.dedup();
    let share = fair_share(shards, &serving, owner);

    // Held and draining alike, renewed in one statement.
    let sent_at = Instant::now();
    let mine: Vec<ShardLease> = leases
        .held
        .iter()
        .chain(&leases.draining)
        .map(|(l, _)| *l)
        .collect();
    let renewed = if mine.is_empty() {
        Vec::new()
    } else {
        renew_shards(&*client, route, name, &mine, owner, ttl)
            .await
            .map_err(|e| e.to_string())?
    };
    let lost: Vec<i32> = mine
        .iter()
        .filter(|l| !renewed.contains(l))
        .map(|l| l.shard)
        .collect();
    if !lost.is_empty() {
        tracing::warn!(route, target_name = name, shards = ?lost,
            "shard leases were taken over by another spool; dropping what this one held of them");
    }
    leases.held.retain(|(l, _)| renewed.contains(l));
    leases.draining.retain(|(l, _)| renewed.contains(l));
    for (_, until) in &mut leases.held {
        *until = sent_at + ttl;
    }

    let now = Instant::now();
    let (due, draining): (Vec<_>, Vec<_>) =
        leases.draining.drain(..).partition(|(_, at)| *at <= now);
    leases.draining = draining;
    if !due.is_empty() {
        let released: Vec<ShardLease> = due.iter().map(|(l, _)| *l).collect();
        release_shards(&*client, route, name, &released, owner)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(route, target_name = name, shards = ?released.iter().map(|l| l.shard).collect::<Vec<_>>(),
            "shards handed back to share them with other spools");
    }

    let holding = leases.held.len();
    if holding > share {
        // Stop sending there now; hand them back once what is in flight
        // had time to finish.
        leases.held.sort_by_key(|(l, _)| l.shard);
        let extra = leases.held.split_off(share);
        let release_at = now + target.drain + Duration::from_secs(1);
        leases
            .draining
            .extend(extra.into_iter().map(|(l, _)| (l, release_at)));
    } else if holding < share {
        let taken_at = Instant::now();
        let want = (share - holding) as i64;
        let taken = take_shards(&*client, route, name, want, &renewed, owner, ttl)
            .await
            .map_err(|e| e.to_string())?;
        if !taken.is_empty() {
            tracing::info!(route, target_name = name, shards = ?taken.iter().map(|l| l.shard).collect::<Vec<_>>(),
                "shards taken");
        }
        leases
            .held
            .extend(taken.into_iter().map(|l| (l, taken_at + ttl)));
    }
    publish(target, shards, &leases.held);
    Ok(())
}

/// This spool's part of `shards` among the live spools `serving` (sorted):
/// an even split, the first ones taking one more of what is left over.
fn fair_share(shards: i32, serving: &[&str], owner: &str) -> usize {
    let shards = shards.max(0) as usize;
    let count = serving.len().max(1);
    let index = serving.iter().position(|o| *o == owner).unwrap_or(0);
    shards / count + usize::from(index < shards % count)
}

fn publish(target: &OwnedTarget, shards: i32, held: &[(ShardLease, Instant)]) {
    let view = ShardView {
        shards,
        held: held
            .iter()
            .map(|(l, until)| {
                (
                    l.shard,
                    HeldShard {
                        epoch: l.epoch,
                        valid_until: *until,
                    },
                )
            })
            .collect(),
    };
    target.view.send_if_modified(|current| {
        let changed = !current.same_shards(&view);
        *current = view;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        let serving = ["a", "b", "c"];
        let shares: Vec<_> = serving
            .iter()
            .map(|o| fair_share(16, &serving, o))
            .collect();
        assert_eq!(shares, vec![6, 5, 5]);
        assert_eq!(fair_share(16, &["a"], "a"), 16);
        assert_eq!(fair_share(2, &serving, "c"), 0);
    }
}
