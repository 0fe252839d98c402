//! What the HTTP layer sees of a running pipeline ([`Shared`]): the status
//! with its health, the plugin instances with their stats, queries, and the
//! lifecycle requests (in [`crate::lifecycle`]).

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, RwLock, mpsc},
    time::Duration,
};

use serde::Serialize;
use weft_runtime::{Limits, Plugin, Role, Runtime};
use weft_source::Offsets;
use weft_state::Store;

use crate::{
    Counters,
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
    pub(crate) fn quarantined(slot: &PluginSlot, stats: &PluginStats, reason: &str) -> Self {
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
    #[serde(skip)]
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

/// One plugin instance as `GET /api/plugins` shows it.
#[derive(Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// `None` while a new instance's first version loads.
    pub role: Option<Role>,
    /// `running`, `failing`, `quarantined` or `loading`.
    pub status: &'static str,
    pub mean_batch_ms: f64,
    #[serde(flatten)]
    pub stats: PluginStats,
    /// A version being loaded (compiled, checked, tried) right now.
    pub loading: Option<lifecycle::LoadingView>,
}

/// How long a query waits for the pipeline to restart an instance that an
/// earlier failed query left unusable (the pipeline looks every 50 ms).
const RECOVERY_WAIT: Duration = Duration::from_secs(5);

/// What the HTTP layer sees of a running pipeline.
pub struct Shared {
    /// The running instances: stages first, then metrics.
    pub(crate) plugins: RwLock<Vec<Arc<PluginSlot>>>,
    pub status: Mutex<Status>,
    pub store: Store,
    pub telemetry: Telemetry,
    pub(crate) runtime: Runtime,
    /// The most any plugin's limits may ask for.
    pub(crate) max_limits: Limits,
    /// Loads in progress (compiling, checking, trying `init`), by name.
    pub(crate) loading: Mutex<BTreeMap<String, lifecycle::LoadingView>>,
    /// Lifecycle changes for the pipeline thread.
    pub(crate) requests: Mutex<mpsc::Sender<Request>>,
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

    /// The version instance `name` runs, if it runs.
    pub fn digest(&self, name: &str) -> Option<String> {
        self.plugin(name).map(|s| lock(&s.stats).digest.clone())
    }

    /// The loads in progress, by instance name.
    pub fn loading(&self) -> BTreeMap<String, lifecycle::LoadingView> {
        lock(&self.loading).clone()
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Asks metric `name` a query. A query that traps or runs out of a
    /// limit leaves the instance unusable: it is counted, and the pipeline
    /// restarts the instance from its checkpoint (replaying what it saw
    /// since), which the next query waits for.
    pub fn query(&self, name: &str, params: &[(String, String)]) -> Result<String, QueryError> {
        let slot = self
            .plugin(name)
            .ok_or_else(|| QueryError::NotFound(name.to_owned()))?;
        if slot.role != Role::Metric {
            return Err(QueryError::NotMetric {
                name: name.to_owned(),
                role: slot.role,
            });
        }
        let plugin = lock(&slot.plugin);
        let (mut plugin, _) = slot
            .recovered
            .wait_timeout_while(plugin, RECOVERY_WAIT, |p| p.is_poisoned())
            .unwrap_or_else(|p| p.into_inner());
        let result = plugin.query(params);
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
        let mut infos: Vec<PluginInfo> = self
            .plugins()
            .iter()
            .map(|slot| {
                let stats = lock(&slot.stats).clone();
                let mean = if stats.batches == 0 {
                    0.0
                } else {
                    stats.busy_seconds * 1e3 / stats.batches as f64
                };
                PluginInfo {
                    name: slot.name.clone(),
                    role: Some(slot.role),
                    status: if stats.quarantined.is_some() {
                        "quarantined"
                    } else if stats.failing {
                        "failing"
                    } else {
                        "running"
                    },
                    mean_batch_ms: mean,
                    loading: loading.remove(&slot.name),
                    stats,
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
        }));
        infos
    }
}
