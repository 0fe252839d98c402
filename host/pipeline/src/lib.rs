//! weft's pipeline: the way every event takes.
//!
//! source → route to a partition → normalize → dedup → event-time order →
//! stage plugins → metric plugins. The input is split into partitions (a
//! Kafka topic's own; for file, stdin and demo sources `partitions` virtual
//! ones, chosen by a hash of the user, so a user's events, and sessions,
//! stay in one). A partition is the unit of state: its plugin instances,
//! dedup ids, reorder buffer, counters and offsets are checkpointed together
//! in one atomic write. After a crash every partition resumes from its last
//! checkpoint and the source is re-read from the earliest: nothing is lost
//! and nothing counted twice.
//!
//! Threads: the reader (the caller of [`Pipeline::run`]) owns the source and
//! routes messages (reading their user when the partition is the user's); `workers`
//! threads each own the partitions `p % workers`, normalize their messages
//! and step them. Plugin instances sit behind
//! mutexes in [`Shared`] so the HTTP layer can query them between batches.
//!
//! Layout (this file: the settings, the pipeline, the reader and workers):
//! - [`partition`]: one partition and its step;
//! - [`admit`]: a message to an accepted, duplicate or rejected event;
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
pub mod group;
pub mod isolation;
pub mod lifecycle;
pub(crate) mod partition;
pub mod reorder;
pub mod shared;
pub mod telemetry;

pub use shared::{
    CheckpointInfo, Health, PartitionPluginInfo, PartitionStatus, PluginInfo, PluginSlot,
    PluginStats, Problem, QueryError, Shared, Status,
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
use weft_runtime::{Limits, Role, Runtime};
use weft_source::{Identity, Message, Offsets, Source};
use weft_state::{Part, Store};

use crate::{
    lifecycle::Origin,
    partition::{Committed, Input, Partition},
    shared::{Running, SourceView},
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
    #[error(
        "this data directory splits its input {was}; this run would split it {now}. State is kept per partition, so users' state would be in the wrong partitions: keep the split (`partitions` in [pipeline]), or start with a new data directory"
    )]
    Layout { was: String, now: String },
    #[error("a Kafka source needs its consumer group joined (`Pipeline::join`)")]
    NoGroup,
    #[error("`partitions` must be between 1 and 4096, not {0}")]
    Partitions(u32),
    #[error(
        "partition {0} was taken by another host while this one still held it (this host stalled past the group's session timeout); this host drops it, and its new owner goes on from the changelog"
    )]
    Fenced(Part),
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
    /// How many partitions a file, stdin or demo source is split into, by a
    /// hash of the user (a Kafka topic's partitions are its own). Answers do
    /// not depend on it; it bounds how many workers can share the work, and
    /// each partition costs an instance of every plugin. Fixed for a data
    /// directory once used.
    pub partitions: u32,
    /// Worker threads stepping the partitions (`--workers`, `WEFT_WORKERS`);
    /// by default one per core.
    pub workers: usize,
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
            partitions: 8,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
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

/// How a source's messages are split into partitions; recorded in the data
/// directory, which must keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Layout {
    /// A Kafka topic's own partitions.
    Kafka,
    /// This many partitions, by a hash of the user.
    Hashed(u32),
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::Kafka => f.write_str("by its Kafka partitions"),
            Layout::Hashed(n) => write!(f, "into {n} partitions by user"),
        }
    }
}

impl Layout {
    /// The partition a message goes to: a Kafka message's own; otherwise
    /// its user's, or, when it has none (it is rejected), one by position.
    /// `user` is the message's user, found when the layout needs it.
    fn route(self, message: &Message, user: Option<&str>) -> Part {
        match (self, user) {
            (Layout::Kafka, _) => message.partition as Part,
            (Layout::Hashed(n), Some(user)) => partition_of(user, n),
            (Layout::Hashed(n), None) => (message.offset.unsigned_abs() % u64::from(n)) as Part,
        }
    }
}

/// The partition of `user` among `n`: what Kafka's default partitioner
/// picks for the key `user` (murmur2), so a file split into as many
/// partitions as a topic keyed by user puts every user where the topic does.
pub fn partition_of(user: &str, n: u32) -> Part {
    (murmur2::murmur2(user.as_bytes(), murmur2::KAFKA_SEED) & 0x7fff_ffff) % n
}

/// How long the reader waits for the source, and a worker for work.
const POLL: Duration = Duration::from_millis(50);

/// Work items a worker's queue holds before the reader waits.
const WORK_QUEUE: usize = 64;

/// What the reader (or the rebalance owner) hands a worker.
pub(crate) enum Work {
    Input(Part, Input),
    /// A partition opened after the start (a Kafka partition assigned).
    Adopt(Box<Partition>),
    /// A partition taken away: process what it was handed, checkpoint it,
    /// close it, then say so.
    Release(Part, mpsc::Sender<()>),
}

pub struct Pipeline {
    settings: Settings,
    layout: Layout,
    source: Box<dyn Source>,
    normalizer: Normalizer,
    shared: Arc<Shared>,
    /// The partitions opened at the start, until `run` hands them to their
    /// workers.
    opened: Vec<Partition>,
    commits_tx: mpsc::Sender<Committed>,
    commits: mpsc::Receiver<Committed>,
}

impl Pipeline {
    /// Loads the plugins, restores every partition's last checkpoint and
    /// positions the source after what all of them have.
    pub fn open(
        settings: Settings,
        mut source: Box<dyn Source>,
        plugins: Vec<PluginSpec>,
        store: Store,
        runtime: &Runtime,
    ) -> Result<Self, PipelineError> {
        if !(1..=4096).contains(&settings.partitions) {
            return Err(PipelineError::Partitions(settings.partitions));
        }
        let layout = match source.identity() {
            Identity::Kafka { .. } => Layout::Kafka,
            _ => Layout::Hashed(settings.partitions),
        };
        match store.layout()? {
            Some(bytes) => {
                let was: Layout = serde_json::from_slice(&bytes).map_err(PipelineError::Meta)?;
                if was != layout {
                    return Err(PipelineError::Layout {
                        was: was.to_string(),
                        now: layout.to_string(),
                    });
                }
            }
            None => store.set_layout(&serde_json::to_vec(&layout).map_err(PipelineError::Meta)?)?,
        }
        let running = load_plugins(&settings, plugins, &store, runtime)?;
        let workers = settings.workers.max(1);
        let shared = Arc::new(Shared {
            partitions: RwLock::default(),
            running: Mutex::new(running),
            source: Mutex::new(SourceView {
                describe: source.describe(),
                running: true,
                unkeyed: 0,
            }),
            workers,
            store,
            telemetry: Telemetry::new()?,
            runtime: runtime.clone(),
            max_limits: settings.max_limits(),
            loading: Mutex::default(),
            group: std::sync::OnceLock::new(),
        });
        // A Kafka partition is opened when the group assigns it here
        // (`group::Owner`), after its state is made current.
        let parts: Vec<Part> = match layout {
            Layout::Hashed(n) => (0..n).collect(),
            Layout::Kafka => Vec::new(),
        };
        let (commits_tx, commits) = mpsc::channel();
        let mut opened = Vec::with_capacity(parts.len());
        let mut resumes = Vec::with_capacity(parts.len());
        for part in parts {
            let (partition, resume) =
                Partition::open(part, &settings, &shared, commits_tx.clone())?;
            shared.adopt(&partition.view);
            opened.push(partition);
            resumes.push(resume);
        }
        let (offsets, last) = combine(layout, resumes)?;
        if settings.reset_source {
            tracing::warn!(
                "--reset-source: reading the source from its beginning; plugin state, counters and the watermarks are kept (events older than a watermark are rejected as late)."
            );
        }
        source.resume(&offsets, last.as_ref())?;
        let received: u64 = opened.iter().map(|p| p.counters.received).sum();
        if received > 0 {
            tracing::info!(received, offsets = ?offsets, partitions = opened.len(), "Resumed from the last checkpoints.");
        }
        Ok(Pipeline {
            normalizer: Normalizer::new(settings.mapping.clone()),
            settings,
            layout,
            source,
            shared,
            opened,
            commits_tx,
            commits,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Joins the Kafka consumer group whose topics `group` reaches, as
    /// member `me`, reachable by other hosts at `url`: partitions are taken
    /// and handed over as the group assigns them, their state through the
    /// group's changelog. A Kafka source needs this before it runs.
    pub fn join(self, group: weft_source::Group, name: &str, me: &str, url: &str) -> Self {
        let membership = group::Membership::new(group, name.into(), me.into(), url.into());
        if self.shared.group.set(membership).is_err() {
            tracing::warn!("The pipeline joined its group already.");
        }
        self
    }

    /// Runs the pipeline on a thread of its own until [`Started::stop`].
    pub fn start(self) -> Result<Started, PipelineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("weft-reader".into())
                .spawn(move || self.run(&stop))
                .map_err(PipelineError::Thread)?
        };
        Ok(Started {
            stop,
            thread,
            shared,
        })
    }

    /// Runs until `stop` is set (or a worker fails), then has every
    /// partition write a last checkpoint.
    pub fn run(self, stop: &AtomicBool) -> Result<(), PipelineError> {
        let Pipeline {
            settings,
            layout,
            mut source,
            normalizer,
            shared,
            opened,
            commits_tx,
            commits,
        } = self;
        let workers = shared.workers;
        let mut owned: Vec<Vec<Partition>> = (0..workers).map(|_| Vec::new()).collect();
        for partition in opened {
            owned[partition.part as usize % workers].push(partition);
        }
        if layout == Layout::Kafka && shared.group.get().is_none() {
            return Err(PipelineError::NoGroup);
        }
        let mut queues = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for (w, partitions) in owned.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(WORK_QUEUE);
            let handle = std::thread::Builder::new()
                .name(format!("weft-worker-{w}"))
                .spawn({
                    let normalizer = Normalizer::new(settings.mapping.clone());
                    move || work(partitions, rx, normalizer)
                })
                .map_err(PipelineError::Thread)?;
            queues.push(tx);
            handles.push(handle);
        }
        let router = Arc::new(group::Router {
            queues: Mutex::new(queues),
            open: Mutex::new(shared.part_ids().into_iter().collect()),
        });
        source.set_rebalance(Box::new(group::Owner {
            settings: settings.clone(),
            shared: shared.clone(),
            router: router.clone(),
            commits: commits_tx.clone(),
            identity: source.identity(),
        }));
        let members = match shared.group.get() {
            Some(_) => Some(group::Membership::announce(&shared)?),
            None => None,
        };
        let mut reader = Reader {
            settings: &settings,
            layout,
            shared: &shared,
            router: &router,
            sent: BTreeMap::new(),
            next: Offsets::new(),
        };
        let result = reader.run(&mut *source, &normalizer, &commits, stop, &handles);
        // Dropping the queues tells every worker to checkpoint and stop.
        lock(&router.queues).clear();
        let mut error = result.err();
        for handle in handles {
            let outcome = handle.join().unwrap_or(Err(PipelineError::Panicked));
            if let Err(e) = outcome {
                tracing::error!(error = %e, "A pipeline worker failed.");
                error.get_or_insert(e);
            }
        }
        for committed in commits.try_iter() {
            commit(&mut *source, &committed);
        }
        // Leaving the group hands over nothing more: every partition has
        // written its last checkpoint.
        drop(source);
        if let (Some(m), Some(members)) = (shared.group.get(), members) {
            m.stop.store(true, Ordering::Relaxed);
            let _ = members.join();
        }
        match error {
            Some(e) => Err(e),
            None => {
                tracing::info!("Pipeline stopped after a final checkpoint of every partition.");
                Ok(())
            }
        }
    }
}

/// A pipeline running on its own thread ([`Pipeline::start`]).
pub struct Started {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), PipelineError>>,
    pub shared: Arc<Shared>,
}

impl Started {
    /// Whether it has stopped by itself (a failure).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Whether the source has ended and every partition has processed and
    /// checkpointed what it was handed.
    pub fn is_done(&self) -> bool {
        let status = self.shared.status();
        !status.source_running && status.buffered == 0
    }

    /// Stops it after a last checkpoint of every partition.
    pub fn stop(self) -> Result<(), PipelineError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(Err(PipelineError::Panicked))
    }
}

/// Checks, compiles and orders the configured plugins (stages first, each
/// role in its configured order).
fn load_plugins(
    settings: &Settings,
    plugins: Vec<PluginSpec>,
    store: &Store,
    runtime: &Runtime,
) -> Result<Vec<Running>, PipelineError> {
    if let Some(bad) = plugins.iter().find(|p| !lifecycle::valid_name(&p.name)) {
        return Err(lifecycle::LifecycleError::BadName(bad.name.clone()).into());
    }
    let mut running: Vec<Running> = Vec::new();
    for spec in lifecycle::resolve(store, plugins)? {
        if running.iter().any(|r| r.name == spec.name) {
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
        tracing::info!(plugin = %spec.name, role = %module.role(), digest = %module.digest, "Plugin loaded.");
        running.push(Running {
            name: spec.name,
            module,
            config: spec.config,
            limits: spec.limits,
        });
    }
    // Stages run first; the sort is stable, so each role keeps its order.
    running.sort_by_key(|r| r.module.role() != Role::Stage);
    Ok(running)
}

/// Where to position the source so that every partition gets what it has
/// not checkpointed: a Kafka partition's own offset; for partitions by
/// user (all reading the same input), the earliest any of them needs.
fn combine(
    layout: Layout,
    resumes: Vec<partition::Resume>,
) -> Result<(Offsets, Option<Identity>), PipelineError> {
    // Partitions that checkpointed at different times may have recorded
    // more or less of a file's or stdin's first bytes: the longest is the
    // strictest check.
    let mut last: Option<Identity> = None;
    for r in &resumes {
        let Some(b) = &r.source else { continue };
        last = match last {
            None => Some(b.clone()),
            Some(a) if a == *b => Some(a),
            Some(a) => match (a.prefix_len(), b.prefix_len()) {
                (Some(x), Some(y)) if a.same_place(b) => Some(if y > x { b.clone() } else { a }),
                _ => return Err(a.changed(b).into()),
            },
        };
    }
    let offsets = match layout {
        Layout::Kafka => resumes.into_iter().flat_map(|r| r.offsets).collect(),
        Layout::Hashed(_) => {
            let mut all = resumes.into_iter();
            let first = all.next().map(|r| r.offsets).unwrap_or_default();
            all.fold(first, |acc, r| {
                acc.into_iter()
                    .filter_map(|(p, a)| r.offsets.get(&p).map(|&b| (p, a.min(b))))
                    .collect()
            })
        }
    };
    Ok((offsets, last))
}

fn commit(source: &mut dyn Source, committed: &Committed) {
    if let Err(e) = source.commit(&committed.offsets) {
        tracing::warn!(error = %e, "Committing offsets to the source failed; the checkpoint holds them.");
    }
}

/// The reader: polls the source, normalizes, routes each message to its
/// partition's worker and tells every partition how far the source is read.
struct Reader<'a> {
    settings: &'a Settings,
    layout: Layout,
    shared: &'a Arc<Shared>,
    router: &'a group::Router,
    /// What each partition was last told: (caught up, running).
    sent: BTreeMap<Part, (bool, bool)>,
    /// Next offset per source partition, after everything read.
    next: Offsets,
}

impl Reader<'_> {
    fn run(
        &mut self,
        source: &mut dyn Source,
        normalizer: &Normalizer,
        commits: &mpsc::Receiver<Committed>,
        stop: &AtomicBool,
        workers: &[std::thread::JoinHandle<Result<(), PipelineError>>],
    ) -> Result<(), PipelineError> {
        let mut polled = Vec::new();
        let mut running = true;
        let mut published = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if workers.iter().any(|w| w.is_finished()) {
                return Ok(()); // Its error comes from joining it.
            }
            for committed in commits.try_iter() {
                commit(source, &committed);
            }
            if running {
                polled.clear();
                running = source.poll(&mut polled, self.settings.batch_size, POLL)?;
                let read = !polled.is_empty();
                // The wall clock when these were received bounds how far
                // ahead of it an event may be dated.
                let received = now_ms() as i64;
                let mut routed: BTreeMap<Part, Vec<Message>> = BTreeMap::new();
                for message in polled.drain(..) {
                    let next = self.next.entry(message.partition).or_insert(0);
                    *next = (*next).max(message.offset + 1);
                    // Partitions by user need the user to route (read
                    // without parsing the rest); the worker normalizes.
                    let user = match self.layout {
                        Layout::Kafka => None,
                        Layout::Hashed(_) => normalizer.user_of(&message.payload),
                    };
                    let part = self.layout.route(&message, user.as_deref());
                    routed.entry(part).or_default().push(message);
                }
                for (part, messages) in routed {
                    if !self.send(part, Input::Messages { received, messages }) {
                        return Ok(());
                    }
                }
                if !self.progress(source, read, running) {
                    return Ok(());
                }
                if !running {
                    tracing::info!("The source has ended; results stay served.");
                }
            } else {
                std::thread::park_timeout(POLL);
            }
            if published.elapsed() >= Duration::from_millis(250) || !running {
                *lock(&self.shared.source) = SourceView {
                    describe: source.describe(),
                    running,
                    unkeyed: self.shared.telemetry.unkeyed.get(),
                };
                published = Instant::now();
            }
        }
        Ok(())
    }

    /// Hands `input` to `part`'s worker; false if it has stopped.
    fn send(&self, part: Part, input: Input) -> bool {
        self.router.send(part, Work::Input(part, input))
    }

    /// Tells every partition how far the source is read, when that changed.
    fn progress(&mut self, source: &dyn Source, read: bool, running: bool) -> bool {
        let assigned = source.partitions();
        let caught_up = source.caught_up();
        let all_caught_up = !assigned.is_empty() && assigned.is_subset(caught_up);
        let identity = source.identity();
        let open = lock(&self.router.open).clone();
        // A partition handed over and taken again starts afresh.
        self.sent.retain(|part, _| open.contains(part));
        if self.layout == Layout::Kafka {
            self.next.retain(|p, _| open.contains(&(*p as Part)));
        }
        for &part in &open {
            let (caught, read_to) = match self.layout {
                Layout::Kafka => {
                    let p = part as i32;
                    let read_to = self.next.get(&p).map(|&n| Offsets::from([(p, n)]));
                    (caught_up.contains(&p), read_to.unwrap_or_default())
                }
                Layout::Hashed(_) => (all_caught_up, self.next.clone()),
            };
            let now = (caught, running);
            let changed = self.sent.get(&part) != Some(&now);
            if !(changed || read && self.layout != Layout::Kafka) {
                continue;
            }
            self.sent.insert(part, now);
            let input = Input::Progress {
                read_to,
                caught_up: caught,
                running,
                identity: identity.clone(),
            };
            if !self.send(part, input) {
                return false;
            }
        }
        true
    }
}

/// A worker: steps the partitions it owns with what the reader handed them,
/// until its queue closes; then checkpoints each one last.
fn work(
    mut partitions: Vec<Partition>,
    queue: mpsc::Receiver<Work>,
    mut normalizer: Normalizer,
) -> Result<(), PipelineError> {
    let mut inboxes: BTreeMap<Part, Vec<Input>> = BTreeMap::new();
    loop {
        let mut closed = false;
        let mut released = Vec::new();
        let mut take = |work: Work, partitions: &mut Vec<Partition>| match work {
            Work::Input(part, input) => inboxes.entry(part).or_default().push(input),
            Work::Adopt(partition) => partitions.push(*partition),
            Work::Release(part, done) => released.push((part, done)),
        };
        match queue.recv_timeout(POLL) {
            Ok(w) => take(w, &mut partitions),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        // What else is queued already, but no more than a queue holds, so
        // the partitions are stepped between.
        for _ in 0..WORK_QUEUE {
            match queue.try_recv() {
                Ok(w) => take(w, &mut partitions),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut fenced = Vec::new();
        for partition in &mut partitions {
            let inputs = inboxes.remove(&partition.part).unwrap_or_default();
            if let Err(e) = partition.step(inputs, &mut normalizer) {
                fenced.push(drop_fenced(e, partition)?);
            }
        }
        partitions.retain(|p| !fenced.contains(&p.part));
        // Inputs left are of partitions dropped: their new owners read them.
        inboxes.clear();
        for (part, done) in released {
            if let Some(at) = partitions.iter().position(|p| p.part == part) {
                let mut partition = partitions.swap_remove(at);
                if let Err(e) = partition.checkpoint() {
                    drop_fenced(e, &partition)?;
                }
            }
            let _ = done.send(());
        }
        if closed {
            for partition in &mut partitions {
                if let Err(e) = partition.checkpoint() {
                    drop_fenced(e, partition)?;
                }
            }
            return Ok(());
        }
    }
}

/// A partition's error that is not the end of the pipeline: another host
/// took it ([`PipelineError::Fenced`]), so this one forgets it; any other
/// error is returned.
fn drop_fenced(e: PipelineError, partition: &Partition) -> Result<Part, PipelineError> {
    let PipelineError::Fenced(part) = e else {
        return Err(e);
    };
    tracing::warn!(partition = part, "{e}");
    partition.shared.forget(part);
    Ok(part)
}
