//! weft's pipeline: the way every event takes.
//!
//! source → normalize → dedup → event-time order → stage plugins → metric
//! plugins, with periodic checkpoints that write all plugin state, the dedup
//! ids, the rejected messages, the reorder buffer, the counters and the
//! source offsets in one atomic write. After a crash the pipeline resumes
//! from the last checkpoint and re-reads from its offsets: nothing is lost
//! and nothing counted twice.
//!
//! The pipeline runs on one thread that owns the source. Plugin instances sit
//! behind mutexes in [`Shared`] so the HTTP layer can query them between
//! batches.
//!
//! Layout (this file: the settings, the pipeline and its loop):
//! - [`admit`]: a raw message to an accepted, duplicate or rejected event;
//! - [`reorder`]: the event-time buffer and watermark;
//! - [`dedup`]: accepted event ids within the dedup horizon;
//! - [`isolation`]: plugin calls, journals, dead letters and quarantine of
//!   failing plugins;
//! - [`checkpoint`]: the atomic checkpoint;
//! - [`lifecycle`]: loading, swapping, unloading and rolling back plugins
//!   while events flow;
//! - [`shared`]: what the HTTP layer sees: status, health, plugins, queries;
//! - [`telemetry`]: Prometheus metrics.

pub mod admit;
pub mod checkpoint;
pub mod dedup;
pub mod isolation;
pub mod lifecycle;
pub mod reorder;
pub mod shared;
pub mod telemetry;

pub use shared::{
    CheckpointInfo, Health, PluginInfo, PluginSlot, PluginStats, Problem, QueryError, Shared,
    Status,
};

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use weft_normalize::{FieldMapping, Normalizer};
use weft_runtime::{Batch, BatchBuilder, Limits, Plugin, Role, Runtime};
use weft_source::{Message, Offsets, Source};
use weft_state::{Rejected, Store};

use crate::{
    checkpoint::Meta,
    dedup::Dedup,
    isolation::{Call, DeadLetter, Journaled, Record, halt},
    lifecycle::{Origin, Request},
    reorder::Reorder,
    telemetry::Telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Plugin(#[from] weft_runtime::Error),
    #[error(transparent)]
    State(#[from] weft_state::StateError),
    #[error(transparent)]
    Source(#[from] weft_source::SourceError),
    #[error("the last checkpoint's metadata does not decode: {0}")]
    Meta(serde_json::Error),
    #[error("plugin names must be unique; `{0}` appears twice")]
    DuplicatePlugin(String),
    #[error("telemetry: {0}")]
    Telemetry(#[from] prometheus::Error),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "stopped in the middle of a plugin call; the last checkpoint stands, and what was read after it is read again at the next start"
    )]
    Interrupted,
    #[error("the pipeline panicked (see the message above); the last checkpoint stands")]
    Panicked,
}

/// Pipeline settings (the `[pipeline]` section of `weft.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Most events per plugin call.
    pub batch_size: usize,
    /// How far out of event-time order an event may arrive and still count.
    pub lateness_ms: i64,
    /// After this long with no message, everything buffered is released.
    pub idle_ms: u64,
    /// How long (event time) an accepted event id is remembered for dedup.
    pub dedup_horizon_ms: i64,
    /// A checkpoint is written at least this often while events flow...
    /// (5 s by default: a session's many changes within an interval are one
    /// state write, and the benchmark harness measured 1 s costing a third
    /// of the default pipeline's throughput in sled writes; a crash replays
    /// at most this much from the source).
    pub checkpoint_interval_ms: u64,
    /// ...and after at most this many messages.
    pub checkpoint_events: u64,
    /// Failed calls in a row after which a plugin is quarantined.
    pub quarantine_after: u32,
    /// A plugin is also quarantined once half or more of its last this many
    /// calls failed (at most 64), so one failing every other call does not
    /// restart forever.
    pub quarantine_window: u32,
    /// How far ahead of the time it was received (the wall clock) an event
    /// may be dated; one further ahead is rejected as `future`, so a client
    /// with a wrong clock cannot move the watermark past every real event.
    pub max_future_ms: i64,
    /// The most CPU time per call a plugin's limits may ask for, wherever
    /// they are set (`[[plugins]]`, a directory manifest, an upload).
    pub max_cpu_ms: u64,
    /// ...and the most memory.
    pub max_memory_mib: u64,
    /// How many bytes of a rejected message are kept (with its full length
    /// and digest); the rest is dropped.
    pub rejected_raw_limit: usize,
    /// Where to find fields of an input shape not recognised out of the box.
    pub mapping: FieldMapping,
    /// Read the source from its beginning, forgetting the position the last
    /// checkpoint recorded (`weft run --reset-source`; not a file key).
    #[serde(skip)]
    pub reset_source: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: 1024,
            lateness_ms: 5_000,
            idle_ms: 1_000,
            dedup_horizon_ms: 24 * 3_600_000,
            checkpoint_interval_ms: 5_000,
            checkpoint_events: 500_000,
            quarantine_after: 3,
            quarantine_window: 20,
            max_future_ms: 300_000,
            max_cpu_ms: 5_000,
            max_memory_mib: 2_048,
            rejected_raw_limit: 64 << 10,
            mapping: FieldMapping::default(),
            reset_source: false,
        }
    }
}

impl Settings {
    /// The most a plugin's limits may ask for.
    pub fn max_limits(&self) -> Limits {
        Limits {
            cpu_ms: self.max_cpu_ms,
            memory_mib: self.max_memory_mib,
        }
    }
}

/// One plugin instance of the pipeline.
#[derive(Clone)]
pub struct PluginSpec {
    pub name: String,
    pub wasm: Arc<[u8]>,
    /// The instance's config, passed to `init` as JSON.
    pub config: serde_json::Value,
    pub limits: Limits,
    /// Where it is configured: weft.toml (or the defaults), or the plugin
    /// directory.
    pub origin: Origin,
    /// The role its manifest expects, if it says.
    pub role: Option<Role>,
}

/// Message counters, kept in checkpoints so they survive restarts exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Every message read, good or bad.
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

/// Locks a mutex; a panic elsewhere must not take the host down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Pipeline {
    settings: Settings,
    source: Box<dyn Source>,
    normalizer: Normalizer,
    reorder: Reorder,
    dedup: Dedup,
    counters: Counters,
    /// Next offset to read per partition: everything before was read.
    offsets: Offsets,
    /// Rejected messages since the last checkpoint, keyed by their sequence
    /// number (the rejected count), so a replay after a crash rewrites the
    /// same keys.
    rejected: Vec<(u64, Rejected)>,
    builder: BatchBuilder,
    /// Stages first (in their configured order), then metrics.
    slots: Vec<Arc<PluginSlot>>,
    stage_count: usize,
    /// Per slot: the successful calls since the last checkpoint.
    journals: Vec<Vec<Journaled>>,
    /// Per slot: the outcomes of its recent calls.
    records: Vec<Record>,
    /// Dead letters since the last checkpoint: (plugin, sequence, record).
    dead: Vec<(String, u64, DeadLetter)>,
    /// Dead letters replayed since the last checkpoint: (plugin, sequence).
    replayed: Vec<(String, u64)>,
    /// The last dead-letter sequence number of plugins not loaded now.
    dead_letter_seq: BTreeMap<String, u64>,
    /// Lifecycle changes: arriving, and waiting for the next checkpoint.
    requests: mpsc::Receiver<Request>,
    pending: Vec<Request>,
    /// Finishes applied changes off the pipeline thread.
    recorder: mpsc::Sender<lifecycle::Aftermath>,
    shared: Arc<Shared>,
    polled: Vec<Message>,
    source_running: bool,
    last_message: Instant,
    last_checkpoint: Instant,
    /// Messages read since the last checkpoint.
    unsaved: u64,
    /// A call could not finish for a reason not the plugin's (the host is
    /// stopping, its state could not be read): nothing of this step may be
    /// checkpointed, and the pipeline stops with it.
    halted: Option<weft_runtime::Error>,
}

impl Pipeline {
    /// Loads the plugins, restores the last checkpoint and positions the
    /// source after it.
    pub fn open(
        settings: Settings,
        mut source: Box<dyn Source>,
        plugins: Vec<PluginSpec>,
        store: Store,
        runtime: &Runtime,
    ) -> Result<Self, PipelineError> {
        let mut meta: Meta = match store.meta()? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(PipelineError::Meta)?,
            None => Meta::default(),
        };
        if settings.reset_source && !meta.offsets.is_empty() {
            tracing::warn!(offsets = ?meta.offsets, "--reset-source: reading the source from its beginning; plugin state, counters and the watermark are kept (events older than the watermark are rejected as late).");
            meta.offsets.clear();
            meta.source = None;
        }
        let dedup = Dedup::new(
            store.dedup_records()?,
            meta.reorder
                .watermark
                .map(|w| w.saturating_sub(settings.dedup_horizon_ms)),
        );
        source.resume(&meta.offsets, meta.source.as_ref())?;

        let mut slots = Vec::new();
        if let Some(bad) = plugins.iter().find(|p| !lifecycle::valid_name(&p.name)) {
            return Err(lifecycle::LifecycleError::BadName(bad.name.clone()).into());
        }
        for spec in lifecycle::resolve(&store, plugins)? {
            if slots.iter().any(|s: &Arc<PluginSlot>| s.name == spec.name) {
                return Err(PipelineError::DuplicatePlugin(spec.name));
            }
            if let Err(detail) = spec.limits.within(&settings.max_limits()) {
                let name = spec.name;
                return Err(lifecycle::LifecycleError::BadLimits { name, detail }.into());
            }
            let module = runtime.load(&spec.name, &spec.wasm)?;
            if let Some(declared) = spec.role.filter(|&r| r != module.role()) {
                return Err(lifecycle::LifecycleError::RoleMismatch {
                    name: spec.name,
                    declared,
                    actual: module.role(),
                }
                .into());
            }
            let config = spec.config.to_string();
            let plugin = Plugin::start(
                runtime,
                &spec.name,
                &module,
                store.plugin_state(&spec.name),
                &config,
                spec.limits,
            )?;
            tracing::info!(plugin = %spec.name, role = %module.role(), digest = %module.digest, "Plugin loaded.");
            let stats = PluginStats {
                digest: module.digest.clone(),
                loaded_at: now_ms(),
                dead_letters: store.count_dead_letters(&spec.name)?,
                dead_letter_seq: meta.dead_letters.get(&spec.name).copied().unwrap_or(0),
                quarantined: meta.quarantined.get(&spec.name).cloned(),
                ..PluginStats::default()
            };
            slots.push(Arc::new(PluginSlot::new(
                spec.name,
                module.role(),
                plugin,
                stats,
            )));
        }
        // Stages run first; the sort is stable, so each role keeps its order.
        slots.sort_by_key(|s| s.role != Role::Stage);
        let stage_count = slots.iter().filter(|s| s.role == Role::Stage).count();

        let telemetry = Telemetry::new()?;
        let c = &meta.counters;
        telemetry.received.inc_by(c.received);
        telemetry.accepted.inc_by(c.accepted);
        telemetry.rejected_any.inc_by(c.rejected);
        telemetry.duplicate.inc_by(c.duplicates);
        for (reason, n) in &c.rejected_by_reason {
            telemetry
                .rejected
                .with_label_values(&[reason.as_str()])
                .inc_by(*n);
        }
        let reorder = Reorder::new(settings.lateness_ms, meta.reorder);
        if let Some(w) = reorder
            .watermark()
            .filter(|&w| w > (now_ms() as i64).saturating_add(settings.max_future_ms))
        {
            tracing::error!(
                watermark = w,
                "The checkpointed watermark is ahead of the wall clock (an event dated in the future moved it, before weft bounded event times): every event older is rejected as late. Start with a new data directory to reprocess."
            );
        }
        let status = Status {
            events: meta.counters.clone(),
            watermark: reorder.watermark(),
            buffered: reorder.len(),
            last_checkpoint: None,
            source: source.describe(),
            source_running: true,
            health: Health::default(),
        };
        if meta.counters.received > 0 {
            tracing::info!(received = meta.counters.received, offsets = ?meta.offsets, "Resumed from the last checkpoint.");
        }
        let journals = slots.iter().map(|_| Vec::new()).collect();
        let records = vec![Record::default(); slots.len()];
        let (requests_tx, requests) = mpsc::channel();
        let shared = Arc::new(Shared {
            plugins: RwLock::new(slots.clone()),
            status: Mutex::new(status),
            store,
            telemetry,
            runtime: runtime.clone(),
            max_limits: settings.max_limits(),
            loading: Mutex::default(),
            requests: Mutex::new(requests_tx),
        });
        Ok(Pipeline {
            normalizer: Normalizer::new(settings.mapping.clone()),
            settings,
            source,
            reorder,
            dedup,
            counters: meta.counters,
            offsets: meta.offsets,
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
            recorder: lifecycle::spawn_recorder(shared.store.clone())
                .map_err(PipelineError::Thread)?,
            shared,
            polled: Vec::new(),
            source_running: true,
            last_message: Instant::now(),
            last_checkpoint: Instant::now(),
            unsaved: 0,
            halted: None,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs until `stop` is set, then writes a last checkpoint.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), PipelineError> {
        while !stop.load(Ordering::Relaxed) {
            self.step()?;
        }
        self.checkpoint()?;
        tracing::info!("Pipeline stopped after a final checkpoint.");
        Ok(())
    }

    /// One round: poll the source, process what the watermark releases,
    /// checkpoint when due.
    pub fn step(&mut self) -> Result<(), PipelineError> {
        let poll_timeout = Duration::from_millis(50);
        self.pending.extend(self.requests.try_iter());
        // A failed query leaves its instance unusable: restart it now, so the
        // next query is answered even when no events come.
        for i in 0..self.slots.len() {
            if lock(&self.slots[i].stats).quarantined.is_none() {
                self.recover_if_poisoned(i);
            }
        }
        let watermark_before = self.reorder.watermark();
        if self.source_running {
            self.polled.clear();
            let mut polled = std::mem::take(&mut self.polled);
            self.source_running =
                self.source
                    .poll(&mut polled, self.settings.batch_size, poll_timeout)?;
            if !polled.is_empty() {
                self.last_message = Instant::now();
            }
            // The watermark moves after every message, so whether an event is
            // late does not depend on where a poll began. A partition whose
            // last messages are in this poll is caught up only once they are
            // all admitted (below), not while others' messages come first.
            let partitions = self.source.partitions();
            let mut caught_up = self.source.caught_up().clone();
            for message in &polled {
                caught_up.remove(&message.partition);
            }
            // The wall clock when these were received bounds how far ahead
            // of it an event may be dated.
            let received = now_ms() as i64;
            for message in polled.drain(..) {
                self.admit(message, received);
                self.reorder.advance(&partitions, &caught_up, false);
            }
            self.polled = polled;
            if !self.source_running {
                tracing::info!("The source has ended; results stay served.");
            }
        } else {
            std::thread::park_timeout(poll_timeout);
        }

        // Release everything once the source has nothing more to give: ended,
        // or every partition read to its end and quiet for `idle_ms`.
        let partitions = self.source.partitions();
        let caught_up = self.source.caught_up();
        let quiet = !partitions.is_empty()
            && partitions.is_subset(caught_up)
            && self.last_message.elapsed() >= Duration::from_millis(self.settings.idle_ms);
        self.reorder
            .advance(&partitions, caught_up, quiet || !self.source_running);
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
        // Lifecycle changes wait for the next checkpoint (at once when
        // nothing is waiting to be saved), so they find every plugin's state
        // durable and its journal empty.
        let change = !self.pending.is_empty() && (due || self.unsaved == 0);
        if self.unsaved > 0 && (due || !self.source_running) || change {
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
    fn run_from(&mut self, start: usize, mut batch: Arc<Batch>) {
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
        self.shared.telemetry.watermark.set(watermark);
        for i in 0..self.slots.len() {
            self.call(i, Call::Tick(watermark));
        }
    }

    /// Shows the HTTP layer the instances now running.
    fn publish_slots(&self) {
        *self
            .shared
            .plugins
            .write()
            .unwrap_or_else(|p| p.into_inner()) = self.slots.clone();
    }

    fn publish_status(&mut self) {
        let source = self.source.describe();
        let telemetry = &self.shared.telemetry;
        let mut health = Health::default();
        for slot in &self.slots {
            let stats = lock(&slot.stats);
            let quarantined = telemetry
                .quarantined
                .with_label_values(&[slot.name.as_str()]);
            quarantined.set(i64::from(stats.quarantined.is_some()));
            if let Some(reason) = &stats.quarantined {
                health
                    .problems
                    .push(Problem::quarantined(slot, &stats, reason));
            }
        }
        health.degraded = !health.problems.is_empty();
        telemetry.degraded.set(i64::from(health.degraded));
        if let Some(lag) = source.get("lag").and_then(|l| l.as_i64()) {
            telemetry.source_lag.set(lag);
        }
        telemetry.buffered.set(self.reorder.len() as i64);
        let mut status = lock(&self.shared.status);
        status.events = self.counters.clone();
        status.watermark = self.reorder.watermark();
        status.buffered = self.reorder.len();
        status.source = source;
        status.source_running = self.source_running;
        status.health = health;
    }
}
