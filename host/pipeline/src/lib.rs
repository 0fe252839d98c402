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
//! Layout:
//! - [`reorder`]: the event-time buffer and watermark;
//! - [`dedup`]: accepted event ids within the dedup horizon;
//! - [`isolation`]: journals, dead letters and quarantine of failing plugins;
//! - [`lifecycle`]: loading, swapping, unloading and rolling back plugins
//!   while events flow;
//! - [`telemetry`]: Prometheus metrics.

pub mod dedup;
pub mod isolation;
pub mod lifecycle;
pub mod reorder;
pub mod telemetry;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use weft_normalize::{FieldMapping, Normalizer};
use weft_runtime::{Batch, BatchBuilder, Limits, Plugin, Role, Runtime, StageOutput};
use weft_source::{Identity, Message, Offsets, Source};
use weft_state::{Checkpoint, Rejected, Store};

use crate::{
    dedup::Dedup,
    isolation::{DeadLetter, Journaled, Record},
    lifecycle::{Origin, Request},
    reorder::{Held, Reorder, ReorderState},
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

/// The last checkpoint, for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    /// Wall-clock time it was written, epoch ms.
    pub at: u64,
    pub duration_ms: f64,
    pub offsets: Offsets,
}

/// What `GET /api/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub events: Counters,
    pub watermark: Option<i64>,
    /// Accepted events waiting for the watermark.
    pub buffered: usize,
    pub last_checkpoint: Option<CheckpointInfo>,
    pub source: serde_json::Value,
    /// False once a finite source (file, stdin) has been read to its end.
    pub source_running: bool,
    /// Whether every part of the pipeline does its work, and what does not.
    pub health: Health,
}

/// What keeps the pipeline from doing all of its work, if anything.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// True while events are kept from some plugin (a quarantine).
    pub degraded: bool,
    pub problems: Vec<Problem>,
}

/// One thing wrong with the pipeline, said so that a user can act on it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The plugin concerned, if one is.
    pub plugin: Option<String>,
    /// What is wrong.
    pub what: String,
    /// What it does to the events and the answers.
    pub effect: String,
    /// The way out.
    pub fix: String,
}

impl Problem {
    /// A quarantined plugin, its effect on the data and the way out.
    fn quarantined(slot: &PluginSlot, stats: &PluginStats, reason: &str) -> Self {
        let name = &slot.name;
        let effect = match slot.role {
            Role::Stage => format!(
                "every batch is dead-lettered at this stage, so no metric receives events ({} batches in its dead letters)",
                stats.dead_letters
            ),
            Role::Metric => format!(
                "its batches go to its dead letters ({} so far) and its answers miss them",
                stats.dead_letters
            ),
        };
        Problem {
            plugin: Some(name.clone()),
            what: format!("plugin `{name}` is quarantined: {reason}"),
            effect,
            fix: format!(
                "fix the cause (raise its limits in weft.toml and restart weft, or load a fixed version with PUT /api/plugins/{name}), or restart this version from its checkpoint with POST /api/plugins/{name}/reload (admin token; `cpu_ms`, `memory_mib` and `config` may change); then POST /api/plugins/{name}/replay-dead-letters"
            ),
        }
    }
}

/// Per-plugin counters for `GET /api/plugins`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PluginStats {
    /// The running version.
    pub digest: String,
    /// When it was loaded, epoch ms.
    pub loaded_at: u64,
    /// Why the last load, swap or rollback failed (the old version runs on).
    pub reload_error: Option<String>,
    /// How long the pipeline waited for the last swap, in ms.
    pub last_swap_pause_ms: Option<f64>,
    pub events_in: u64,
    pub batches: u64,
    pub errors: u64,
    pub busy_seconds: f64,
    /// Whether the last call failed.
    pub failing: bool,
    pub last_error: Option<String>,
    /// Fresh instances made after failures.
    pub restarts: u64,
    /// Batches kept in the plugin's dead letters.
    pub dead_letters: u64,
    /// The sequence number of its last dead letter.
    pub dead_letter_seq: u64,
    /// Why the plugin is quarantined, if it is.
    pub quarantined: Option<String>,
    /// Queries that trapped or ran out of a limit (not those it declined).
    pub query_errors: u64,
    pub last_query_error: Option<String>,
}

/// One plugin instance, shared between the pipeline and the HTTP layer.
pub struct PluginSlot {
    pub name: String,
    pub role: Role,
    pub plugin: Mutex<Plugin>,
    pub stats: Mutex<PluginStats>,
    /// Signalled when the pipeline has restarted the instance after a
    /// failure, for a query waiting to be answered.
    recovered: Condvar,
}

impl PluginSlot {
    pub(crate) fn new(name: String, role: Role, plugin: Plugin, stats: PluginStats) -> Self {
        PluginSlot {
            name,
            role,
            plugin: Mutex::new(plugin),
            stats: Mutex::new(stats),
            recovered: Condvar::new(),
        }
    }
}

/// How long a query waits for the pipeline to restart an instance that an
/// earlier failed query left unusable (the pipeline looks every 50 ms).
const RECOVERY_WAIT: Duration = Duration::from_secs(5);

/// What the HTTP layer sees of a running pipeline.
pub struct Shared {
    /// The running instances: stages first, then metrics.
    plugins: RwLock<Vec<Arc<PluginSlot>>>,
    pub status: Mutex<Status>,
    pub store: Store,
    pub telemetry: Telemetry,
    runtime: Runtime,
    /// The most any plugin's limits may ask for.
    max_limits: Limits,
    /// Loads in progress (compiling, checking, trying `init`), by name.
    loading: Mutex<BTreeMap<String, lifecycle::LoadingView>>,
    /// Lifecycle changes for the pipeline thread.
    requests: Mutex<mpsc::Sender<Request>>,
}

impl Shared {
    pub fn plugins(&self) -> Vec<Arc<PluginSlot>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn plugin(&self, name: &str) -> Option<Arc<PluginSlot>> {
        self.plugins().into_iter().find(|p| p.name == name)
    }

    /// The loads in progress, by instance name.
    pub fn loading(&self) -> BTreeMap<String, lifecycle::LoadingView> {
        lock(&self.loading).clone()
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Asks metric `slot` a query. A query that traps or runs out of a
    /// limit leaves the instance unusable: it is counted, and the pipeline
    /// restarts the instance from its checkpoint (replaying what it saw
    /// since), which the next query waits for.
    pub fn query(
        &self,
        slot: &PluginSlot,
        params: &[(String, String)],
    ) -> Result<String, weft_runtime::Error> {
        let plugin = lock(&slot.plugin);
        let (mut plugin, _) = slot
            .recovered
            .wait_timeout_while(plugin, RECOVERY_WAIT, |p| p.is_poisoned())
            .unwrap_or_else(|p| p.into_inner());
        let result = plugin.query(params);
        drop(plugin);
        match &result {
            Ok(_) | Err(weft_runtime::Error::Failed { .. }) => {}
            Err(e) => {
                tracing::warn!(plugin = %slot.name, error = %e, "Query failed; the instance is restarted from its checkpoint.");
                self.telemetry
                    .query_errors
                    .with_label_values(&[slot.name.as_str()])
                    .inc();
                let mut stats = lock(&slot.stats);
                stats.query_errors += 1;
                stats.last_query_error = Some(e.to_string());
            }
        }
        result
    }
}

/// Locks a mutex; a panic elsewhere must not take the host down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a checkpoint keeps besides plugin state and dedup ids.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    offsets: Offsets,
    counters: Counters,
    reorder: ReorderState,
    /// The last dead letter's sequence number per plugin.
    #[serde(default)]
    dead_letters: BTreeMap<String, u64>,
    /// Quarantined plugins and why.
    #[serde(default)]
    quarantined: BTreeMap<String, String>,
    /// What the offsets are positions in; `None` in checkpoints written
    /// before weft recorded it.
    #[serde(default)]
    source: Option<Identity>,
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

    /// Normalizes, validates and dedups one message received at wall-clock
    /// time `received` (epoch ms), then buffers it.
    fn admit(&mut self, message: Message, received: i64) {
        let Message {
            payload,
            partition,
            offset,
        } = message;
        if self
            .offsets
            .get(&partition)
            .is_some_and(|&next| offset < next)
        {
            return; // Read before the last checkpoint already.
        }
        self.offsets.insert(partition, offset + 1);
        self.counters.received += 1;
        self.unsaved += 1;
        let telemetry = &self.shared.telemetry;
        telemetry.received.inc();
        let event = match self.normalizer.normalize(&payload) {
            Ok(event) => event,
            Err(rejection) => {
                return self.reject(
                    rejection.reason.code(),
                    rejection.detail,
                    partition,
                    offset,
                    payload,
                );
            }
        };
        let ahead = event.time.saturating_sub(received);
        if ahead > self.settings.max_future_ms {
            let detail = format!(
                "event time {} is {ahead} ms ahead of the time it was received ({received}); at most {} ms ahead is accepted (max_future_ms)",
                event.time, self.settings.max_future_ms
            );
            return self.reject("future", detail, partition, offset, payload);
        }
        if !event.id.is_empty() && self.dedup.is_known(&event.id) {
            self.counters.duplicates += 1;
            telemetry.duplicate.inc();
            return;
        }
        if self.reorder.is_late(event.time) {
            let watermark = self.reorder.watermark().unwrap_or_default();
            let detail = format!(
                "event time {} is before the watermark {watermark} (allowed lateness {} ms)",
                event.time, self.settings.lateness_ms
            );
            return self.reject("late", detail, partition, offset, payload);
        }
        if !event.id.is_empty() {
            self.dedup.accept(&event.id, event.time);
        }
        self.counters.accepted += 1;
        telemetry.accepted.inc();
        self.reorder.push(Held {
            partition,
            offset,
            event,
        });
    }

    fn reject(&mut self, reason: &str, detail: String, partition: i32, offset: i64, raw: Vec<u8>) {
        self.counters.rejected += 1;
        *self
            .counters
            .rejected_by_reason
            .entry(reason.to_owned())
            .or_default() += 1;
        let telemetry = &self.shared.telemetry;
        telemetry.rejected_any.inc();
        telemetry.rejected.with_label_values(&[reason]).inc();
        tracing::trace!(reason, partition, offset, %detail, "Message rejected.");
        let record = Rejected::keeping(
            reason,
            detail,
            partition,
            offset,
            raw,
            self.settings.rejected_raw_limit,
        );
        self.rejected.push((self.counters.rejected, record));
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
        let result = {
            let mut plugin = lock(&slot.plugin);
            match call {
                Call::Batch(b) if slot.role == Role::Stage => plugin.process(b).map(Some),
                Call::Batch(b) => plugin.ingest(b).map(|()| None),
                Call::Tick(w) => plugin.tick(w).map(|()| None),
            }
        };
        if let Some(b) = batch {
            let elapsed = started.elapsed().as_secs_f64();
            self.shared
                .telemetry
                .plugin_batch
                .with_label_values(&[slot.name.as_str()])
                .observe(elapsed);
            let mut stats = lock(&slot.stats);
            stats.batches += 1;
            stats.events_in += b.events.len() as u64;
            stats.busy_seconds += elapsed;
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
    fn recover_if_poisoned(&mut self, i: usize) -> bool {
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
    fn fail(&mut self, i: usize, batch: Option<&Arc<Batch>>, error: weft_runtime::Error) {
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
                tracing::error!(plugin = %slot.name, %reason, "Stage quarantined: every batch is dead-lettered here and NO METRIC RECEIVES EVENTS until it is reloaded (see `health` in /api/status for the way out).")
            }
            Role::Metric => {
                tracing::error!(plugin = %slot.name, %reason, "Plugin quarantined: its batches go to its dead letters until it is reloaded (see `health` in /api/status for the way out).")
            }
        }
        lock(&slot.stats).quarantined = Some(reason);
    }

    fn dead_letter(&mut self, i: usize, batch: &Batch, error: String) {
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

    /// Shows the HTTP layer the instances now running.
    fn publish_slots(&self) {
        *self
            .shared
            .plugins
            .write()
            .unwrap_or_else(|p| p.into_inner()) = self.slots.clone();
    }

    /// Writes all state and the source position atomically, then commits
    /// the offsets to the source.
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
                    tracing::error!(plugin = %slot.name, %reason, "Plugin quarantined; batches since the last checkpoint are in its dead letters.");
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
            offsets: self.offsets.clone(),
            counters: self.counters.clone(),
            reorder: self.reorder.state(),
            dead_letters: dead_letter_seq,
            source: Some(self.source.identity()),
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
        self.shared.store.checkpoint(checkpoint)?;
        drop(guards);
        for journal in &mut self.journals {
            journal.clear();
        }
        if let Err(e) = self.source.commit(&self.offsets) {
            tracing::warn!(error = %e, "Committing offsets to the source failed; the checkpoint holds them.");
        }
        let elapsed = started.elapsed();
        self.shared
            .telemetry
            .checkpoint
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            messages = self.unsaved,
            writes,
            ms = elapsed.as_secs_f64() * 1e3,
            "Checkpoint written."
        );
        self.unsaved = 0;
        self.last_checkpoint = Instant::now();
        lock(&self.shared.status).last_checkpoint = Some(CheckpointInfo {
            at: now_ms(),
            duration_ms: elapsed.as_secs_f64() * 1e3,
            offsets: self.offsets.clone(),
        });
        Ok(())
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

/// Restarts `plugin` (of `slot`) and replays `journal` into it.
fn restart_and_replay(
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
fn halts(e: &weft_runtime::Error) -> bool {
    matches!(
        e,
        weft_runtime::Error::Interrupted { .. } | weft_runtime::Error::State { .. }
    )
}

/// The pipeline's error for a call that [`halts`] it.
fn halt(e: weft_runtime::Error) -> PipelineError {
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

fn failed(telemetry: &Telemetry, slot: &PluginSlot, error: &weft_runtime::Error) {
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
