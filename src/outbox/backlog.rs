//! How much each target has waiting, read from the outbox for the metrics.

use std::time::Duration;

use deadpool_postgres::ClientWrapper;

use super::sql;

/// One (route, target)'s backlog.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetBacklog {
    pub route: String,
    pub target: String,
    /// Deliveries not yet delivered nor dead (pending or in flight).
    pub waiting: i64,
    /// Since the oldest of those was accepted; zero when there is none.
    pub oldest: Duration,
    pub dead: i64,
}

impl TargetBacklog {
    /// The backlog of (`route`, `target`) among `rows`: an empty one when
    /// it has no row (nothing waiting, nothing dead).
    pub fn of(rows: &[TargetBacklog], route: &str, target: &str) -> TargetBacklog {
        rows.iter()
            .find(|row| row.route == route && row.target == target)
            .cloned()
            .unwrap_or_else(|| TargetBacklog {
                route: route.to_owned(),
                target: target.to_owned(),
                waiting: 0,
                oldest: Duration::ZERO,
                dead: 0,
            })
    }
}

/// Every (route, target) with rows in the outbox; the others have none.
pub async fn backlog_by_target(
    client: &ClientWrapper,
) -> Result<Vec<TargetBacklog>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql::BACKLOG_BY_TARGET).await?;
    let rows = client.query(&statement, &[]).await?;
    Ok(rows
        .into_iter()
        .map(|row| TargetBacklog {
            route: row.get(0),
            target: row.get(1),
            waiting: row.get(2),
            oldest: Duration::from_secs_f64(row.get::<_, f64>(3).max(0.0)),
            dead: row.get(4),
        })
        .collect())
}
