//! Reading a write's body: within its size limit, within its time limit,
//! into one buffer, and within the bytes that all writes together may hold
//! in memory at once, so that many large bodies in flight meet a clear 503
//! instead of growing spool without bound.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::ApiError;

/// The body bytes that writes in flight may hold, shared by all of them.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: u64,
    retry_after_s: u64,
}

/// Bytes of the budget held by one write until it is answered.
pub struct BodyPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl BodyBudget {
    pub fn new(total: u64, retry_after_s: u64) -> Self {
        let permits = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(permits)),
            total,
            retry_after_s,
        }
    }

    fn take(&self, held: &mut OwnedSemaphorePermit, bytes: usize) -> Result<(), ApiError> {
        let more = u32::try_from(bytes)
            .ok()
            .and_then(|n| Arc::clone(&self.bytes).try_acquire_many_owned(n).ok())
            .ok_or_else(|| ApiError::Overloaded {
                detail: format!(
                    "writes in flight already hold {} bytes of request bodies (server.max_body_bytes_in_flight); retry shortly",
                    self.total
                ),
                retry_after_s: self.retry_after_s,
            })?;
        held.merge(more);
        Ok(())
    }
}

/// Reads the body: refused from Content-Length before reading, or as soon
/// as a chunked body passes `limit`; 408 if it takes longer than `timeout`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: Duration,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyPermit), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut held = Arc::clone(&budget.bytes)
        .try_acquire_many_owned(0)
        .expect("the budget's semaphore is never closed");
    // A declared length is reserved whole before a byte is read, and
    // sized once: the body is never copied from one buffer to another.
    let declared = declared.map_or(0, |len| len as usize);
    budget.take(&mut held, declared)?;
    let mut buffer = BytesMut::with_capacity(declared);
    let read = tokio::time::timeout(timeout, async {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if (buffer.len() + data.len()) as u64 > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            let beyond_reserved =
                (buffer.len() + data.len()).saturating_sub(declared.max(buffer.len()));
            budget.take(&mut held, beyond_reserved)?;
            buffer.extend_from_slice(&data);
        }
        Ok(())
    });
    match read.await {
        Ok(Ok(())) => Ok((buffer.freeze(), BodyPermit(held))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} ms (server.body_read_timeout_ms)",
            timeout.as_millis()
        ))),
    }
}
