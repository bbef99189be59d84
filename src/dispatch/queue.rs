//! Deliveries claimed ahead of sending. A dispatcher claims in batches and
//! feeds its free concurrency slots from here, so that a claim is one
//! statement for many deliveries rather than one for each slot freed; the
//! cost of a claim is mostly per statement (an index descent past the rows
//! still in flight, a commit), not per row.

use std::collections::VecDeque;

use tokio::time::Instant;
use uuid::Uuid;

use crate::outbox::ClaimedDelivery;

struct Queued {
    delivery: ClaimedDelivery,
    /// Past this instant the lease may run out before the attempt and its
    /// recording are done: the delivery is given back unsent instead.
    send_by: Instant,
}

/// Claimed, not yet sent, in claim order (due time, then acceptance).
#[derive(Default)]
pub struct ClaimQueue {
    items: VecDeque<Queued>,
    /// Body bytes held.
    bytes: usize,
    /// Mean body size of the last claim, to size the next one.
    mean_body: Option<usize>,
}

impl ClaimQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// How many deliveries to claim next, at most `batch`: as many as fit
    /// in what is left of `bytes_max` at the last claim's mean body size
    /// (an assumed 64 KiB before any), and at least one while it is empty.
    pub fn room(&self, batch: usize, bytes_max: usize) -> usize {
        let mean = self.mean_body.unwrap_or(64 * 1024).max(1);
        let fit = bytes_max.saturating_sub(self.bytes) / mean;
        let floor = usize::from(self.items.is_empty());
        batch.min(fit).max(floor)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn extend(&mut self, claimed: Vec<ClaimedDelivery>, send_by: Instant) {
        if !claimed.is_empty() {
            let bytes: usize = claimed.iter().map(|d| d.body.len()).sum();
            self.mean_body = Some(bytes / claimed.len());
            self.bytes += bytes;
        }
        self.items.extend(
            claimed
                .into_iter()
                .map(|delivery| Queued { delivery, send_by }),
        );
    }

    pub fn pop(&mut self) -> Option<ClaimedDelivery> {
        let delivery = self.items.pop_front()?.delivery;
        self.bytes -= delivery.body.len();
        Some(delivery)
    }

    /// Takes out the deliveries too close to their lease's end to send.
    /// Claims are queued oldest first, so they are at the front.
    pub fn take_stale(&mut self, now: Instant) -> Vec<Uuid> {
        let stale = self
            .items
            .iter()
            .take_while(|queued| queued.send_by <= now)
            .count();
        self.take(stale)
    }

    /// Empties the queue, for deliveries that will not be sent by this
    /// dispatcher soon.
    pub fn take_all(&mut self) -> Vec<Uuid> {
        self.take(self.items.len())
    }

    fn take(&mut self, count: usize) -> Vec<Uuid> {
        let taken: Vec<_> = self.items.drain(..count).map(|q| q.delivery).collect();
        self.bytes -= taken.iter().map(|d| d.body.len()).sum::<usize>();
        taken.into_iter().map(|d| d.message_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::outbox::ClaimPosition;

    fn delivery(n: u128) -> ClaimedDelivery {
        sized(n, 0)
    }

    fn sized(n: u128, body: usize) -> ClaimedDelivery {
        ClaimedDelivery {
            message_id: Uuid::from_u128(n),
            attempt: 1,
            method: "POST".into(),
            path: "/".into(),
            query: None,
            headers_json: "[]".into(),
            body: Bytes::from(vec![0; body]),
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
            age: Duration::ZERO,
            position: ClaimPosition {
                due_at: std::time::SystemTime::UNIX_EPOCH,
                seq: n as i64,
            },
            keyed: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stale_claims_are_taken_out_oldest_first() {
        let mut queue = ClaimQueue::default();
        let start = Instant::now();
        queue.extend(
            vec![delivery(1), delivery(2)],
            start + Duration::from_secs(1),
        );
        queue.extend(vec![delivery(3)], start + Duration::from_secs(2));
        assert!(queue.take_stale(start).is_empty());
        let stale = queue.take_stale(start + Duration::from_secs(1));
        assert_eq!(stale, vec![Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert_eq!(queue.pop().map(|d| d.message_id), Some(Uuid::from_u128(3)));
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn claims_are_sized_to_the_byte_budget() {
        let mut queue = ClaimQueue::default();
        // Before any claim, bodies are assumed to be 64 KiB.
        assert_eq!(queue.room(256, 1024 * 1024), 16);
        queue.extend(vec![sized(1, 1000), sized(2, 3000)], Instant::now());
        // 2,000 bytes on average; 4,000 held of 10,000.
        assert_eq!(queue.room(256, 10_000), 3);
        assert_eq!(queue.room(2, 10_000), 2);
        queue.extend(vec![sized(3, 100_000)], Instant::now());
        assert_eq!(queue.room(256, 10_000), 0, "over budget: nothing more");
        queue.take_all();
        assert_eq!(
            queue.room(256, 10_000),
            1,
            "an empty queue claims one at least"
        );
    }
}
