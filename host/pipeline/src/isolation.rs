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

use std::{sync::Arc, time::Instant};

use serde::{Deserialize, Serialize};
use weft_normalize::Event;
use weft_runtime::{Batch, Plugin, Role, StageOutput};

use crate::{PipelineError, lock, partition::Partition, shared::PluginSlot, telemetry::Telemetry};

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

impl Partition {
    /// Calls plugin `i`, journaling a success and isolating a failure.
    /// `None` when the call failed or the plugin is quarantined; a stage's
    /// `process` answers `Some(Some(output))`.
    pub(crate) fn call(&mut self, i: usize, call: Call) -> Option<Option<StageOutput>> {
        let slot = self.slots[i].clone();
        let batch = match call {
            Call::Batch(b) => Some(b),
            Call::Tick(_) => None,
        };
        let quarantined = lock(&slot.stats).quarantined.clone();
        if let Some(reason) = quarantined {
            if let Some(b) = batch {
                self.dead_letter(i, b, format!("quarantined: {reason}"));
            }
            return None;
        }
        // A query (from the HTTP side) may have left the instance unusable.
        if !self.recover_if_poisoned(i) {
            return self.call(i, call);
        }
        let started = Instant::now();
        let (result, memory) = {
            let mut plugin = lock(&slot.plugin);
            let result = match call {
                Call::Batch(b) if slot.role == Role::Stage => plugin.process(b).map(Some),
                Call::Batch(b) => plugin.ingest(b).map(|()| None),
                Call::Tick(w) => plugin.tick(w).map(|()| None),
            };
            (result, plugin.memory_bytes())
        };
        let elapsed = started.elapsed().as_secs_f64();
        if batch.is_some() {
            self.shared
                .telemetry
                .plugin_batch
                .with_label_values(&[slot.name.as_str()])
                .observe(elapsed);
        }
        {
            let mut stats = lock(&slot.stats);
            stats.memory_bytes = memory;
            if let Some(b) = batch {
                stats.batches += 1;
                stats.events_in += b.events.len() as u64;
                stats.busy_seconds += elapsed;
            }
        }
        match result {
            Ok(out) => {
                self.journals[i].push(match call {
                    Call::Batch(b) => Journaled::Batch(b.clone()),
                    Call::Tick(w) => Journaled::Tick(w),
                });
                // A stage's batch counts as a success once its output is
                // applied (see `run_from`).
                if slot.role == Role::Metric || batch.is_none() {
                    self.records[i].success(batch.is_some());
                }
                lock(&slot.stats).failing = false;
                Some(out)
            }
            Err(e) if halts(&e) => {
                // Not the plugin's fault, and nothing of this step may be
                // checkpointed.
                self.halted = Some(e);
                None
            }
            Err(error) => {
                self.fail(i, batch, error);
                None
            }
        }
    }

    /// Restarts plugin `i` if a failed query left it unusable; false if it
    /// could not be and is quarantined now.
    pub(crate) fn recover_if_poisoned(&mut self, i: usize) -> bool {
        if !lock(&self.slots[i].plugin).is_poisoned() {
            return true;
        }
        match self.recover(i) {
            Ok(()) => true,
            Err(e) if halts(&e) => {
                self.halted = Some(e);
                true
            }
            Err(e) => {
                self.quarantine(i, format!("cannot recover after a failed query: {e}"));
                false
            }
        }
    }

    /// Records a failed call: the batch to the dead letters, then a fresh
    /// instance that never saw the call; quarantine if it keeps failing.
    pub(crate) fn fail(
        &mut self,
        i: usize,
        batch: Option<&Arc<Batch>>,
        error: weft_runtime::Error,
    ) {
        failed(&self.shared.telemetry, &self.slots[i], &error);
        if let Some(b) = batch {
            self.dead_letter(i, b, error.to_string());
        }
        self.records[i].failure();
        match self.recover(i) {
            Ok(()) => {}
            Err(e) if halts(&e) => self.halted = Some(e),
            Err(e) => return self.quarantine(i, format!("cannot restart after a failure: {e}")),
        }
        let verdict = self.records[i].verdict(
            self.settings.quarantine_after,
            self.settings.quarantine_window,
        );
        if let Some(why) = verdict {
            self.quarantine(i, format!("{why}; the last: {error}"));
        }
    }

    /// Restarts plugin `i` from its checkpointed state and replays its
    /// journal, so it is where it was before the failed call.
    fn recover(&mut self, i: usize) -> Result<(), weft_runtime::Error> {
        restart_and_replay(
            &self.slots[i],
            &mut lock(&self.slots[i].plugin),
            &self.journals[i],
        )
    }

    fn quarantine(&mut self, i: usize, reason: String) {
        let slot = &self.slots[i];
        match slot.role {
            Role::Stage => {
                tracing::error!(plugin = %slot.name, partition = self.part, %reason, "Stage quarantined: every batch is dead-lettered here and NO METRIC RECEIVES EVENTS until it is reloaded (see `health` in /api/status for the way out).")
            }
            Role::Metric => {
                tracing::error!(plugin = %slot.name, partition = self.part, %reason, "Plugin quarantined: its batches go to its dead letters until it is reloaded (see `health` in /api/status for the way out).")
            }
        }
        lock(&slot.stats).quarantined = Some(reason);
    }

    pub(crate) fn dead_letter(&mut self, i: usize, batch: &Batch, error: String) {
        let slot = &self.slots[i];
        let (seq, digest) = {
            let mut stats = lock(&slot.stats);
            stats.dead_letters += 1;
            stats.dead_letter_seq += 1;
            (stats.dead_letter_seq, stats.digest.clone())
        };
        self.dead.push((
            slot.name.clone(),
            seq,
            DeadLetter::new(error, digest, batch),
        ));
    }
}

/// Restarts `plugin` (of `slot`) and replays `journal` into it.
pub(crate) fn restart_and_replay(
    slot: &PluginSlot,
    plugin: &mut Plugin,
    journal: &[Journaled],
) -> Result<(), weft_runtime::Error> {
    plugin.restart()?;
    // These calls succeeded before: a busier host must not fail them now.
    plugin.unmetered(|plugin| {
        for entry in journal {
            match entry {
                Journaled::Batch(b) if slot.role == Role::Stage => plugin.process(b).map(drop)?,
                Journaled::Batch(b) => plugin.ingest(b)?,
                Journaled::Tick(w) => plugin.tick(*w)?,
            }
        }
        Ok(())
    })?;
    lock(&slot.stats).restarts += 1;
    slot.recovered.notify_all();
    tracing::info!(plugin = %slot.name, replayed = journal.len(), "Plugin restarted.");
    Ok(())
}

/// Whether a failed call is the host's trouble, not the plugin's: the
/// pipeline stops instead of dead-lettering the batch.
pub(crate) fn halts(e: &weft_runtime::Error) -> bool {
    matches!(
        e,
        weft_runtime::Error::Interrupted { .. } | weft_runtime::Error::State { .. }
    )
}

/// The pipeline's error for a call that [`halts`] it.
pub(crate) fn halt(e: weft_runtime::Error) -> PipelineError {
    match e {
        weft_runtime::Error::Interrupted { .. } => PipelineError::Interrupted,
        e => PipelineError::Plugin(e),
    }
}

/// A call the pipeline makes into a plugin.
#[derive(Clone, Copy)]
pub(crate) enum Call<'a> {
    /// `process` for a stage, `ingest` for a metric.
    Batch(&'a Arc<Batch>),
    Tick(i64),
}

pub(crate) fn failed(telemetry: &Telemetry, slot: &PluginSlot, error: &weft_runtime::Error) {
    tracing::warn!(plugin = %slot.name, error = %error, "Plugin call failed.");
    telemetry
        .plugin_errors
        .with_label_values(&[slot.name.as_str()])
        .inc();
    let mut stats = lock(&slot.stats);
    stats.errors += 1;
    stats.failing = true;
    stats.last_error = Some(error.to_string());
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
