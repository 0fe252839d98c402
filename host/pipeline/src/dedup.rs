//! Dedup of accepted event ids within a horizon of event time.

use std::collections::BTreeSet;

use rustc_hash::{FxHashMap, FxHashSet};

/// Accepted ids and their event times; ids older than the horizon (behind
/// the watermark) expire.
#[derive(Default)]
pub struct Dedup {
    times: FxHashMap<String, i64>,
    by_time: BTreeSet<(i64, String)>,
    /// Ids added or expired since the last checkpoint.
    touched: FxHashSet<String>,
}

impl Dedup {
    pub fn new(ids: Vec<(String, i64)>) -> Self {
        let mut d = Dedup::default();
        for (id, time) in ids {
            d.by_time.insert((time, id.clone()));
            d.times.insert(id, time);
        }
        d
    }

    pub fn is_known(&self, id: &str) -> bool {
        self.times.contains_key(id)
    }

    /// Records `id`; false if it was already accepted.
    pub fn accept(&mut self, id: &str, time: i64) -> bool {
        if self.times.contains_key(id) {
            return false;
        }
        self.times.insert(id.to_owned(), time);
        self.by_time.insert((time, id.to_owned()));
        self.touched.insert(id.to_owned());
        true
    }

    /// Forgets ids with event time before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        while let Some((time, _)) = self.by_time.first() {
            if *time >= cutoff {
                break;
            }
            if let Some((_, id)) = self.by_time.pop_first() {
                self.times.remove(&id);
                self.touched.insert(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// What changed since the last call, for a checkpoint: each touched id
    /// with its time, or `None` if it is gone. Sorted by id.
    pub fn take_changes(&mut self) -> Vec<(String, Option<i64>)> {
        let mut changes: Vec<_> = self
            .touched
            .drain()
            .map(|id| {
                let t = self.times.get(&id).copied();
                (id, t)
            })
            .collect();
        changes.sort();
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_once_and_expires_behind_the_horizon() {
        let mut d = Dedup::default();
        assert!(d.accept("a", 10));
        assert!(!d.accept("a", 10));
        assert!(d.accept("b", 20));
        d.expire(15);
        assert!(d.accept("a", 30), "expired ids are new again");
        assert!(!d.accept("b", 20));
        d.expire(25);
        assert_eq!(
            d.take_changes(),
            vec![("a".into(), Some(30)), ("b".into(), None)]
        );
        assert_eq!(d.take_changes(), vec![]);
    }
}
