//! Fault isolation: what lets one plugin fail without touching the others.
//!
//! Every successful call since the last checkpoint is journaled per plugin.
//! When a call fails (an error, a trap, the CPU budget, the memory limit, or
//! a stage's malformed output), its batch goes to the plugin's dead letters
//! with the error and the module digest, and the plugin is restarted from its
//! last checkpointed state and the journal replayed, so the failed call left
//! no trace. After `quarantine_after` consecutive failures the plugin is
//! quarantined: its batches go straight to its dead letters until it is
//! reloaded.

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
