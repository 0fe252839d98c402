//! One partition of the input: the unit of state. A partition owns its
//! reorder buffer, dedup ids, counters, source offsets, plugin instances,
//! journals, dead letters and quarantines, and checkpoints them atomically
//! together. A worker thread steps the partitions it owns with what the
//! reader routed to them ([`Input`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use weft_normalize::Normalizer;
use weft_runtime::{Batch, BatchBuilder, Plugin, Role, Runtime};
use weft_source::{Identity, Message, Offsets};
use weft_state::{Part, Rejected};

use crate::{
    Counters, PipelineError, PluginSlot, PluginStats, Settings, Shared,
    checkpoint::Meta,
    dedup::Dedup,
    isolation::{Call, DeadLetter, Journaled, Record, halt},
    lifecycle::Request,
    lock, now_ms,
    reorder::Reorder,
    shared::{PartitionStatus, PartitionView, Running},
};

/// What the reader hands a partition, in order.
pub(crate) enum Input {
    /// Messages routed here, received at wall-clock time `received`; the
    /// worker normalizes them.
    Messages {
        received: i64,
        messages: Vec<Message>,
    },
    /// Everything before `read_to` that belongs here has been handed over;
    /// whether the source is read to its end right now, and whether it has
    /// more to give at all; what it is.
    Progress {
        read_to: Offsets,
        caught_up: bool,
        running: bool,
        identity: Identity,
    },
}

/// Where a partition's checkpoint leaves the source, for the reader to
/// commit (a Kafka source commits them to its group).
pub(crate) struct Committed {
    pub offsets: Offsets,
}

/// What a partition resumes from, for the reader to position the source.
pub(crate) struct Resume {
    pub offsets: Offsets,
    pub source: Option<Identity>,
}

pub(crate) struct Partition {
    pub(crate) part: Part,
    pub(crate) settings: Settings,
    pub(crate) reorder: Reorder,
    pub(crate) dedup: Dedup,
    pub(crate) counters: Counters,
    /// Next offset to read per source partition: everything before that
    /// belongs here was read.
    pub(crate) offsets: Offsets,
    /// The source partitions this partition has messages from.
    sources: BTreeSet<i32>,
    /// Whether the source was read to its end at the last progress.
    caught_up: bool,
    pub(crate) identity: Option<Identity>,
    /// Rejected messages since the last checkpoint, keyed by their sequence
    /// number (the rejected count), so a replay after a crash rewrites the
    /// same keys.
    pub(crate) rejected: Vec<(u64, Rejected)>,
    pub(crate) builder: BatchBuilder,
    /// Stages first (in their configured order), then metrics.
    pub(crate) slots: Vec<Arc<PluginSlot>>,
    pub(crate) stage_count: usize,
    /// Per slot: the successful calls since the last checkpoint.
    pub(crate) journals: Vec<Vec<Journaled>>,
    /// Per slot: the outcomes of its recent calls.
    pub(crate) records: Vec<Record>,
    /// Dead letters since the last checkpoint: (plugin, sequence, record).
    pub(crate) dead: Vec<(String, u64, DeadLetter)>,
    /// Dead letters replayed since the last checkpoint: (plugin, sequence).
    pub(crate) replayed: Vec<(String, u64)>,
    /// The last dead-letter sequence number of plugins not loaded now.
    pub(crate) dead_letter_seq: BTreeMap<String, u64>,
    /// Lifecycle changes: arriving, and waiting for the next checkpoint.
    requests: mpsc::Receiver<Request>,
    pub(crate) pending: Vec<Request>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) view: Arc<PartitionView>,
    pub(crate) commits: mpsc::Sender<Committed>,
    pub(crate) source_running: bool,
    last_message: Instant,
    pub(crate) last_checkpoint: Instant,
    /// Messages admitted since the last checkpoint.
    pub(crate) unsaved: u64,
    /// Whether the offsets moved since the last checkpoint.
    pub(crate) moved: bool,
    /// A call could not finish for a reason not the plugin's (the host is
    /// stopping, its state could not be read): nothing of this step may be
    /// checkpointed, and the pipeline stops with it.
    pub(crate) halted: Option<weft_runtime::Error>,
}

impl Partition {
    /// Restores partition `part` from its last checkpoint and starts an
    /// instance of every running plugin over its state.
    pub(crate) fn open(
        part: Part,
        settings: &Settings,
        shared: &Arc<Shared>,
        commits: mpsc::Sender<Committed>,
    ) -> Result<(Self, Resume), PipelineError> {
        let store = &shared.store;
        let mut meta: Meta = match store.meta(part)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(PipelineError::Meta)?,
            None => Meta::default(),
        };
        if settings.reset_source && !meta.offsets.is_empty() {
            meta.offsets.clear();
            meta.source = None;
        }
        let dedup = Dedup::new(
            store.dedup_records(part)?,
            meta.reorder
                .watermark
                .map(|w| w.saturating_sub(settings.dedup_horizon_ms)),
        );
        let running = lock(&shared.running).clone();
        let mut slots = Vec::with_capacity(running.len());
        for r in &running {
            slots.push(Arc::new(start_slot(
                &shared.runtime,
                shared,
                part,
                r,
                &meta,
            )?));
        }
        let stage_count = slots.iter().filter(|s| s.role == Role::Stage).count();
        let reorder = Reorder::new(settings.lateness_ms, meta.reorder);
        if let Some(w) = reorder
            .watermark()
            .filter(|&w| w > (now_ms() as i64).saturating_add(settings.max_future_ms))
        {
            tracing::error!(
                partition = part,
                watermark = w,
                "The checkpointed watermark is ahead of the wall clock (an event dated in the future moved it, before weft bounded event times): every event older is rejected as late. Start with a new data directory to reprocess."
            );
        }
        let (requests_tx, requests) = mpsc::channel();
        let view = Arc::new(PartitionView {
            part,
            slots: std::sync::RwLock::new(slots.clone()),
            status: Mutex::new(PartitionStatus {
                partition: part,
                events: meta.counters.clone(),
                watermark: reorder.watermark(),
                buffered: reorder.len(),
                offsets: meta.offsets.clone(),
                last_checkpoint: None,
                lag: None,
                running: true,
            }),
            requests: Mutex::new(requests_tx),
        });
        let resume = Resume {
            offsets: meta.offsets.clone(),
            source: meta.source.clone(),
        };
        let sources = meta.offsets.keys().copied().collect();
        let journals = slots.iter().map(|_| Vec::new()).collect();
        let records = vec![Record::default(); slots.len()];
        let partition = Partition {
            part,
            settings: settings.clone(),
            reorder,
            dedup,
            counters: meta.counters,
            offsets: meta.offsets,
            sources,
            caught_up: false,
            identity: meta.source,
            rejected: Vec::new(),
            builder: BatchBuilder::default(),
            slots,
            stage_count,
            journals,
            records,
            dead: Vec::new(),
            replayed: Vec::new(),
            dead_letter_seq: meta.dead_letters,
            requests,
            pending: Vec::new(),
            shared: shared.clone(),
            view,
            commits,
            source_running: true,
            last_message: Instant::now(),
            last_checkpoint: Instant::now(),
            unsaved: 0,
            moved: false,
            halted: None,
        };
        Ok((partition, resume))
    }

    /// One round: take what the reader handed over, process what the
    /// watermark releases, checkpoint when due, apply lifecycle changes.
    pub(crate) fn step(
        &mut self,
        inputs: Vec<Input>,
        normalizer: &mut Normalizer,
    ) -> Result<(), PipelineError> {
        self.pending.extend(self.requests.try_iter());
        // A failed query leaves its instance unusable: restart it now, so the
        // next query is answered even when no events come.
        for i in 0..self.slots.len() {
            if lock(&self.slots[i].stats).quarantined.is_none() {
                self.recover_if_poisoned(i);
            }
        }
        let watermark_before = self.reorder.watermark();
        let none = BTreeSet::new();
        for input in inputs {
            match input {
                Input::Messages { received, messages } => {
                    self.last_message = Instant::now();
                    // The watermark moves after every message, so whether an
                    // event is late does not depend on where a poll began;
                    // the source counts as caught up only once these are
                    // all admitted (the progress after them says so).
                    for message in messages {
                        self.sources.insert(message.partition);
                        self.admit(message, received, normalizer);
                        self.reorder.advance(&self.sources, &none, false);
                    }
                }
                Input::Progress {
                    read_to,
                    caught_up,
                    running,
                    identity,
                } => {
                    for (p, to) in read_to {
                        self.sources.insert(p);
                        if self.offsets.get(&p).is_none_or(|&next| next < to) {
                            self.offsets.insert(p, to);
                            self.moved = true;
                        }
                    }
                    if self.identity.as_ref() != Some(&identity) {
                        self.identity = Some(identity);
                        self.moved = true;
                    }
                    self.caught_up = caught_up;
                    if self.source_running && !running {
                        self.moved = true;
                    }
                    self.source_running = running;
                }
            }
        }

        // Release everything once the source has nothing more to give: ended,
        // or read to its end and quiet for `idle_ms`.
        let caught_up = if self.caught_up { &self.sources } else { &none };
        let quiet = self.caught_up
            && self.last_message.elapsed() >= Duration::from_millis(self.settings.idle_ms);
        self.reorder
            .advance(&self.sources, caught_up, quiet || !self.source_running);
        while let Some(held) = self.reorder.pop_ready() {
            self.builder.push(&held.event);
            if self.builder.len() >= self.settings.batch_size {
                self.run_batch();
            }
        }
        if !self.builder.is_empty() {
            self.run_batch();
        }
        if let Some(watermark) = self
            .reorder
            .watermark()
            .filter(|_| self.reorder.watermark() != watermark_before)
        {
            self.tick(watermark);
            self.dedup
                .expire(watermark.saturating_sub(self.settings.dedup_horizon_ms));
        }

        if let Some(e) = self.halted.take() {
            return Err(halt(e));
        }
        let due = self.last_checkpoint.elapsed()
            >= Duration::from_millis(self.settings.checkpoint_interval_ms)
            || self.unsaved >= self.settings.checkpoint_events;
        let unsaved = self.unsaved > 0 || self.moved;
        // Lifecycle changes wait for the next checkpoint (at once when
        // nothing is waiting to be saved), so they find every plugin's state
        // durable and its journal empty.
        let change = !self.pending.is_empty() && (due || !unsaved);
        if unsaved && (due || !self.source_running) || change {
            self.checkpoint()?;
        }
        if change {
            self.apply_pending();
        }
        self.publish_status();
        Ok(())
    }

    /// Runs the built batch through the stages, then every metric.
    fn run_batch(&mut self) {
        let batch = Arc::new(self.builder.finish());
        self.run_from(0, batch);
    }

    /// Runs `batch` through the stages from `start` on, then every metric.
    /// A batch a stage fails on goes no further (it is in the stage's dead
    /// letters).
    pub(crate) fn run_from(&mut self, start: usize, mut batch: Arc<Batch>) {
        for i in start..self.stage_count {
            let Some(Some(out)) = self.call(i, Call::Batch(&batch)) else {
                return;
            };
            let mut next = Arc::unwrap_or_clone(batch.clone());
            match weft_runtime::apply(&mut next, out) {
                Ok(()) => {
                    self.records[i].success(true);
                    batch = Arc::new(next);
                }
                Err(detail) => {
                    // The call looked fine, but its output is not: undo it.
                    self.journals[i].pop();
                    let error = weft_runtime::Error::BadOutput {
                        plugin: self.slots[i].name.clone(),
                        detail,
                    };
                    self.fail(i, Some(&batch), error);
                    return;
                }
            }
        }
        for i in self.stage_count..self.slots.len() {
            self.call(i, Call::Batch(&batch));
        }
    }

    fn tick(&mut self, watermark: i64) {
        for i in 0..self.slots.len() {
            self.call(i, Call::Tick(watermark));
        }
    }

    /// Shows the HTTP layer the instances now running.
    pub(crate) fn publish_slots(&self) {
        *self.view.slots.write().unwrap_or_else(|p| p.into_inner()) = self.slots.clone();
    }

    fn publish_status(&mut self) {
        let mut status = lock(&self.view.status);
        status.events = self.counters.clone();
        status.watermark = self.reorder.watermark();
        status.buffered = self.reorder.len();
        status.offsets = self.offsets.clone();
        status.running = self.source_running;
    }
}

/// Starts partition `part`'s instance of `running` over its state, with the
/// stats its checkpoint `meta` kept.
pub(crate) fn start_slot(
    runtime: &Runtime,
    shared: &Shared,
    part: Part,
    running: &Running,
    meta: &Meta,
) -> Result<PluginSlot, PipelineError> {
    let name = &running.name;
    let plugin = Plugin::start(
        runtime,
        name,
        &running.module,
        shared.store.plugin_state(name, part),
        &running.config.to_string(),
        running.limits,
    )?;
    let stats = PluginStats {
        digest: running.module.digest.clone(),
        loaded_at: now_ms(),
        dead_letters: shared.store.count_dead_letters(name, part)?,
        dead_letter_seq: meta.dead_letters.get(name).copied().unwrap_or(0),
        quarantined: meta.quarantined.get(name).cloned(),
        ..PluginStats::default()
    };
    Ok(PluginSlot::new(
        name.clone(),
        running.module.role(),
        plugin,
        stats,
    ))
}
