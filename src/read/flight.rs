//! Single flight: concurrent reads of one URL (and variant) while the
//! upstream is slow or failing go out as one upstream request; the others
//! wait for its outcome, so a recovering upstream is not stampeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// What the leader's request came to, as the followers need it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A good answer, now in the store: serve it from there.
    Kept,
    /// An answer that was not kept (too big, no-store...): ask yourself.
    NotKept,
    /// The upstream failed: fall back without asking again.
    Failed(Failure),
}

/// Why the upstream gave no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Unreachable,
    Status(u16),
    BreakerOpen,
}

type Key = (Arc<str>, String);
type Slot = watch::Receiver<Option<Outcome>>;

#[derive(Default)]
pub struct Flights {
    in_flight: Mutex<HashMap<Key, Slot>>,
}

/// The first request for a key leads; the others follow.
pub enum Role {
    Leader(Leader),
    Follower(Slot),
}

impl Flights {
    pub fn join(self: &Arc<Self>, key: Key) -> Role {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = in_flight.get(&key) {
            return Role::Follower(slot.clone());
        }
        let (sender, receiver) = watch::channel(None);
        in_flight.insert(key.clone(), receiver);
        Role::Leader(Leader {
            flights: Arc::clone(self),
            key,
            sender: Some(sender),
        })
    }
}

/// Waits for the leader's outcome, at most `wait`; a leader that vanished
/// or took too long counts as NotKept (the follower asks itself).
pub async fn follow(mut slot: Slot, wait: Duration) -> Outcome {
    match tokio::time::timeout(wait, slot.wait_for(Option::is_some)).await {
        Ok(Ok(outcome)) => outcome.clone().unwrap_or(Outcome::NotKept),
        _ => Outcome::NotKept,
    }
}

/// Held by the leading request; the followers are told when it finishes
/// (or, if it is dropped first, that nothing was kept).
pub struct Leader {
    flights: Arc<Flights>,
    key: Key,
    sender: Option<watch::Sender<Option<Outcome>>>,
}

impl Leader {
    pub fn finish(mut self, outcome: Outcome) {
        self.release(outcome);
    }

    fn release(&mut self, outcome: Outcome) {
        if let Some(sender) = self.sender.take() {
            self.flights
                .in_flight
                .lock()
                .expect("flights lock")
                .remove(&self.key);
            let _ = sender.send(Some(outcome));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.release(Outcome::NotKept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        ("r".into(), "/x".into())
    }

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join(key()) else {
            panic!("first leads")
        };
        let Role::Follower(slot) = flights.join(key()) else {
            panic!("second follows")
        };
        let waiting = tokio::spawn(follow(slot, Duration::from_secs(5)));
        leader.finish(Outcome::Failed(Failure::Timeout));
        assert!(matches!(
            waiting.await.unwrap(),
            Outcome::Failed(Failure::Timeout)
        ));
        assert!(
            matches!(flights.join(key()), Role::Leader(_)),
            "a new flight after the end"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let flights = Arc::new(Flights::default());
        let leader = flights.join(key());
        let Role::Follower(slot) = flights.join(key()) else {
            panic!("second follows")
        };
        drop(leader);
        assert!(matches!(
            follow(slot, Duration::from_secs(5)).await,
            Outcome::NotKept
        ));
    }
}
