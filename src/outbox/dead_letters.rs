//! The dead-letter store: list (filtered, paged), replay, delete.

use deadpool_postgres::ClientWrapper;
use serde::Serialize;
use uuid::Uuid;

use super::sql;

/// A delivery that spool gave up on, kept for an operator.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub message_id: Uuid,
    pub route: String,
    pub target: String,
    pub attempts: i32,
    pub last_status: Option<i16>,
    pub last_error: Option<String>,
    pub dead_at: std::time::SystemTime,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub accepted_at: std::time::SystemTime,
}

/// Which dead letters to list; `after` is the last one of the previous page.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    pub route: Option<String>,
    pub target: Option<String>,
    pub after: Option<(std::time::SystemTime, Uuid, String)>,
    pub limit: i64,
}

pub async fn list_dead(
    client: &ClientWrapper,
    query: &DeadLetterQuery,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let (after_at, after_id, after_target) = match &query.after {
        Some((at, id, target)) => (Some(*at), Some(*id), Some(target.as_str())),
        None => (None, None, None),
    };
    let rows = client
        .query(
            sql::LIST_DEAD,
            &[
                &query.route,
                &query.target,
                &after_at,
                &after_id,
                &after_target,
                &query.limit,
            ],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| DeadLetter {
            message_id: row.get(0),
            route: row.get(1),
            target: row.get(2),
            attempts: row.get(3),
            last_status: row.get(4),
            last_error: row.get(5),
            dead_at: row.get(6),
            method: row.get(7),
            path: row.get(8),
            query: row.get(9),
            accepted_at: row.get(10),
        })
        .collect())
}

/// Which dead letters to replay or delete: any filter left `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSelection {
    pub message_id: Option<Uuid>,
    pub route: Option<String>,
    pub target: Option<String>,
}

/// Back to pending with attempts reset; returns the routes touched (one
/// entry per delivery), so their dispatchers can be woken.
pub async fn replay_dead(
    client: &ClientWrapper,
    selection: &DeadLetterSelection,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            sql::REPLAY_DEAD,
            &[&selection.message_id, &selection.route, &selection.target],
        )
        .await?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}

/// Deletes the dead letters of one message (of one target if given), and
/// the message itself once no delivery of it is left. Returns how many.
pub async fn delete_dead(
    client: &mut ClientWrapper,
    message_id: Uuid,
    target: Option<&str>,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let ids = vec![message_id];
    tx.execute(sql::LOCK_MESSAGES, &[&ids]).await?;
    let deleted = tx
        .execute(sql::DELETE_DEAD, &[&message_id, &target])
        .await?;
    tx.execute(sql::DELETE_FINISHED_MESSAGES, &[&ids]).await?;
    tx.commit().await?;
    Ok(deleted)
}
