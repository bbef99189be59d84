//! The deliveries a shard owner holds in memory between reading and
//! recording: unkeyed ones in read order, keyed ones in one lane per
//! ordering key. A lane sends one delivery at a time, in acceptance order,
//! and its next one as soon as the previous is answered; a failing head
//! holds back its own lane only.
//!
//! A read sees the outbox as of its start, so it may return rows this
//! owner holds or has already finished: everything known here is filtered
//! out, and so are the rows whose outcome was recorded while a read was
//! under way (the tombstones). A keyed delivery is taken in only when its
//! key's previous queued delivery is known here (or there is none): else
//! sending it could overtake a delivery that is not due yet, a retry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::SystemTime;

use tokio::time::Instant;
use uuid::Uuid;

use crate::outbox::DueDelivery;

/// Most deliveries a lane holds unsent; the rest of the key is read when
/// the lane runs dry.
pub const LANE_DEPTH: usize = 64;

/// One held delivery.
#[derive(Debug)]
pub struct Item {
    pub delivery: DueDelivery,
    /// The epoch of its shard's lease when it was read.
    pub epoch: i64,
    /// When `delivery.age` was last brought up to date.
    pub read_at: Instant,
    /// A retry of a lane's head waits in its lane until then.
    pub not_before: Option<Instant>,
}

/// What became of an attempt, as far as the lanes care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Delivered or dead-lettered: the lane moves on.
    Done,
    /// Tried again at this instant.
    RetryAt(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    InFlight,
    /// Answered, its outcome on its way to the outbox.
    Recording,
}

#[derive(Debug)]
struct Lane {
    shard: i32,
    unsent: BTreeMap<i64, Item>,
    in_flight: Option<Uuid>,
    /// The highest seq sent, for reading the lane's next ones.
    last_seq: i64,
    /// Some of the key's deliveries were left in the outbox.
    truncated: bool,
    /// Listed in `ready`.
    listed: bool,
}

/// A lane to read more of from the outbox: its key's deliveries after seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneRead {
    pub key: String,
    pub shard: i32,
    pub after_seq: i64,
}

#[derive(Debug, Default)]
pub struct Held {
    unkeyed: VecDeque<Item>,
    lanes: HashMap<String, Lane>,
    /// Lanes whose head may go now.
    ready: VecDeque<String>,
    /// Lanes whose head waits for a retry's time.
    timers: BTreeSet<(Instant, String)>,
    known: HashMap<Uuid, State>,
    tombstones: HashSet<Uuid>,
    /// Keys with a delivery left in the outbox and no lane to read it
    /// when it runs dry: the lane made for them next reads more.
    starved: HashSet<String>,
    reads: usize,
    unsent: usize,
    in_flight: usize,
    bytes: usize,
    /// Alternates between unkeyed deliveries and lanes.
    lanes_turn: bool,
}

impl Held {
    /// Deliveries held unsent or in flight.
    pub fn len(&self) -> usize {
        self.unsent + self.in_flight
    }

    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// Body bytes held unsent.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Roughly how many deliveries could go now.
    pub fn ready_len(&self) -> usize {
        self.unkeyed.len() + self.ready.len()
    }

    /// A read of the outbox is starting.
    pub fn begin_read(&mut self) {
        self.reads += 1;
    }

    /// A read came back (or failed): once none is under way, what was
    /// recorded meanwhile can no longer show up in one.
    pub fn end_read(&mut self) {
        self.reads = self.reads.saturating_sub(1);
        if self.reads == 0 {
            self.tombstones.clear();
        }
    }

    /// Takes in what a read returned; `epoch_of` gives the epoch of each
    /// shard still owned. Returns how many were taken in.
    pub fn admit(
        &mut self,
        rows: Vec<DueDelivery>,
        epoch_of: impl Fn(i32) -> Option<i64>,
    ) -> usize {
        let (mut keyed, unkeyed): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|d| d.ordering_key.is_some());
        let mut admitted = 0;
        for delivery in unkeyed {
            if self.is_known(delivery.message_id) {
                continue;
            }
            let Some(epoch) = epoch_of(delivery.shard) else {
                continue;
            };
            self.hold(delivery.message_id, delivery.body.len());
            self.unkeyed.push_back(Item {
                delivery,
                epoch,
                read_at: Instant::now(),
                not_before: None,
            });
            admitted += 1;
        }
        // Within a key, in acceptance order, so that each finds the one
        // before it already taken in.
        keyed.sort_by(|a, b| {
            (&a.ordering_key, a.position.seq).cmp(&(&b.ordering_key, b.position.seq))
        });
        for delivery in keyed {
            if self.is_known(delivery.message_id) {
                continue;
            }
            if delivery.prev_id.is_some_and(|prev| !self.is_known(prev)) {
                let key = delivery.ordering_key.clone().unwrap_or_default();
                self.left_in_outbox(key);
                continue;
            }
            let Some(epoch) = epoch_of(delivery.shard) else {
                continue;
            };
            let key = delivery.ordering_key.clone().unwrap_or_default();
            let starved = &mut self.starved;
            let lane = self.lanes.entry(key.clone()).or_insert_with(|| Lane {
                shard: delivery.shard,
                unsent: BTreeMap::new(),
                in_flight: None,
                last_seq: i64::MIN,
                truncated: starved.remove(&key),
                listed: false,
            });
            let waiting = lane
                .unsent
                .values()
                .next()
                .is_some_and(|head| head.not_before.is_some());
            if lane.unsent.len() >= LANE_DEPTH || waiting {
                // Read again once the lane has room or its head is through.
                lane.truncated = true;
                continue;
            }
            let (id, bytes, seq) = (
                delivery.message_id,
                delivery.body.len(),
                delivery.position.seq,
            );
            // A lane's read returns its key's deliveries due or not: one
            // not due yet (a retry a former owner scheduled) waits its time.
            let not_before = delivery
                .position
                .due_at
                .duration_since(SystemTime::now())
                .ok()
                .map(|wait| Instant::now() + wait);
            if let Some(at) = not_before {
                self.timers.insert((at, key.clone()));
            }
            lane.unsent.insert(
                seq,
                Item {
                    delivery,
                    epoch,
                    read_at: Instant::now(),
                    not_before,
                },
            );
            if lane.in_flight.is_none() && !lane.listed {
                lane.listed = true;
                self.ready.push_back(key);
            }
            self.hold(id, bytes);
            admitted += 1;
        }
        admitted
    }

    /// A delivery of `key` was left in the outbox: the key's lane reads
    /// more of it once it runs dry.
    fn left_in_outbox(&mut self, key: String) {
        match self.lanes.get_mut(&key) {
            Some(lane) => lane.truncated = true,
            None => {
                // Bounded: a forgotten key is found again by the next read
                // from the head.
                if self.starved.len() >= 10_000 {
                    self.starved.clear();
                }
                self.starved.insert(key);
            }
        }
    }

    /// A read of `key`'s lane came back full: there may be more after
    /// `last_seq`. Returns the read to make now if no lane will make it.
    pub fn more_of(&mut self, key: &str, shard: i32, last_seq: i64) -> Option<LaneRead> {
        match self.lanes.get_mut(key) {
            Some(lane) => {
                lane.truncated = true;
                None
            }
            None => Some(LaneRead {
                key: key.to_owned(),
                shard,
                after_seq: last_seq,
            }),
        }
    }

    fn is_known(&self, id: Uuid) -> bool {
        self.known.contains_key(&id) || self.tombstones.contains(&id)
    }

    fn hold(&mut self, id: Uuid, bytes: usize) {
        self.known.insert(id, State::Unsent);
        self.unsent += 1;
        self.bytes += bytes;
    }

    fn unhold(&mut self, item: &Item) {
        self.unsent -= 1;
        self.bytes -= item.delivery.body.len();
    }

    /// Lanes whose retry time has come go back to the ready list; returns
    /// the next such time still ahead.
    pub fn wake_timers(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, key)) = self.timers.first().cloned() {
            if at > now {
                return Some(at);
            }
            self.timers.pop_first();
            if let Some(lane) = self.lanes.get_mut(&key) {
                for item in lane.unsent.values_mut() {
                    if item.not_before.is_some_and(|at| at <= now) {
                        item.not_before = None;
                    }
                }
                if lane.in_flight.is_none() && !lane.listed {
                    lane.listed = true;
                    self.ready.push_back(key);
                }
            }
        }
        None
    }

    /// The next delivery to send, if `may_send` allows it (it refuses when
    /// its shard's lease is too close to its end): unkeyed deliveries and
    /// lanes take turns.
    pub fn next(&mut self, mut may_send: impl FnMut(&Item) -> bool) -> Option<Item> {
        for _ in 0..2 {
            self.lanes_turn = !self.lanes_turn;
            let found = if self.lanes_turn {
                self.next_of_lanes(&mut may_send)
            } else {
                self.next_unkeyed(&mut may_send)
            };
            match found {
                Next::Item(item) => return Some(*item),
                Next::Refused => return None,
                Next::Empty => {}
            }
        }
        None
    }

    fn next_unkeyed(&mut self, may_send: &mut impl FnMut(&Item) -> bool) -> Next {
        let Some(front) = self.unkeyed.front() else {
            return Next::Empty;
        };
        if !may_send(front) {
            return Next::Refused;
        }
        let item = self.unkeyed.pop_front().expect("front exists");
        self.unhold(&item);
        self.known.insert(item.delivery.message_id, State::InFlight);
        self.in_flight += 1;
        Next::Item(Box::new(item))
    }

    fn next_of_lanes(&mut self, may_send: &mut impl FnMut(&Item) -> bool) -> Next {
        while let Some(key) = self.ready.pop_front() {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            lane.listed = false;
            if lane.in_flight.is_some() {
                continue;
            }
            let Some(head) = lane.unsent.values().next() else {
                continue;
            };
            if head.not_before.is_some() {
                continue;
            }
            if !may_send(head) {
                lane.listed = true;
                self.ready.push_front(key);
                return Next::Refused;
            }
            let (_, item) = lane.unsent.pop_first().expect("head exists");
            lane.in_flight = Some(item.delivery.message_id);
            lane.last_seq = lane.last_seq.max(item.delivery.position.seq);
            self.unhold(&item);
            self.known.insert(item.delivery.message_id, State::InFlight);
            self.in_flight += 1;
            return Next::Item(Box::new(item));
        }
        Next::Empty
    }

    /// An attempt was answered. A keyed retry goes back to the head of its
    /// lane (`item` is the delivery, for its next attempt); an unkeyed one
    /// is read again when due. Returns a lane to read more of, when the
    /// lane ran dry with deliveries of its key left in the outbox.
    pub fn answered(&mut self, mut item: Item, answer: Answer) -> Option<LaneRead> {
        let id = item.delivery.message_id;
        if !self.known.contains_key(&id) {
            // Its shard was lost meanwhile.
            return None;
        }
        self.in_flight -= 1;
        let key = item.delivery.ordering_key.clone();
        let Some(key) = key else {
            self.known.insert(id, State::Recording);
            return None;
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            self.known.insert(id, State::Recording);
            return None;
        };
        if lane.in_flight == Some(id) {
            lane.in_flight = None;
        }
        match answer {
            Answer::RetryAt(at) => {
                item.delivery.attempt += 1;
                item.not_before = Some(at);
                let (bytes, seq) = (item.delivery.body.len(), item.delivery.position.seq);
                lane.unsent.insert(seq, item);
                self.timers.insert((at, key));
                self.known.insert(id, State::Unsent);
                self.unsent += 1;
                self.bytes += bytes;
                None
            }
            Answer::Done => {
                self.known.insert(id, State::Recording);
                if !lane.unsent.is_empty() {
                    if !lane.listed {
                        lane.listed = true;
                        self.ready.push_back(key);
                    }
                    return None;
                }
                let lane = self.lanes.remove(&key).expect("lane exists");
                let more = lane.truncated | self.starved.remove(&key);
                more.then_some(LaneRead {
                    key,
                    shard: lane.shard,
                    after_seq: lane.last_seq,
                })
            }
        }
    }

    /// An outcome reached the outbox (or was refused there, its shard
    /// taken over): the delivery is forgotten, unless it waits in a lane.
    pub fn recorded(&mut self, id: Uuid) {
        if self.known.get(&id) == Some(&State::Recording) {
            self.known.remove(&id);
            if self.reads > 0 {
                self.tombstones.insert(id);
            }
        }
    }

    /// Lets go of every unsent delivery: they wait in the outbox.
    pub fn let_go(&mut self) -> usize {
        self.retain_shards(|_, _| false)
    }

    /// Drops every unsent delivery of a shard not owned any more at the
    /// epoch it was read under; `still_owned(shard, epoch)` says.
    pub fn retain_shards(&mut self, still_owned: impl Fn(i32, i64) -> bool) -> usize {
        let mut dropped = Vec::new();
        self.unkeyed.retain(|item| {
            let keep = still_owned(item.delivery.shard, item.epoch);
            if !keep {
                dropped.push((item.delivery.message_id, item.delivery.body.len()));
            }
            keep
        });
        // A lane is one key, so one shard: it goes whole. Its delivery in
        // flight, if any, is answered as one whose lane is gone.
        self.lanes.retain(|_, lane| {
            let keep = lane
                .unsent
                .values()
                .all(|item| still_owned(item.delivery.shard, item.epoch));
            if !keep {
                dropped.extend(
                    lane.unsent
                        .values()
                        .map(|item| (item.delivery.message_id, item.delivery.body.len())),
                );
            }
            keep
        });
        for (id, bytes) in &dropped {
            self.known.remove(id);
            self.unsent -= 1;
            self.bytes -= bytes;
        }
        dropped.len()
    }
}

enum Next {
    Item(Box<Item>),
    /// The next one may not go yet.
    Refused,
    Empty,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::outbox::ReadPosition;

    fn row(n: u128, key: Option<&str>, prev: Option<u128>) -> DueDelivery {
        DueDelivery {
            message_id: Uuid::from_u128(n),
            attempt: 1,
            method: "POST".into(),
            path: "/".into(),
            query: None,
            headers_json: "[]".into(),
            body: Bytes::from_static(b"body"),
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
            age: Duration::ZERO,
            position: ReadPosition {
                due_at: SystemTime::UNIX_EPOCH,
                seq: n as i64,
            },
            ordering_key: key.map(str::to_owned),
            shard: 0,
            prev_id: prev.map(Uuid::from_u128),
        }
    }

    fn owned(_: i32) -> Option<i64> {
        Some(1)
    }

    fn id(item: &Item) -> u128 {
        item.delivery.message_id.as_u128()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_sends_one_at_a_time_in_order() {
        let mut held = Held::default();
        let rows = vec![row(2, Some("k"), Some(1)), row(1, Some("k"), None)];
        assert_eq!(held.admit(rows, owned), 2);
        let first = held.next(|_| true).expect("head");
        assert_eq!(id(&first), 1);
        assert!(held.next(|_| true).is_none(), "one in flight per lane");
        assert_eq!(held.answered(first, Answer::Done), None);
        let second = held.next(|_| true).expect("next");
        assert_eq!(id(&second), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_whose_predecessor_is_unknown_waits_in_the_outbox() {
        let mut held = Held::default();
        assert_eq!(held.admit(vec![row(5, Some("k"), Some(4))], owned), 0);
        // Its predecessor is in flight here: it may follow it.
        held.admit(vec![row(4, Some("k"), None)], owned);
        let head = held.next(|_| true).expect("head");
        assert_eq!(held.admit(vec![row(5, Some("k"), Some(4))], owned), 1);
        held.answered(head, Answer::Done);
        assert_eq!(held.next(|_| true).map(|i| id(&i)), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keyed_retry_holds_its_lane_and_no_other() {
        let mut held = Held::default();
        held.admit(
            vec![
                row(1, Some("a"), None),
                row(2, Some("a"), Some(1)),
                row(3, Some("b"), None),
            ],
            owned,
        );
        let a1 = held.next(|_| true).expect("a1");
        assert_eq!(id(&a1), 1);
        let at = Instant::now() + Duration::from_secs(5);
        held.answered(a1, Answer::RetryAt(at));
        assert_eq!(held.next(|_| true).map(|i| id(&i)), Some(3));
        assert!(held.next(|_| true).is_none(), "a waits for its retry");
        assert_eq!(held.wake_timers(Instant::now()), Some(at));
        tokio::time::advance(Duration::from_secs(5)).await;
        held.wake_timers(Instant::now());
        let again = held.next(|_| true).expect("a1 again");
        assert_eq!((id(&again), again.delivery.attempt), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_recorded_during_a_read_is_not_taken_in_again() {
        let mut held = Held::default();
        held.admit(vec![row(1, None, None)], owned);
        let item = held.next(|_| true).expect("item");
        held.begin_read();
        held.answered(item, Answer::Done);
        held.recorded(Uuid::from_u128(1));
        assert_eq!(held.admit(vec![row(1, None, None)], owned), 0);
        held.end_read();
        assert_eq!(held.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_shard_drops_what_was_held_of_it() {
        let mut held = Held::default();
        let mut other = row(2, None, None);
        other.shard = 1;
        held.admit(
            vec![row(1, None, None), other, row(3, Some("k"), None)],
            owned,
        );
        assert_eq!(held.retain_shards(|shard, _| shard == 1), 2);
        assert_eq!(held.next(|_| true).map(|i| id(&i)), Some(2));
        assert!(held.next(|_| true).is_none());
        assert_eq!((held.unsent(), held.bytes()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lane_is_read_again_when_it_runs_dry() {
        let mut held = Held::default();
        let rows = (1..=LANE_DEPTH as u128 + 1)
            .map(|n| row(n, Some("k"), (n > 1).then(|| n - 1)))
            .collect();
        assert_eq!(held.admit(rows, owned), LANE_DEPTH);
        let mut read = None;
        while let Some(item) = held.next(|_| true) {
            read = held.answered(item, Answer::Done);
        }
        let read = read.expect("a read of the rest");
        assert_eq!(read.after_seq, LANE_DEPTH as i64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_with_a_delivery_left_behind_is_read_again_when_its_lane_runs_dry() {
        let mut held = Held::default();
        // 3 follows 2, which this owner has not seen: left in the outbox.
        assert_eq!(held.admit(vec![row(3, Some("k"), Some(2))], owned), 0);
        held.admit(vec![row(2, Some("k"), None)], owned);
        let item = held.next(|_| true).expect("2");
        let read = held
            .answered(item, Answer::Done)
            .expect("a read of the rest");
        assert_eq!((read.key.as_str(), read.after_seq), ("k", 2));
    }
}
