//! Versioned migrations from sql/, applied at start under an advisory lock so
//! that spools starting together on an empty database take turns.

use tokio_postgres::Client;

use super::sql;

/// (version, name, SQL). Append only: a deployed migration never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "outbox", include_str!("../../sql/0001_outbox.sql")),
    (2, "dispatch", include_str!("../../sql/0002_dispatch.sql")),
    (
        3,
        "read_cache",
        include_str!("../../sql/0003_read_cache.sql"),
    ),
    (
        4,
        "leased_state",
        include_str!("../../sql/0004_leased_state.sql"),
    ),
    (
        5,
        "shard_owners",
        include_str!("../../sql/0005_shard_owners.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) failed: {source}")]
    Apply {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("could not read or lock the schema: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Brings the schema up to date. A database migrated by a newer spool is
/// fine: migrations only add, so this spool's statements still work.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&sql::MIGRATION_LOCK_KEY])
        .await?;
    let result = apply_missing(client).await;
    // Released with the session anyway; unlocking keeps a pooled session clean.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&sql::MIGRATION_LOCK_KEY])
        .await;
    result
}

async fn apply_missing(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client.batch_execute(sql::CREATE_MIGRATIONS_TABLE).await?;
    let applied: Vec<i32> = client
        .query(sql::APPLIED_MIGRATIONS, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly = Vec::new();
    for &(version, name, text) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let fail = |source| MigrateError::Apply {
            version,
            name,
            source,
        };
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(text).await.map_err(fail)?;
        tx.execute(sql::RECORD_MIGRATION, &[&version, &name])
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        newly.push(version);
    }
    Ok(newly)
}
