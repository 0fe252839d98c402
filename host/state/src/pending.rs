//! A plugin's state as its calls see it: the durable state of the last
//! checkpoint, under the writes made since.
//!
//! A plugin's writes go to an in-memory overlay of pending writes; reads see
//! the overlay first, then the durable store. At a checkpoint the pipeline
//! drains every overlay ([`PendingState::drain`]) into one atomic write
//! together with the source offsets, so plugin state and offsets never
//! disagree after a crash. A read of the durable store that fails is an
//! error, never an absent value: an absent value would silently reset the
//! plugin's state.

use std::{collections::BTreeMap, ops::Bound, sync::Arc};

use crate::StateError;

/// Read access to a plugin's durable state (keys are relative to the plugin's
/// namespace). Implemented over sled by [`crate::Store::plugin_state`].
pub trait DurableState: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Entries with keys starting with `prefix`, strictly after `after`, in
    /// key order, at most `limit`.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError>;
}

/// The entries of a scan: (key, value).
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One pending write: `None` deletes the key.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A plugin's writes since the last checkpoint, over its durable state.
pub struct PendingState {
    durable: Arc<dyn DurableState>,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl PendingState {
    pub fn new(durable: Arc<dyn DurableState>) -> Self {
        PendingState {
            durable,
            overlay: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.durable.get(key),
        }
    }

    pub fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError> {
        // Merge the durable entries with the overlay; overlay entries win.
        let durable_wanted = limit.saturating_add(self.overlay.len());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .durable
            .scan(prefix, after, durable_wanted)?
            .into_iter()
            .collect();
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        for (k, v) in self.overlay.range((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// The durable state alone: a new overlay with no pending writes.
    pub fn reset(&self) -> PendingState {
        PendingState::new(self.durable.clone())
    }

    /// Takes the pending writes, in key order, leaving the overlay empty.
    pub fn drain(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.overlay).into_iter().collect()
    }

    pub fn pending(&self) -> usize {
        self.overlay.len()
    }
}
