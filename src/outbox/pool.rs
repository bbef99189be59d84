//! The connection pool, with every wait bounded: a Postgres that is down,
//! refusing or frozen must turn into a prompt error, never a hung request.

use std::time::Duration;

use deadpool_postgres::{
    Client, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;

use super::sql;
use super::tls::DbAddress;
use crate::config::DatabaseConfig;
use crate::upstream::error_chain;

/// Why the outbox could not be used. `Timeout` covers a database that
/// accepted the connection but stopped answering.
/// Shown with every cause (tokio-postgres keeps them out of its message),
/// so that an operator reads "invalid peer certificate: UnknownIssuer", not
/// just "error performing TLS handshake".
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection: {}", error_chain(.0))]
    Pool(#[from] PoolError),
    #[error("database error: {}", error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// A configuration error, naming its key.
    #[error("{0}")]
    Config(String),
}

/// Builds the pool for `address`. Connections are opened lazily, so this
/// does not fail when Postgres is down; the first use does.
pub fn connect_pool(address: &DbAddress, config: &DatabaseConfig) -> Result<Pool, DbError> {
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    // A dead connection shows as closed; a frozen one is caught by the
    // callers' timeouts and discarded, so no test query per checkout.
    let recycling = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let pg = address.config.clone();
    let manager = match &address.tls {
        None => Manager::from_config(pg, NoTls, recycling()),
        Some(tls) => Manager::from_config(pg, tls.clone(), recycling()),
    };
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| DbError::Config(format!("database pool: {e}")))
}

/// Runs `work` on a pooled connection within `limit`, the wait for the
/// connection included. A connection whose work timed out is dropped rather
/// than returned to the pool: the database behind it may be frozen.
pub async fn with_connection<T>(
    pool: &Pool,
    limit: Duration,
    work: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, DbError> {
    with_connection_sized(pool, limit, work, |_| 0).await
}

/// Past this many bytes through one connection at once, it is closed after
/// use rather than pooled: tokio-postgres keeps its buffers at the largest
/// size they reached, so a connection that carried a batch of 1 MiB bodies
/// would hold hundreds of MiB for as long as it lives.
pub const LARGE_TRANSFER: usize = 8 * 1024 * 1024;

/// As `with_connection`; `bytes` says how much the work's result moved, and
/// a connection past `LARGE_TRANSFER` is closed afterwards.
pub async fn with_connection_sized<T>(
    pool: &Pool,
    limit: Duration,
    work: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    bytes: impl Fn(&T) -> usize,
) -> Result<T, DbError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut client = tokio::time::timeout_at(deadline, pool.get())
        .await
        .map_err(|_| DbError::Timeout(limit))??;
    match tokio::time::timeout_at(deadline, work(&mut client)).await {
        Ok(done) => {
            if done
                .as_ref()
                .is_ok_and(|result| bytes(result) > LARGE_TRANSFER)
            {
                drop(deadpool_postgres::Object::take(client));
            }
            done.map_err(DbError::from)
        }
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(DbError::Timeout(limit))
        }
    }
}

/// A committed write of the heartbeat row, in a transaction that first
/// takes, without waiting, the lock every write takes on the outbox's
/// tables: a session holding them locked (a migration, a stray `LOCK
/// TABLE`) fails it at once rather than after the timeout.
pub async fn heartbeat(pool: &Pool, owner: &str, timeout: Duration) -> Result<(), DbError> {
    with_connection(pool, timeout, async |client| {
        let transaction = client.transaction().await?;
        transaction.batch_execute(sql::LOCK_FOR_WRITES).await?;
        let statement = transaction.prepare_cached(sql::HEARTBEAT).await?;
        transaction.execute(&statement, &[&owner]).await?;
        transaction.commit().await
    })
    .await
}
