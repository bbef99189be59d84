//! Whether a commit that Postgres acknowledges survives a crash. spool
//! acknowledges a write only after its commit, which is worth nothing if
//! the database may lose the commit: `fsync = off` (an OS crash or power
//! loss loses recent commits, or corrupts the cluster), `full_page_writes =
//! off` (torn pages after an OS crash), `synchronous_commit = off` as
//! spool's own sessions see it (a Postgres crash loses the last commits).

use std::sync::RwLock;
use std::time::Duration;

use deadpool_postgres::{Client, Pool};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use super::pool::with_connection;

/// The settings, as one of spool's sessions sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilitySettings {
    pub fsync: String,
    pub synchronous_commit: String,
    pub full_page_writes: String,
}

impl DurabilitySettings {
    pub async fn read(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit'), \
                 current_setting('full_page_writes')",
                &[],
            )
            .await?;
        Ok(DurabilitySettings {
            fsync: row.get(0),
            synchronous_commit: row.get(1),
            full_page_writes: row.get(2),
        })
    }

    /// Each setting that would lose an acknowledged commit, with why.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.fsync != "on" {
            problems.push(format!(
                "fsync = {}: an OS crash or power loss can lose committed writes",
                self.fsync
            ));
        }
        if self.full_page_writes != "on" {
            problems.push(format!(
                "full_page_writes = {}: an OS crash can leave torn pages",
                self.full_page_writes
            ));
        }
        if self.synchronous_commit == "off" {
            problems.push(
                "synchronous_commit = off (for spool's sessions): a Postgres crash can lose \
                 the last commits; set it for spool's role, e.g. ALTER ROLE ... SET \
                 synchronous_commit = on"
                    .to_owned(),
            );
        }
        problems
    }

    pub fn summary(&self) -> String {
        format!(
            "fsync = {}, synchronous_commit = {}, full_page_writes = {}",
            self.fsync, self.synchronous_commit, self.full_page_writes
        )
    }
}

/// The last reading of the settings, shared by the write path, `/readyz`
/// and the task that reads them again every minute. What is wrong is
/// worked out once per reading, so that a write only takes a read lock.
#[derive(Debug, Default)]
pub struct Durability {
    last: RwLock<Option<Reading>>,
}

#[derive(Debug, Clone)]
struct Reading {
    settings: DurabilitySettings,
    problems: Vec<String>,
}

impl Durability {
    /// Stores a reading; says whether what it means changed, so that the
    /// caller logs transitions, not every minute.
    pub fn update(&self, settings: DurabilitySettings) -> bool {
        let problems = settings.problems();
        let mut last = self.last.write().unwrap_or_else(|e| e.into_inner());
        let changed = last.as_ref().map(|r| &r.problems) != Some(&problems);
        *last = Some(Reading { settings, problems });
        changed
    }

    /// The last reading; `None` until one succeeded.
    pub fn last(&self) -> Option<DurabilitySettings> {
        let last = self.last.read().unwrap_or_else(|e| e.into_inner());
        last.as_ref().map(|r| r.settings.clone())
    }

    /// What is wrong with the last reading, joined; `None` when nothing is
    /// (or before the first reading).
    pub fn problems(&self) -> Option<String> {
        let last = self.last.read().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|r| !r.problems.is_empty())
            .map(|r| r.problems.join("; "))
    }
}

/// Reads the settings once and says what changed: ERROR when they would
/// lose commits (WARN when `allowed`), INFO when that is fixed. The gauge
/// is 1 while durable, 0 while not, and keeps its value when the database
/// cannot be read.
pub async fn check_durability(
    pool: &Pool,
    durability: &Durability,
    allowed: bool,
    durable: &IntGauge,
    timeout: Duration,
) {
    let read = with_connection(pool, timeout, async |client| {
        DurabilitySettings::read(client).await
    })
    .await;
    let settings = match read {
        Ok(settings) => settings,
        Err(e) => {
            tracing::debug!(error = %e, "could not read the database's durability settings");
            return;
        }
    };
    let problems = settings.problems();
    let summary = settings.summary();
    durable.set(i64::from(problems.is_empty()));
    if !durability.update(settings) {
        return;
    }
    match (problems.is_empty(), allowed) {
        (true, _) => {
            tracing::info!(settings = %summary, "the database keeps commits through a crash")
        }
        (false, true) => tracing::warn!(
            problems = %problems.join("; "),
            "the database may lose acknowledged writes in a crash; writes are accepted because database.allow_non_durable = true"
        ),
        (false, false) => tracing::error!(
            problems = %problems.join("; "),
            "the database may lose acknowledged writes in a crash; writes are refused with 503 until it is fixed (or database.allow_non_durable = true, for throwaway databases)"
        ),
    }
}

/// Checks again every `every` until `cancel`: settings change at run time
/// (`ALTER SYSTEM` and a reload, a failover to a differently set server).
pub async fn watch_durability(
    pool: Pool,
    durability: std::sync::Arc<Durability>,
    allowed: bool,
    durable: IntGauge,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        check_durability(
            &pool,
            &durability,
            allowed,
            &durable,
            every.min(Duration::from_secs(10)),
        )
        .await;
    }
}
