//! Dedup of accepted event ids within a horizon of event time.
//!
//! The ids accepted between two checkpoints are stored as one record (a
//! "blob": the ids and their event times) rather than one key per id, so a
//! checkpoint writes one key for them however many events it covers. A blob
//! is deleted once its newest id has expired. After a restart the blobs are
//! read back, an id seen twice (expired and accepted again) keeps its newest
//! time, and ids already behind the horizon are expired at once: the set is
//! the one an uninterrupted run holds.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use weft_state::DedupIds;

/// What a checkpoint writes for dedup.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DedupChanges {
    /// The ids accepted since the last checkpoint, as blob `seq`.
    pub blob: Option<(u64, DedupIds)>,
    /// Blobs whose ids have all expired.
    pub removed: Vec<u64>,
}

/// Accepted ids and their event times; ids older than the horizon (behind
/// the watermark) expire.
#[derive(Default)]
pub struct Dedup {
    times: FxHashMap<String, i64>,
    by_time: BTreeSet<(i64, String)>,
    /// Ids accepted since the last checkpoint.
    added: DedupIds,
    /// Stored blobs by the newest event time in each: (newest, seq).
    blobs: BTreeSet<(i64, u64)>,
    next_blob: u64,
    /// Blobs to delete at the next checkpoint.
    removed: Vec<u64>,
}

impl Dedup {
    /// The set the stored `blobs` hold, with ids before `cutoff` expired.
    pub fn new(blobs: Vec<(u64, DedupIds)>, cutoff: Option<i64>) -> Self {
        let mut d = Dedup::default();
        for (seq, ids) in blobs {
            let newest = ids.iter().map(|(_, t)| *t).max().unwrap_or(i64::MIN);
            d.blobs.insert((newest, seq));
            d.next_blob = d.next_blob.max(seq + 1);
            for (id, time) in ids {
                match d.times.get(&id) {
                    Some(&known) if known >= time => {}
                    known => {
                        if let Some(known) = known {
                            d.by_time.remove(&(*known, id.clone()));
                        }
                        d.by_time.insert((time, id.clone()));
                        d.times.insert(id, time);
                    }
                }
            }
        }
        if let Some(cutoff) = cutoff {
            d.expire(cutoff);
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
        self.added.push((id.to_owned(), time));
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
            }
        }
        while let Some(&(newest, seq)) = self.blobs.first() {
            if newest >= cutoff {
                break;
            }
            self.blobs.pop_first();
            self.removed.push(seq);
        }
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// What changed since the last call, for a checkpoint.
    pub fn take_changes(&mut self) -> DedupChanges {
        let blob = (!self.added.is_empty()).then(|| {
            let ids = std::mem::take(&mut self.added);
            let seq = self.next_blob;
            self.next_blob += 1;
            let newest = ids.iter().map(|(_, t)| *t).max().unwrap_or(i64::MIN);
            self.blobs.insert((newest, seq));
            (seq, ids)
        });
        DedupChanges {
            blob,
            removed: std::mem::take(&mut self.removed),
        }
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
        let first = d.take_changes();
        assert_eq!(
            first,
            DedupChanges {
                blob: Some((0, vec![("a".into(), 10), ("b".into(), 20)])),
                removed: vec![],
            }
        );
        d.expire(15);
        assert!(d.accept("a", 30), "expired ids are new again");
        assert!(!d.accept("b", 20));
        d.expire(25);
        assert!(!d.is_known("b"));
        assert_eq!(
            d.take_changes(),
            DedupChanges {
                blob: Some((1, vec![("a".into(), 30)])),
                removed: vec![0],
            },
            "the first blob goes once its newest id has expired"
        );
        assert_eq!(d.take_changes(), DedupChanges::default());
    }

    #[test]
    fn restored_blobs_give_the_uninterrupted_set() {
        // Blob 0 still holds `a` at 10 (expired, then accepted again at 30
        // into blob 1) and `c` at 40, which keeps blob 0 alive.
        let blobs = vec![
            (0, vec![("a".into(), 10), ("c".into(), 40)]),
            (1, vec![("a".into(), 30), ("d".into(), 12)]),
        ];
        let mut d = Dedup::new(blobs, Some(15));
        assert!(d.is_known("a") && d.is_known("c"));
        assert!(!d.is_known("d"), "behind the horizon at once");
        assert_eq!(d.len(), 2);
        d.expire(35);
        assert!(!d.is_known("a"), "`a` keeps its newest time, 30");
        assert_eq!(d.take_changes().removed, vec![1]);
        assert!(d.accept("e", 50));
        assert_eq!(d.take_changes().blob.map(|(seq, _)| seq), Some(2));
    }
}
