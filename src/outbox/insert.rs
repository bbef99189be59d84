//! One batch of accepted writes becomes rows in one statement.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::sql;

/// The format this spool writes messages in (`spool_message.format_version`).
pub const MESSAGE_FORMAT_VERSION: i16 = 1;

/// A write as it will be stored: everything needed to forward it later.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub route: Arc<str>,
    /// Target names of the route: one delivery row each.
    pub targets: Arc<[String]>,
    pub method: &'static str,
    pub path: String,
    pub query: Option<String>,
    /// Allow-listed headers as a JSON array of [name, value] pairs.
    pub headers_json: String,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    /// SHA-256 of method, path, query and body.
    pub request_hash: [u8; 32],
    pub ordering_key: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// What became of one write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed as a new message.
    Accepted,
    /// Its Idempotency-Key holds this earlier message for the same request.
    Replayed(Uuid),
    /// Its Idempotency-Key holds this earlier message for another request.
    Conflict(Uuid),
    /// Its key was claimed by a transaction this one could not see: try again.
    Retry,
}

/// A batch inserted in a transaction that is still open.
#[derive(Debug)]
pub struct Inserted {
    /// What became of each write, in the batch's order, once committed.
    pub stored: Vec<Stored>,
    /// The open transaction's id, to ask Postgres about it should the
    /// answer to its COMMIT be lost.
    pub xact: Option<String>,
    /// The ids of the messages stored (`Stored::Accepted`).
    pub accepted: Vec<Uuid>,
}

/// Opens a transaction on `client` and stores `batch` in it with one
/// statement (the BEGIN goes in the same round trip). The caller commits,
/// or drops the connection, which aborts it.
///
/// Idempotency keys must be unique within `batch`: the caller folds
/// duplicates, since one statement cannot both insert and look up a key.
pub async fn insert_batch(
    client: &ClientWrapper,
    batch: &[&NewMessage],
    idempotency_retention_s: f64,
) -> Result<Inserted, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql::INSERT_BATCH).await?;
    let ids: Vec<Uuid> = batch.iter().map(|m| m.id).collect();
    let routes: Vec<&str> = batch.iter().map(|m| &*m.route).collect();
    let methods: Vec<&str> = batch.iter().map(|m| m.method).collect();
    let paths: Vec<&str> = batch.iter().map(|m| m.path.as_str()).collect();
    let queries: Vec<Option<&str>> = batch.iter().map(|m| m.query.as_deref()).collect();
    let headers: Vec<&str> = batch.iter().map(|m| m.headers_json.as_str()).collect();
    let bodies: Vec<&[u8]> = batch.iter().map(|m| &m.body[..]).collect();
    let keys: Vec<Option<&str>> = batch.iter().map(|m| m.idempotency_key.as_deref()).collect();
    let hashes: Vec<&[u8]> = batch.iter().map(|m| &m.request_hash[..]).collect();
    let ordering: Vec<Option<&str>> = batch.iter().map(|m| m.ordering_key.as_deref()).collect();
    let parents: Vec<Option<&str>> = batch.iter().map(|m| m.traceparent.as_deref()).collect();
    let states: Vec<Option<&str>> = batch.iter().map(|m| m.tracestate.as_deref()).collect();
    let deliveries = batch.iter().map(|m| m.targets.len()).sum();
    let mut delivery_ids = Vec::with_capacity(deliveries);
    let mut delivery_targets: Vec<&str> = Vec::with_capacity(deliveries);
    for message in batch {
        for target in message.targets.iter() {
            delivery_ids.push(message.id);
            delivery_targets.push(target);
        }
    }
    let params: [&(dyn ToSql + Sync); 16] = [
        &ids,
        &routes,
        &methods,
        &paths,
        &queries,
        &headers,
        &bodies,
        &keys,
        &hashes,
        &ordering,
        &parents,
        &states,
        &delivery_ids,
        &delivery_targets,
        &idempotency_retention_s,
        &MESSAGE_FORMAT_VERSION,
    ];
    // Both requests are written before either answer is read (tokio-postgres
    // pipelines what is polled together, in the order polled).
    let (begun, rows) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query(&statement, &params)
    );
    let rows = rows?;
    // Had BEGIN failed while the insert ran, the insert committed on its
    // own and the caller's COMMIT is a no-op: right either way, so only the
    // insert's error counts.
    if let Err(e) = begun {
        tracing::warn!(error = %e, "BEGIN failed before a batch insert that succeeded");
    }
    let xact = rows.first().map(|row| row.get::<_, String>(4));
    let mut outcomes: HashMap<Uuid, Stored> = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.get(0);
        let accepted: bool = row.get(1);
        let holder: Option<Uuid> = row.get(2);
        let same: Option<bool> = row.get(3);
        let stored = match (accepted, holder, same) {
            (true, _, _) => Stored::Accepted,
            (false, Some(holder), Some(true)) => Stored::Replayed(holder),
            (false, Some(holder), _) => Stored::Conflict(holder),
            (false, None, _) => Stored::Retry,
        };
        outcomes.insert(id, stored);
    }
    let stored: Vec<Stored> = ids
        .iter()
        .map(|id| outcomes.get(id).copied().unwrap_or(Stored::Retry))
        .collect();
    let accepted = ids
        .iter()
        .zip(&stored)
        .filter(|(_, stored)| **stored == Stored::Accepted)
        .map(|(id, _)| *id)
        .collect();
    Ok(Inserted {
        stored,
        xact,
        accepted,
    })
}
