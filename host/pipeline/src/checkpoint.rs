//! A partition's checkpoint: its plugins' state changes, dedup ids,
//! rejected messages, dead letters and metadata (offsets, the source's
//! identity, counters, reorder buffer, quarantines) in one atomic write,
//! then the offset commit to the source.

use std::{collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};
use weft_source::{Identity, Offsets};
use weft_state::Checkpoint;

use crate::{
    Counters, PipelineError,
    isolation::{Journaled, failed, halt, halts, restart_and_replay},
    lock, now_ms,
    partition::{Committed, Partition},
    reorder::ReorderState,
    shared::CheckpointInfo,
};

/// What a checkpoint keeps besides plugin state and dedup ids.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) offsets: Offsets,
    pub(crate) counters: Counters,
    pub(crate) reorder: ReorderState,
    /// The last dead letter's sequence number per plugin.
    #[serde(default)]
    pub(crate) dead_letters: BTreeMap<String, u64>,
    /// Quarantined plugins and why.
    #[serde(default)]
    pub(crate) quarantined: BTreeMap<String, String>,
    /// What the offsets are positions in; `None` in checkpoints written
    /// before weft recorded it.
    #[serde(default)]
    pub(crate) source: Option<Identity>,
    /// Random, new at every checkpoint: two histories of a partition never
    /// have the same metadata, so equal metadata means the same state.
    #[serde(default)]
    pub(crate) id: u64,
}

impl Partition {
    /// Writes the partition's state and source position atomically, then
    /// hands the offsets to the reader to commit to the source.
    pub fn checkpoint(&mut self) -> Result<(), PipelineError> {
        let started = Instant::now();
        // Hold every plugin until the write is durable, so a query never reads
        // state that was drained but not yet written.
        let slots = self.slots.clone();
        let mut guards: Vec<_> = slots.iter().map(|s| lock(&s.plugin)).collect();
        let mut plugin_writes = Vec::with_capacity(guards.len());
        for (i, (slot, plugin)) in slots.iter().zip(guards.iter_mut()).enumerate() {
            if plugin.is_poisoned() {
                continue; // Quarantined and not restartable: nothing to save.
            }
            // A failed checkpoint call loses what the instance held: restart,
            // replay what it saw since the last checkpoint, and ask again.
            let writes = plugin.checkpoint().or_else(|e| {
                if halts(&e) {
                    return Err(e);
                }
                failed(&self.shared.telemetry, slot, &e);
                restart_and_replay(slot, plugin, &self.journals[i])?;
                plugin.checkpoint()
            });
            match writes {
                Ok(writes) => plugin_writes.push((slot.name.clone(), writes)),
                Err(e) if halts(&e) => return Err(halt(e)),
                Err(e) => {
                    // What it handled since the last checkpoint cannot be kept:
                    // those batches go to its dead letters, and the instance
                    // goes back to its checkpointed state so nothing counts twice.
                    let reason = format!("its state cannot be checkpointed: {e}");
                    tracing::error!(plugin = %slot.name, partition = self.part, %reason, "Plugin quarantined; batches since the last checkpoint are in its dead letters.");
                    lock(&slot.stats).quarantined = Some(reason.clone());
                    for entry in std::mem::take(&mut self.journals[i]) {
                        if let Journaled::Batch(b) = entry {
                            self.dead_letter(i, &b, reason.clone());
                        }
                    }
                    if let Err(e) = plugin.restart() {
                        tracing::warn!(plugin = %slot.name, error = %e, "Restarting the quarantined plugin failed.");
                    }
                }
            }
        }
        let mut dead_letter_seq = self.dead_letter_seq.clone();
        for s in &slots {
            dead_letter_seq.insert(s.name.clone(), lock(&s.stats).dead_letter_seq);
        }
        let meta = Meta {
            id: rand::random(),
            offsets: self.offsets.clone(),
            counters: self.counters.clone(),
            reorder: self.reorder.state(),
            dead_letters: dead_letter_seq,
            source: self.identity.clone(),
            quarantined: slots
                .iter()
                .filter_map(|s| {
                    lock(&s.stats)
                        .quarantined
                        .clone()
                        .map(|q| (s.name.clone(), q))
                })
                .collect(),
        };
        let dedup = self.dedup.take_changes();
        let writes: usize = plugin_writes.iter().map(|(_, w)| w.len()).sum();
        let checkpoint = Checkpoint {
            plugin_writes,
            dedup_added: dedup.blob,
            dedup_removed: dedup.removed,
            rejected: std::mem::take(&mut self.rejected),
            dead_letters: self
                .dead
                .drain(..)
                .map(|(plugin, seq, d)| (plugin, seq, d.encode()))
                .collect(),
            dead_letters_removed: std::mem::take(&mut self.replayed),
            meta: serde_json::to_vec(&meta).map_err(PipelineError::Meta)?,
        };
        // The changelog first: a crash after it leaves the local store
        // behind the changelog, which the next owner (this host too) sees.
        let records = checkpoint.into_writes(self.part)?;
        let end = match self.shared.group.get() {
            Some(m) => Some(m.append(&self.shared.store, self.part, &records)?),
            None => None,
        };
        self.shared.store.apply(self.part, records)?;
        if let Some(end) = end {
            self.shared.store.set_changelog_end(self.part, end)?;
        }
        drop(guards);
        for journal in &mut self.journals {
            journal.clear();
        }
        // The reader has stopped only when the pipeline is stopping; the
        // checkpoint holds the offsets then.
        let _ = self.commits.send(Committed {
            offsets: self.offsets.clone(),
        });
        let elapsed = started.elapsed();
        self.shared
            .telemetry
            .checkpoint
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            partition = self.part,
            messages = self.unsaved,
            writes,
            ms = elapsed.as_secs_f64() * 1e3,
            "Checkpoint written."
        );
        self.unsaved = 0;
        self.moved = false;
        self.last_checkpoint = Instant::now();
        lock(&self.view.status).last_checkpoint = Some(CheckpointInfo {
            at: now_ms(),
            duration_ms: elapsed.as_secs_f64() * 1e3,
            offsets: self.offsets.clone(),
        });
        Ok(())
    }
}
