//! Event-time order: a buffer that holds accepted events until the watermark
//! passes them, then releases them sorted.
//!
//! The watermark is the smallest, over the partitions still delivering, of
//! the newest event time seen in that partition, minus the allowed lateness.
//! A partition that has delivered nothing yet holds it where it is;
//! partitions read to their end stop holding it back; when every partition
//! is read to its end and the source has been quiet for a while, everything
//! buffered is released. An event older
//! than the watermark when it arrives is late: the pipeline rejects it (kept,
//! with the reason) rather than process it out of order. Within the lateness
//! bound, results equal those on sorted input.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap},
};

use serde::{Deserialize, Serialize};
use weft_normalize::Event;

/// An event waiting for the watermark, ordered by (time, partition, offset):
/// the order is the same whatever order partitions were read in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
}

impl Held {
    fn key(&self) -> (i64, i32, i64) {
        (self.event.time, self.partition, self.offset)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// What a checkpoint keeps of the buffer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReorderState {
    pub watermark: Option<i64>,
    pub newest: BTreeMap<i32, i64>,
    pub held: Vec<Held>,
}

pub struct Reorder {
    lateness: i64,
    /// Events are released once strictly older than this.
    watermark: Option<i64>,
    /// Newest event time seen per partition.
    newest: BTreeMap<i32, i64>,
    heap: BinaryHeap<Reverse<Held>>,
}

impl Reorder {
    pub fn new(lateness: i64, state: ReorderState) -> Self {
        Reorder {
            lateness,
            watermark: state.watermark,
            newest: state.newest,
            heap: state.held.into_iter().map(Reverse).collect(),
        }
    }

    pub fn state(&self) -> ReorderState {
        let mut held: Vec<Held> = self.heap.iter().map(|Reverse(h)| h.clone()).collect();
        held.sort();
        ReorderState {
            watermark: self.watermark,
            newest: self.newest.clone(),
            held,
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Whether an event at `time` arrives too late to be processed in order.
    pub fn is_late(&self, time: i64) -> bool {
        self.watermark.is_some_and(|w| time < w)
    }

    pub fn push(&mut self, held: Held) {
        let newest = self.newest.entry(held.partition).or_insert(i64::MIN);
        *newest = (*newest).max(held.event.time);
        self.heap.push(Reverse(held));
    }

    /// Moves the watermark: from the `partitions` still delivering, or past
    /// everything when `flush_all`. Returns the new watermark if it moved.
    pub fn advance(
        &mut self,
        partitions: &BTreeSet<i32>,
        caught_up: &BTreeSet<i32>,
        flush_all: bool,
    ) -> Option<i64> {
        let newest_overall = self.newest.values().copied().max()?;
        let candidate = if flush_all {
            newest_overall.saturating_add(1)
        } else {
            if partitions.is_empty() {
                return None; // Nothing assigned yet: nothing known about what follows.
            }
            let mut slowest: Option<i64> = None;
            for p in partitions.difference(caught_up) {
                let newest = *self.newest.get(p)?;
                slowest = Some(slowest.map_or(newest, |s| s.min(newest)));
            }
            slowest
                .unwrap_or(newest_overall)
                .saturating_sub(self.lateness)
        };
        match self.watermark {
            Some(w) if candidate <= w => None,
            _ => {
                self.watermark = Some(candidate);
                Some(candidate)
            }
        }
    }

    /// The next event older than the watermark, in order.
    pub fn pop_ready(&mut self) -> Option<Held> {
        let w = self.watermark?;
        match self.heap.peek() {
            Some(Reverse(h)) if h.event.time < w => self.heap.pop().map(|Reverse(h)| h),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(partition: i32, offset: i64, time: i64) -> Held {
        let event = Event {
            id: String::new(),
            time,
            user: "u".into(),
            name: "e".into(),
            session: String::new(),
            path: String::new(),
            device: String::new(),
            browser: String::new(),
            os: String::new(),
            props: Vec::new(),
        };
        Held {
            partition,
            offset,
            event,
        }
    }

    fn one() -> BTreeSet<i32> {
        BTreeSet::from([0])
    }

    fn drain(r: &mut Reorder) -> Vec<i64> {
        std::iter::from_fn(|| r.pop_ready())
            .map(|h| h.event.time)
            .collect()
    }

    #[test]
    fn releases_in_order_behind_the_lateness() {
        let mut r = Reorder::new(5, ReorderState::default());
        for (o, t) in [100, 98, 103, 101, 110].into_iter().enumerate() {
            r.push(held(0, o as i64, t));
        }
        assert_eq!(r.advance(&one(), &BTreeSet::new(), false), Some(105));
        assert_eq!(drain(&mut r), vec![98, 100, 101, 103]);
        assert!(r.is_late(104));
        assert!(!r.is_late(105));
        assert_eq!(r.advance(&one(), &BTreeSet::new(), true), Some(111));
        assert_eq!(drain(&mut r), vec![110]);
    }

    #[test]
    fn the_slowest_active_partition_holds_the_watermark() {
        let mut r = Reorder::new(5, ReorderState::default());
        r.push(held(0, 0, 1000));
        r.push(held(1, 0, 20));
        let three = BTreeSet::from([0, 1, 2]);
        assert_eq!(
            r.advance(&three, &BTreeSet::new(), false),
            None,
            "partition 2 has delivered nothing yet"
        );
        r.push(held(2, 0, 500));
        assert_eq!(r.advance(&three, &BTreeSet::new(), false), Some(15));
        assert_eq!(drain(&mut r), Vec::<i64>::new());
        // Partition 1 read to its end: it no longer holds the watermark back.
        assert_eq!(r.advance(&three, &BTreeSet::from([1]), false), Some(495));
        assert_eq!(drain(&mut r), vec![20]);
        // Nothing assigned (a rebalance in progress): the watermark stays.
        assert_eq!(r.advance(&BTreeSet::new(), &BTreeSet::new(), false), None);
    }

    #[test]
    fn ties_order_by_position_and_the_watermark_never_goes_back() {
        let mut r = Reorder::new(0, ReorderState::default());
        r.push(held(1, 7, 50));
        r.push(held(0, 9, 50));
        r.push(held(0, 3, 50));
        r.advance(&BTreeSet::from([0, 1]), &BTreeSet::new(), true);
        let order: Vec<_> = std::iter::from_fn(|| r.pop_ready())
            .map(|h| (h.partition, h.offset))
            .collect();
        assert_eq!(order, vec![(0, 3), (0, 9), (1, 7)]);
        r.push(held(0, 10, 40));
        assert_eq!(
            r.advance(&BTreeSet::from([0, 1]), &BTreeSet::new(), false),
            None
        );
        assert_eq!(r.watermark(), Some(51));
    }

    #[test]
    fn state_round_trips() {
        let mut r = Reorder::new(5, ReorderState::default());
        r.push(held(0, 0, 10));
        r.push(held(0, 1, 30));
        r.advance(&one(), &BTreeSet::new(), false);
        let saved = serde_json::to_string(&r.state()).unwrap();
        let mut restored = Reorder::new(5, serde_json::from_str(&saved).unwrap());
        assert_eq!(restored.watermark(), Some(25));
        assert_eq!(drain(&mut restored), vec![10]);
        assert_eq!(restored.len(), 1);
    }
}
