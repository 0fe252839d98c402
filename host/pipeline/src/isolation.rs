//! Fault isolation: what lets one plugin fail without touching the others.
//!
//! Every successful call since the last checkpoint is journaled per plugin.
//! When a call fails (an error, a trap, the CPU budget, the memory limit, or
//! a stage's malformed output), its batch goes to the plugin's dead letters
//! with the error and the module digest, and the plugin is restarted from its
//! last checkpointed state and the journal replayed, so the failed call left
//! no trace. After `quarantine_after` consecutive failures, or once half of
//! its last `quarantine_window` calls failed, the plugin is quarantined: its
//! batches go straight to its dead letters until it is reloaded.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_normalize::Event;
use weft_runtime::Batch;

/// A successful call, to replay into a restarted instance.
pub(crate) enum Journaled {
    /// `process` (a stage) or `ingest` (a metric) of this batch.
    Batch(Arc<Batch>),
    Tick(i64),
}

/// A batch a plugin failed on, kept so it can be looked at and replayed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub error: String,
    /// The module version that failed.
    pub digest: String,
    pub events: Vec<Event>,
}

impl DeadLetter {
    pub(crate) fn new(error: String, digest: String, batch: &Batch) -> Self {
        DeadLetter {
            error,
            digest,
            events: weft_runtime::events(batch),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The outcomes of a plugin's recent calls, which decide its quarantine.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Record {
    /// Failed calls since the last successful batch.
    run: u32,
    /// The outcomes of the last batches and failed ticks, the newest in
    /// bit 0; a set bit failed.
    history: u64,
    /// How many calls `history` holds (at most 64).
    len: u32,
}

impl Record {
    /// A call succeeded. Only a batch counts (and ends a run of failures):
    /// a plugin that fails on every batch must not pass for healthy because
    /// its ticks succeed in between.
    pub(crate) fn success(&mut self, batch: bool) {
        if batch {
            self.push(false);
            self.run = 0;
        }
    }

    pub(crate) fn failure(&mut self) {
        self.push(true);
        self.run += 1;
    }

    fn push(&mut self, failed: bool) {
        self.history = (self.history << 1) | u64::from(failed);
        self.len = (self.len + 1).min(64);
    }

    /// Why the plugin must be quarantined, if it must: `after` failures in a
    /// row, or half or more of the last `window` calls failed.
    pub(crate) fn verdict(&self, after: u32, window: u32) -> Option<String> {
        if self.run >= after.max(1) {
            return Some(format!("{} failed calls in a row", self.run));
        }
        let window = window.clamp(1, 64);
        if self.len < window {
            return None;
        }
        let mask = u64::MAX >> (64 - window);
        let failed = (self.history & mask).count_ones();
        (failed * 2 >= window).then(|| format!("{failed} of its last {window} calls failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn a_run_of_failures_quarantines() {
        let mut r = Record::default();
        r.failure();
        r.success(false); // a tick between two failed batches
        r.failure();
        assert_eq!(r.verdict(3, 20), None);
        r.failure();
        assert_eq!(r.verdict(3, 20).as_deref(), Some("3 failed calls in a row"));
        r.success(true);
        assert_eq!(r.verdict(3, 20), None);
    }

    #[test]
    fn failing_every_other_call_quarantines_at_the_window() {
        let mut r = Record::default();
        for call in 0..19 {
            if call % 2 == 0 {
                r.failure();
            } else {
                r.success(true);
            }
            r.success(false); // ticks in between do not dilute the rate
            assert_eq!(r.verdict(3, 20), None, "call {call}");
        }
        r.success(true);
        assert_eq!(
            r.verdict(3, 20).as_deref(),
            Some("10 of its last 20 calls failed")
        );
    }

    #[test]
    fn rare_failures_do_not() {
        let mut r = Record::default();
        for call in 0..1000 {
            if call % 5 == 0 {
                r.failure();
            } else {
                r.success(true);
            }
            assert_eq!(r.verdict(3, 64), None, "call {call}");
        }
    }
}
