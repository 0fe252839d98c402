//! What the HTTP layer sees of a running pipeline ([`Shared`]): the status
//! with its health, summed over the partitions and per partition; each
//! plugin instance with its stats (one per partition); queries, asked of
//! every partition and merged; and the lifecycle requests (in
//! [`crate::lifecycle`]).

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, RwLock, mpsc},
    time::Duration,
};

use serde::Serialize;
use weft_runtime::{Limits, Module, Plugin, Role, Runtime};
use weft_source::Offsets;
use weft_state::{Part, Store};

use crate::{
    Counters,
    group::{GroupStatus, Membership, Owners},
    lifecycle::{self, Request},
    lock,
    telemetry::Telemetry,
};

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
    /// Summed over the partitions.
    pub events: Counters,
    /// The lowest partition watermark: every partition has processed all
    /// events before it.
    pub watermark: Option<i64>,
    /// Accepted events waiting for the watermark.
    pub buffered: usize,
    /// The oldest of the partitions' last checkpoints (every partition has
    /// checkpointed since), with the offsets every partition has passed.
    pub last_checkpoint: Option<CheckpointInfo>,
    pub source: serde_json::Value,
    /// False once a finite source (file, stdin) has been read to its end and
    /// every partition has processed and checkpointed what it was handed.
    pub source_running: bool,
    /// Whether every part of the pipeline does its work, and what does not.
    pub health: Health,
    /// Worker threads stepping the partitions.
    pub workers: usize,
    pub partitions: Vec<PartitionStatus>,
    /// The consumer group, for a Kafka source: its members, their
    /// partitions, restores in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupStatus>,
}

/// One partition in `GET /api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: Part,
    pub events: Counters,
    pub watermark: Option<i64>,
    pub buffered: usize,
    /// Next offset per source partition.
    pub offsets: Offsets,
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Messages of its Kafka partition not read yet, when the end is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// False once the source has ended and this partition has processed
    /// and checkpointed all it was handed.
    #[serde(skip)]
    pub running: bool,
}

/// What runs under an instance name: a new partition starts it, a swap
/// replaces it.
#[derive(Clone)]
pub(crate) struct Running {
    pub name: String,
    pub module: Module,
    pub config: serde_json::Value,
    pub limits: Limits,
}

/// One partition as the HTTP layer and the lifecycle see it.
pub(crate) struct PartitionView {
    pub part: Part,
    /// Its instances: stages first, then metrics.
    pub slots: RwLock<Vec<Arc<PluginSlot>>>,
    pub status: Mutex<PartitionStatus>,
    /// Lifecycle changes for the worker that owns it.
    pub requests: Mutex<mpsc::Sender<Request>>,
}

/// What the reader knows of the source.
pub(crate) struct SourceView {
    pub describe: serde_json::Value,
    pub running: bool,
    /// Kafka messages read whose key was not their user id.
    pub unkeyed: u64,
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
    /// A Kafka topic whose messages are not keyed by their user.
    pub(crate) fn unkeyed(messages: u64) -> Self {
        Problem {
            plugin: None,
            what: format!(
                "the Kafka topic is not keyed by user: {messages} messages had a key other than their user id"
            ),
            effect: "a user's events can be in several partitions, each with sessions of its own: sessions and per-user figures are wrong for such users".into(),
            fix: "produce with the user id as the message key (weft keeps state per partition and expects each user in one)".into(),
        }
    }

    /// A quarantined plugin, its effect on the data and the way out.
    pub(crate) fn quarantined(
        slot: &PluginSlot,
        part: Part,
        stats: &PluginStats,
        reason: &str,
    ) -> Self {
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
            what: format!("plugin `{name}` is quarantined in partition {part}: {reason}"),
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
    #[serde(skip)]
    pub dead_letter_seq: u64,
    /// Why the plugin is quarantined, if it is.
    pub quarantined: Option<String>,
    /// Queries that trapped or ran out of a limit (not those it declined).
    pub query_errors: u64,
    /// The linear memory of the instance (of all partitions' instances, in
    /// a plugin's sum), in bytes, as of its last call.
    pub memory_bytes: u64,
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
    pub(crate) recovered: Condvar,
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

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no plugin named `{0}`")]
    NotFound(String),
    #[error("plugin `{name}` is a {role}; only metrics answer queries")]
    NotMetric { name: String, role: Role },
    /// The plugin refused the parameters (its `query` returned an error).
    #[error("{0}")]
    Declined(String),
    /// The query asked more than the plugin's limits allow.
    #[error("{0}; ask for less")]
    Limit(String),
    #[error("{0}")]
    Stopping(String),
    /// A trap, or anything else that is the plugin's fault.
    #[error("{0}")]
    Failed(String),
}

/// One plugin instance as `GET /api/plugins` shows it: its stats summed
/// over the partitions, and each partition's.
#[derive(Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// `None` while a new instance's first version loads.
    pub role: Option<Role>,
    /// `running`, `failing`, `quarantined` (in any partition) or `loading`.
    pub status: &'static str,
    pub mean_batch_ms: f64,
    #[serde(flatten)]
    pub stats: PluginStats,
    /// A version being loaded (compiled, checked, tried) right now.
    pub loading: Option<lifecycle::LoadingView>,
    pub partitions: Vec<PartitionPluginInfo>,
}

/// One partition's instance of a plugin in `GET /api/plugins`.
#[derive(Debug, Serialize)]
pub struct PartitionPluginInfo {
    pub partition: Part,
    pub status: &'static str,
    pub events_in: u64,
    pub batches: u64,
    pub errors: u64,
    pub restarts: u64,
    pub dead_letters: u64,
    pub quarantined: Option<String>,
    pub memory_bytes: u64,
}

fn status_of(stats: &PluginStats) -> &'static str {
    if stats.quarantined.is_some() {
        "quarantined"
    } else if stats.failing {
        "failing"
    } else {
        "running"
    }
}

/// `into` plus `other`, for the sums over partitions.
fn add_stats(into: &mut PluginStats, other: &PluginStats) {
    into.loaded_at = into.loaded_at.max(other.loaded_at);
    into.reload_error = into
        .reload_error
        .take()
        .or_else(|| other.reload_error.clone());
    into.last_swap_pause_ms = match (into.last_swap_pause_ms, other.last_swap_pause_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.events_in += other.events_in;
    into.batches += other.batches;
    into.errors += other.errors;
    into.busy_seconds += other.busy_seconds;
    into.failing |= other.failing;
    into.last_error = into.last_error.take().or_else(|| other.last_error.clone());
    into.restarts += other.restarts;
    into.dead_letters += other.dead_letters;
    into.memory_bytes += other.memory_bytes;
    into.quarantined = into
        .quarantined
        .take()
        .or_else(|| other.quarantined.clone());
    into.query_errors += other.query_errors;
    into.last_query_error = into
        .last_query_error
        .take()
        .or_else(|| other.last_query_error.clone());
}

/// How long a query waits for the pipeline to restart an instance that an
/// earlier failed query left unusable (the pipeline looks every 50 ms).
const RECOVERY_WAIT: Duration = Duration::from_secs(5);

/// What the HTTP layer sees of a running pipeline.
pub struct Shared {
    /// The partitions open here.
    pub(crate) partitions: RwLock<BTreeMap<Part, Arc<PartitionView>>>,
    /// What runs under each instance name: stages first, then metrics.
    pub(crate) running: Mutex<Vec<Running>>,
    pub(crate) source: Mutex<SourceView>,
    pub(crate) workers: usize,
    pub store: Store,
    pub telemetry: Telemetry,
    pub(crate) runtime: Runtime,
    /// The most any plugin's limits may ask for.
    pub(crate) max_limits: Limits,
    /// Loads in progress (compiling, checking, trying `init`), by name.
    pub(crate) loading: Mutex<BTreeMap<String, lifecycle::LoadingView>>,
    /// The consumer group this host is a member of (a Kafka source).
    pub(crate) group: std::sync::OnceLock<Membership>,
}

impl Shared {
    /// Shows the HTTP layer and the lifecycle a partition just opened.
    pub(crate) fn adopt(&self, view: &Arc<PartitionView>) {
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(view.part, view.clone());
    }

    /// Forgets a partition handed over to another host.
    pub(crate) fn forget(&self, part: Part) {
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&part);
    }

    /// Who owns which partitions of the group, for a query over all of
    /// them; `None` when this host is in no group (it has every partition).
    pub fn owners(&self) -> Option<Owners> {
        self.group.get().map(Membership::owners)
    }

    pub(crate) fn views(&self) -> Vec<Arc<PartitionView>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The partitions open here.
    pub fn part_ids(&self) -> Vec<Part> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Each partition's instance of `name`.
    pub(crate) fn slots(&self, name: &str) -> Vec<(Part, Arc<PluginSlot>)> {
        self.views()
            .iter()
            .filter_map(|v| {
                let slots = v.slots.read().unwrap_or_else(|p| p.into_inner());
                let slot = slots.iter().find(|s| s.name == name)?.clone();
                Some((v.part, slot))
            })
            .collect()
    }

    /// Whether instance `name` runs, and in which role.
    pub fn role(&self, name: &str) -> Option<Role> {
        lock(&self.running)
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.module.role())
    }

    /// Why instance `name` is quarantined, in the first partition it is.
    pub(crate) fn quarantined(&self, name: &str) -> Option<(Part, String)> {
        self.slots(name)
            .into_iter()
            .find_map(|(part, slot)| lock(&slot.stats).quarantined.clone().map(|q| (part, q)))
    }

    /// The version instance `name` runs, if it runs.
    pub fn digest(&self, name: &str) -> Option<String> {
        lock(&self.running)
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.module.digest.clone())
    }

    /// The loads in progress, by instance name.
    pub fn loading(&self) -> BTreeMap<String, lifecycle::LoadingView> {
        lock(&self.loading).clone()
    }

    /// The status, summed over the partitions, with each partition's.
    pub fn status(&self) -> Status {
        let views = self.views();
        let source = lock(&self.source);
        let ends = source.describe.get("ends");
        let partitions: Vec<PartitionStatus> = views
            .iter()
            .map(|v| {
                let mut status = lock(&v.status).clone();
                let end = ends
                    .and_then(|e| e.get(v.part.to_string()))
                    .and_then(|e| e.as_i64());
                let next = status.offsets.get(&(v.part as i32)).copied();
                status.lag = end.map(|end| (end - next.unwrap_or(0)).max(0));
                status
            })
            .collect();
        let mut events = Counters::default();
        for p in &partitions {
            let e = &p.events;
            events.received += e.received;
            events.accepted += e.accepted;
            events.rejected += e.rejected;
            events.duplicates += e.duplicates;
            for (reason, n) in &e.rejected_by_reason {
                *events.rejected_by_reason.entry(reason.clone()).or_default() += n;
            }
        }
        let last_checkpoint = if partitions.iter().all(|p| p.last_checkpoint.is_some()) {
            partitions
                .iter()
                .filter_map(|p| p.last_checkpoint.as_ref())
                .min_by_key(|c| c.at)
                .map(|oldest| CheckpointInfo {
                    at: oldest.at,
                    duration_ms: partitions
                        .iter()
                        .filter_map(|p| p.last_checkpoint.as_ref())
                        .map(|c| c.duration_ms)
                        .fold(0.0, f64::max),
                    offsets: passed(
                        partitions
                            .iter()
                            .filter_map(|p| p.last_checkpoint.as_ref())
                            .map(|c| &c.offsets),
                    ),
                })
        } else {
            None
        };
        let mut health = Health::default();
        for v in &views {
            for slot in v.slots.read().unwrap_or_else(|p| p.into_inner()).iter() {
                let stats = lock(&slot.stats);
                if let Some(reason) = &stats.quarantined {
                    health
                        .problems
                        .push(Problem::quarantined(slot, v.part, &stats, reason));
                }
            }
        }
        if source.unkeyed > 0 && partitions.len() > 1 {
            health.problems.push(Problem::unkeyed(source.unkeyed));
        }
        health.degraded = !health.problems.is_empty();
        Status {
            events,
            watermark: partitions.iter().filter_map(|p| p.watermark).min(),
            buffered: partitions.iter().map(|p| p.buffered).sum(),
            last_checkpoint,
            source: source.describe.clone(),
            source_running: source.running || partitions.iter().any(|p| p.running),
            health,
            workers: self.workers,
            group: self
                .group
                .get()
                .map(|m| m.status(&partitions.iter().map(|p| p.partition).collect::<Vec<_>>())),
            partitions,
        }
    }

    /// Sets the gauges of `/metrics` that sum or pick over the partitions
    /// (called for every scrape).
    pub fn update_gauges(&self) {
        let status = self.status();
        let t = &self.telemetry;
        t.count(&status.events);
        if let Some(group) = &status.group {
            t.members.set(group.members.len() as i64);
            t.restoring.set(group.restoring.len() as i64);
        }
        t.degraded.set(i64::from(status.health.degraded));
        if let Some(w) = status.watermark {
            t.watermark.set(w);
        }
        if let Some(lag) = status.source.get("lag").and_then(|l| l.as_i64()) {
            t.source_lag.set(lag);
        }
        t.buffered.set(status.buffered as i64);
        t.partitions.set(status.partitions.len() as i64);
        for r in lock(&self.running).iter() {
            let quarantined = self.quarantined(&r.name).is_some();
            t.quarantined
                .with_label_values(&[r.name.as_str()])
                .set(i64::from(quarantined));
        }
    }

    /// Asks metric `name` a query: every partition's instance for its
    /// partial answer, then one of them to merge those. A query that traps
    /// or runs out of a limit leaves the instance unusable: it is counted,
    /// and the partition restarts the instance from its checkpoint
    /// (replaying what it saw since), which the next query waits for.
    pub fn query(&self, name: &str, params: &[(String, String)]) -> Result<String, QueryError> {
        let partials: Vec<String> = self
            .partials(name, params)?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        self.merge(name, params, &partials)
    }

    /// Each partition's own answer of metric `name` (`query`), by partition.
    pub fn partials(
        &self,
        name: &str,
        params: &[(String, String)],
    ) -> Result<Vec<(Part, String)>, QueryError> {
        let slots = self.metric_slots(name)?;
        let mut partials = Vec::with_capacity(slots.len());
        for (part, slot) in &slots {
            partials.push((*part, self.ask(slot, |p| p.query(params))?));
        }
        Ok(partials)
    }

    /// Metric `name`'s answer from partitions' answers (its `merge`).
    pub fn merge(
        &self,
        name: &str,
        params: &[(String, String)],
        partials: &[String],
    ) -> Result<String, QueryError> {
        if let Some((_, first)) = self.metric_slots(name)?.first() {
            return self.ask(first, |p| p.merge(params, partials));
        }
        // No partition here (all are other hosts'): `merge` is pure, so an
        // instance over no state does.
        let running = lock(&self.running).iter().find(|r| r.name == name).cloned();
        let running = running.ok_or_else(|| QueryError::NotFound(name.to_owned()))?;
        let merged = Plugin::start(
            &self.runtime,
            name,
            &running.module,
            self.store.plugin_state(name, Part::MAX),
            &running.config.to_string(),
            running.limits,
        )
        .and_then(|mut plugin| plugin.merge(params, partials));
        merged.map_err(|e| match e {
            weft_runtime::Error::Failed { message, .. } => QueryError::Declined(message),
            e => QueryError::Failed(e.to_string()),
        })
    }

    /// Each partition's instance of metric `name` (none when no partition
    /// is open here).
    fn metric_slots(&self, name: &str) -> Result<Vec<(Part, Arc<PluginSlot>)>, QueryError> {
        match self.role(name) {
            None => Err(QueryError::NotFound(name.to_owned())),
            Some(Role::Metric) => Ok(self.slots(name)),
            Some(role) => Err(QueryError::NotMetric {
                name: name.to_owned(),
                role,
            }),
        }
    }

    /// Calls `f` on `slot`'s instance once it is usable, and says what a
    /// failure means for the caller.
    fn ask(
        &self,
        slot: &PluginSlot,
        f: impl FnOnce(&mut Plugin) -> Result<String, weft_runtime::Error>,
    ) -> Result<String, QueryError> {
        let plugin = lock(&slot.plugin);
        let (mut plugin, _) = slot
            .recovered
            .wait_timeout_while(plugin, RECOVERY_WAIT, |p| p.is_poisoned())
            .unwrap_or_else(|p| p.into_inner());
        let result = f(&mut plugin);
        drop(plugin);
        let error = match result {
            Ok(answer) => return Ok(answer),
            // The plugin declined the parameters: the caller's mistake.
            Err(weft_runtime::Error::Failed { message, .. }) => {
                return Err(QueryError::Declined(message));
            }
            Err(e) => e,
        };
        tracing::warn!(plugin = %slot.name, error = %error, "Query failed; the instance is restarted from its checkpoint.");
        self.telemetry
            .query_errors
            .with_label_values(&[slot.name.as_str()])
            .inc();
        let mut stats = lock(&slot.stats);
        stats.query_errors += 1;
        stats.last_query_error = Some(error.to_string());
        Err(match error {
            weft_runtime::Error::Budget { .. } | weft_runtime::Error::Memory { .. } => {
                QueryError::Limit(error.to_string())
            }
            weft_runtime::Error::Interrupted { .. } => QueryError::Stopping(error.to_string()),
            e => QueryError::Failed(e.to_string()),
        })
    }

    /// What `GET /api/plugins` shows: each running instance, then each new
    /// one still loading (`status: "loading"`).
    pub fn plugin_infos(&self) -> Vec<PluginInfo> {
        let mut loading = self.loading();
        let names: Vec<(String, Role)> = lock(&self.running)
            .iter()
            .map(|r| (r.name.clone(), r.module.role()))
            .collect();
        let mut infos: Vec<PluginInfo> = names
            .into_iter()
            .map(|(name, role)| {
                let mut stats: Option<PluginStats> = None;
                let mut partitions = Vec::new();
                for (part, slot) in self.slots(&name) {
                    let s = lock(&slot.stats).clone();
                    partitions.push(PartitionPluginInfo {
                        partition: part,
                        status: status_of(&s),
                        events_in: s.events_in,
                        batches: s.batches,
                        errors: s.errors,
                        restarts: s.restarts,
                        dead_letters: s.dead_letters,
                        quarantined: s.quarantined.clone(),
                        memory_bytes: s.memory_bytes,
                    });
                    match &mut stats {
                        None => stats = Some(s),
                        Some(sum) => add_stats(sum, &s),
                    }
                }
                let stats = stats.unwrap_or_else(|| PluginStats {
                    digest: self.digest(&name).unwrap_or_default(),
                    ..PluginStats::default()
                });
                let mean = if stats.batches == 0 {
                    0.0
                } else {
                    stats.busy_seconds * 1e3 / stats.batches as f64
                };
                PluginInfo {
                    status: status_of(&stats),
                    role: Some(role),
                    mean_batch_ms: mean,
                    loading: loading.remove(&name),
                    name,
                    stats,
                    partitions,
                }
            })
            .collect();
        infos.extend(loading.into_iter().map(|(name, l)| PluginInfo {
            name,
            role: None,
            status: "loading",
            mean_batch_ms: 0.0,
            stats: PluginStats {
                digest: l.digest.clone(),
                ..PluginStats::default()
            },
            loading: Some(l),
            partitions: Vec::new(),
        }));
        infos
    }
}

/// Per source partition, the lowest of `offsets` that has it: what every
/// partition reading it has passed.
fn passed<'a>(offsets: impl Iterator<Item = &'a Offsets>) -> Offsets {
    let mut out = Offsets::new();
    for o in offsets {
        for (&p, &next) in o {
            out.entry(p)
                .and_modify(|n| *n = (*n).min(next))
                .or_insert(next);
        }
    }
    out
}
