//! Plugin lifecycle while the pipeline runs: load, swap, unload, roll back,
//! and replay dead letters.
//!
//! A change is prepared off the hot path, in the caller's thread: the
//! component is compiled, checked against the world of its role,
//! instantiated and `init(config)` called on a trial instance. Only then is
//! it handed to every partition (one instance each, made beforehand), which
//! applies it right after its own checkpoint — at a batch boundary, with
//! every plugin's state durable and its journal empty — so every event is
//! processed by exactly one version and the new version starts from the old
//! one's state (the same namespace). If
//! anything fails the old version keeps running and the failure is reported:
//! the caller's error, the plugin's `reload_error`, a log line and
//! `weft_plugin_reloads_total{outcome="failed"}`.
//!
//! Every version ever loaded is kept by digest in the store, with when it was
//! loaded, where from and what replaced it, so it can be rolled back to.
//! What runs under each name is recorded too: a restart brings back the
//! versions loaded through the API, unless the configured module (weft.toml
//! or the plugin directory) changed since.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use weft_runtime::{Limits, Module, Plugin, Role};
use weft_state::{StateError, Store};

use crate::{
    PluginSlot, PluginSpec, PluginStats, Shared, isolation::Record, lock, now_ms,
    partition::Partition, shared::Running,
};

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[plugins]]` in weft.toml, or the bundled default pipeline.
    Config,
    /// The plugin directory.
    Directory,
    /// `PUT /api/plugins/{name}`.
    Api,
    /// `POST /api/plugins/{name}/rollback`.
    Rollback,
    /// `POST /api/plugins/{name}/reload`: the running version again.
    Reload,
}

/// What a manifest (beside a component in the plugin directory, or the
/// query of an upload) says about an instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    /// The expected role; the component must fit its world.
    pub role: Option<Role>,
    /// The instance's config, handed to `init` as JSON.
    pub config: Option<serde_json::Value>,
    pub limits: Limits,
}

/// What a reload changes of the running version; `None` keeps it.
#[derive(Debug, Default)]
pub struct Changes {
    pub config: Option<serde_json::Value>,
    pub cpu_ms: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// One loaded version of an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub digest: String,
    /// Epoch ms.
    pub loaded_at: u64,
    pub origin: Origin,
    pub config: serde_json::Value,
    pub limits: Limits,
    pub replaced_at: Option<u64>,
    /// The digest that replaced it; `None` with `replaced_at` set: unloaded.
    pub replaced_by: Option<String>,
}

/// A load in progress, shown in `GET /api/plugins` until it ends.
#[derive(Debug, Clone, Serialize)]
pub struct LoadingView {
    pub digest: String,
    pub bytes: usize,
    /// When it began, epoch ms.
    pub since: u64,
}

/// Marks a load of `name` in progress while alive.
struct Loading<'a> {
    shared: &'a Shared,
    name: String,
}

impl<'a> Loading<'a> {
    fn start(shared: &'a Shared, name: &str, wasm: &[u8]) -> Self {
        let view = LoadingView {
            digest: weft_runtime::digest(wasm),
            bytes: wasm.len(),
            since: now_ms(),
        };
        lock(&shared.loading).insert(name.to_owned(), view);
        Loading {
            shared,
            name: name.to_owned(),
        }
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        lock(&self.shared.loading).remove(&self.name);
    }
}

/// How many versions of an instance its record keeps.
const HISTORY: usize = 100;

/// What the configuration (weft.toml or the plugin directory) said about an
/// instance when it was last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Base {
    pub digest: String,
    pub config: serde_json::Value,
    pub limits: Limits,
}

impl Base {
    pub(crate) fn of(spec: &PluginSpec) -> Self {
        Base {
            digest: weft_runtime::digest(&spec.wasm),
            config: spec.config.clone(),
            limits: spec.limits,
        }
    }
}

/// A record's [`Base`]; records written before it had config and limits
/// hold only the digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredBase {
    Full(Base),
    Digest(String),
}

/// What runs under an instance name, kept in the store.
#[derive(Debug, Default, Serialize, Deserialize)]
struct InstanceRecord {
    /// What the configuration said when it was last seen; `None` for
    /// instances born through the API.
    base: Option<StoredBase>,
    /// Unloaded (`DELETE`): not brought back by a restart.
    removed: bool,
    /// Oldest first; the last one is current unless `removed`.
    versions: Vec<Version>,
}

impl InstanceRecord {
    fn load(store: &Store, name: &str) -> Result<Option<Self>, LifecycleError> {
        store
            .instance(name)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    LifecycleError::State(StateError::Corrupt {
                        what: "instance record",
                        detail: format!("{name}: {e}"),
                    })
                })
            })
            .transpose()
    }

    fn save(&self, store: &Store, name: &str) -> Result<(), LifecycleError> {
        let bytes = serde_json::to_vec(self).map_err(|e| {
            LifecycleError::State(StateError::Corrupt {
                what: "instance record",
                detail: e.to_string(),
            })
        })?;
        store.put_instance(name, &bytes)?;
        Ok(())
    }

    fn current(&self) -> Option<&Version> {
        self.versions.last().filter(|_| !self.removed)
    }

    /// Whether the configuration still says what it said last time.
    fn configured_as(&self, now: &Base) -> bool {
        match &self.base {
            Some(StoredBase::Full(base)) => base == now,
            // Only the digest was kept: the config and limits it came with are
            // those of the last version loaded from the configuration.
            Some(StoredBase::Digest(digest)) => {
                *digest == now.digest
                    && self
                        .versions
                        .iter()
                        .rev()
                        .find(|v| matches!(v.origin, Origin::Config | Origin::Directory))
                        .is_some_and(|v| {
                            v.digest == now.digest
                                && v.config == now.config
                                && v.limits == now.limits
                        })
            }
            None => false,
        }
    }

    /// Records `version` as current, the previous one replaced by it.
    fn push(&mut self, version: Version) {
        if let Some(last) = self.versions.last_mut().filter(|_| !self.removed) {
            last.replaced_at = Some(version.loaded_at);
            last.replaced_by = Some(version.digest.clone());
        }
        self.removed = false;
        self.versions.push(version);
        let excess = self.versions.len().saturating_sub(HISTORY);
        self.versions.drain(..excess);
    }

    fn remove(&mut self) {
        if let Some(last) = self.versions.last_mut().filter(|_| !self.removed) {
            last.replaced_at = Some(now_ms());
        }
        self.removed = true;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no plugin named `{0}`")]
    NotFound(String),
    #[error(
        "`{0}` is not a valid plugin name: use 1 to 64 lowercase letters, digits and `_`, starting with a letter"
    )]
    BadName(String),
    #[error("plugin `{name}`: {detail}")]
    BadLimits { name: String, detail: String },
    /// The component does not compile, fit a world, instantiate or `init`.
    #[error(transparent)]
    Invalid(#[from] weft_runtime::Error),
    #[error("plugin `{name}`: the manifest says {declared}, but the component is a {actual}")]
    RoleMismatch {
        name: String,
        declared: Role,
        actual: Role,
    },
    #[error(
        "plugin `{name}` runs as a {running}; the new component is a {new} (unload it first to change its role)"
    )]
    RoleChanged {
        name: String,
        running: Role,
        new: Role,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("the pipeline is not running: {0}")]
    Unavailable(&'static str),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What an applied change did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub name: String,
    /// The version now running (none after an unload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The version it replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    pub role: Option<Role>,
    /// How long the pipeline waited for the swap, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<f64>,
    /// Dead letters replayed, and how many of them failed again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_again: Option<u64>,
}

/// A component ready to go in: compiled, checked, its `init` tried on a
/// trial instance, and each partition's instance to swap in made (`init` is
/// called at the swap, when it sees the state the old version left).
pub(crate) struct Prepared {
    pub module: Module,
    pub instances: Vec<(weft_state::Part, Plugin)>,
    pub config: serde_json::Value,
    pub limits: Limits,
    pub origin: Origin,
    /// The configuration it stems from (directory, config), if any.
    pub base: Option<Base>,
}

/// A change for one partition.
pub(crate) enum Change {
    Deploy {
        module: Module,
        instance: Box<Plugin>,
    },
    Remove,
    ReplayDeadLetters,
}

/// What a partition answers: what it did, and the instance it replaced
/// (freed by the caller, off the worker thread).
type Reply = Result<(Applied, Option<Plugin>), LifecycleError>;

/// A change for a partition to apply, and where to answer.
pub(crate) struct Request {
    pub name: String,
    pub change: Change,
    pub reply: mpsc::Sender<Reply>,
}

/// How long a caller waits for the pipeline to apply a change: it waits for
/// the next checkpoint, so this only trips when the pipeline is stuck.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `name` may name a plugin instance: 1 to 64 lowercase ASCII
/// letters, digits and `_`, starting with a letter. Names double as state
/// namespaces, file names, URL segments, Prometheus labels and identifiers
/// in every plugin language, so this one rule holds everywhere (`weft plugin
/// new`, `[[plugins]]`, the plugin directory, the admin API).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Shared {
    /// Loads `wasm` as instance `name`: a new instance, or a new version of
    /// a running one (also the way out of quarantine). Blocks until the
    /// pipeline has swapped it in and the change is durable.
    pub fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Manifest,
        origin: Origin,
    ) -> Result<Applied, LifecycleError> {
        let base = (origin == Origin::Directory).then(|| Base {
            digest: weft_runtime::digest(wasm),
            config: manifest.config.clone().unwrap_or_else(empty_config),
            limits: manifest.limits,
        });
        let result = self
            .prepare(name, wasm, manifest, origin, base)
            .and_then(|prepared| self.swap(name, prepared));
        self.report(name, "load", &result);
        result
    }

    /// Unloads instance `name`; its state stays in the store.
    pub fn remove(&self, name: &str) -> Result<Applied, LifecycleError> {
        if self.role(name).is_none() {
            return Err(LifecycleError::NotFound(name.to_owned()));
        }
        let role = self.role(name);
        let replaced = self.digest(name);
        let result = self
            .request(name, |_| Some(Change::Remove))
            .map(|applied| {
                applied.unwrap_or_else(|| Applied {
                    name: name.to_owned(),
                    replaced,
                    role,
                    ..Applied::default()
                })
            })
            .and_then(|applied| {
                record(&self.store, name, RecordChange::Remove)?;
                lock(&self.running).retain(|r| r.name != name);
                self.store.flush()?;
                Ok(applied)
            });
        self.report(name, "unload", &result);
        result
    }

    /// Swaps instance `name` back to version `to`, by default the one the
    /// running version replaced.
    pub fn rollback(&self, name: &str, to: Option<&str>) -> Result<Applied, LifecycleError> {
        let record = InstanceRecord::load(&self.store, name)?
            .filter(|r| r.current().is_some())
            .ok_or_else(|| LifecycleError::NotFound(name.to_owned()))?;
        let current = &record.versions[record.versions.len() - 1];
        let target = match to {
            Some(digest) => record
                .versions
                .iter()
                .rev()
                .find(|v| v.digest == digest)
                .ok_or_else(|| {
                    LifecycleError::Conflict(format!(
                        "plugin `{name}` never ran version {digest}; see GET /api/plugins/{name}/versions"
                    ))
                })?,
            None => record
                .versions
                .iter()
                .rev()
                .find(|v| v.replaced_by.as_deref() == Some(current.digest.as_str()))
                .ok_or_else(|| {
                    LifecycleError::Conflict(format!(
                        "plugin `{name}` has no earlier version to roll back to; POST /api/plugins/{name}/reload restarts the running one"
                    ))
                })?,
        };
        let manifest = Manifest {
            role: None,
            config: Some(target.config.clone()),
            limits: target.limits,
        };
        let result = self.redeploy(name, &record, &target.digest, manifest, Origin::Rollback);
        self.report(name, "rollback", &result);
        result
    }

    /// Loads the running version of `name` again, from its last checkpoint,
    /// with `config` and `limits` changed where given: the way out of
    /// quarantine for a plugin whose component is fine (a bundled one that
    /// ran out of its budget, say).
    pub fn reload(&self, name: &str, changes: Changes) -> Result<Applied, LifecycleError> {
        let record = InstanceRecord::load(&self.store, name)?
            .filter(|r| r.current().is_some())
            .ok_or_else(|| LifecycleError::NotFound(name.to_owned()))?;
        let current = &record.versions[record.versions.len() - 1];
        let manifest = Manifest {
            role: None,
            config: Some(changes.config.unwrap_or_else(|| current.config.clone())),
            limits: Limits {
                cpu_ms: changes.cpu_ms.unwrap_or(current.limits.cpu_ms),
                memory_mib: changes.memory_mib.unwrap_or(current.limits.memory_mib),
            },
        };
        let result = self.redeploy(name, &record, &current.digest, manifest, Origin::Reload);
        self.report(name, "reload", &result);
        result
    }

    /// Deploys the stored version `digest` of `name` with `manifest`.
    fn redeploy(
        &self,
        name: &str,
        record: &InstanceRecord,
        digest: &str,
        manifest: Manifest,
        origin: Origin,
    ) -> Result<Applied, LifecycleError> {
        let wasm = self.store.module(digest)?.ok_or_else(|| {
            LifecycleError::Conflict(format!("version {digest} of `{name}` is no longer stored"))
        })?;
        let base = match &record.base {
            Some(StoredBase::Full(base)) => Some(base.clone()),
            _ => None,
        };
        self.prepare(name, &wasm, manifest, origin, base)
            .and_then(|prepared| self.swap(name, prepared))
    }

    /// Swaps `prepared` in, in every partition, then records the version.
    fn swap(&self, name: &str, prepared: Prepared) -> Result<Applied, LifecycleError> {
        let Prepared {
            module,
            instances,
            config,
            limits,
            origin,
            base,
        } = prepared;
        let mut instances: std::collections::BTreeMap<_, _> = instances.into_iter().collect();
        // A partition opened since the instances were made keeps the running
        // version until the next change (it is rare: a Kafka partition seen
        // first during the load).
        let replaced = self.digest(name);
        let applied = self
            .request(name, |part| {
                let instance = instances.remove(&part)?;
                Some(Change::Deploy {
                    module: module.clone(),
                    instance: Box::new(instance),
                })
            })?
            // No partition is open yet (a Kafka source before its first
            // message): the partitions opened later start this version.
            .unwrap_or_else(|| Applied {
                name: name.to_owned(),
                digest: Some(module.digest.clone()),
                replaced,
                role: Some(module.role()),
                ..Applied::default()
            });
        let running = Running {
            name: name.to_owned(),
            module: module.clone(),
            config: config.clone(),
            limits,
        };
        {
            let mut all = lock(&self.running);
            match all.iter_mut().find(|r| r.name == name) {
                Some(r) => *r = running,
                None => {
                    // Stages run in the order they came, before every metric.
                    let at = match module.role() {
                        Role::Stage => all
                            .iter()
                            .filter(|r| r.module.role() == Role::Stage)
                            .count(),
                        Role::Metric => all.len(),
                    };
                    all.insert(at, running);
                }
            }
        }
        let version = Version {
            digest: module.digest.clone(),
            loaded_at: now_ms(),
            origin,
            config,
            limits,
            replaced_at: None,
            replaced_by: None,
        };
        record(&self.store, name, RecordChange::Push { version, base })?;
        self.store.flush()?;
        Ok(applied)
    }

    /// Runs plugin `name`'s dead letters through it again (and, for a
    /// stage, on through the rest of the pipeline). Those that fail again
    /// are dead-lettered anew.
    pub fn replay_dead_letters(&self, name: &str) -> Result<Applied, LifecycleError> {
        if self.role(name).is_none() {
            return Err(LifecycleError::NotFound(name.to_owned()));
        }
        if let Some((part, reason)) = self.quarantined(name) {
            return Err(LifecycleError::Conflict(format!(
                "plugin `{name}` is quarantined in partition {part} ({reason}); load a fixed version first (PUT), or POST /api/plugins/{name}/reload to restart this one"
            )));
        }
        let role = self.role(name);
        Ok(self
            .request(name, |_| Some(Change::ReplayDeadLetters))?
            .unwrap_or_else(|| Applied {
                name: name.to_owned(),
                digest: self.digest(name),
                role,
                replayed: Some(0),
                failed_again: Some(0),
                ..Applied::default()
            }))
    }

    /// Every version instance `name` ran, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<Version>, LifecycleError> {
        InstanceRecord::load(&self.store, name)?
            .map(|r| r.versions)
            .ok_or_else(|| LifecycleError::NotFound(name.to_owned()))
    }

    /// Compiles and checks `wasm` and tries its `init`, off the hot path.
    fn prepare(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Manifest,
        origin: Origin,
        base: Option<Base>,
    ) -> Result<Prepared, LifecycleError> {
        if !valid_name(name) {
            return Err(LifecycleError::BadName(name.to_owned()));
        }
        manifest
            .limits
            .within(&self.max_limits)
            .map_err(|detail| LifecycleError::BadLimits {
                name: name.to_owned(),
                detail,
            })?;
        // Compiling a large component takes a while: /api/plugins says so.
        let _loading = Loading::start(self, name, wasm);
        let module = self.runtime.load(name, wasm)?;
        let actual = module.role();
        if let Some(declared) = manifest.role.filter(|&r| r != actual) {
            return Err(LifecycleError::RoleMismatch {
                name: name.to_owned(),
                declared,
                actual,
            });
        }
        if let Some(running) = self.role(name).filter(|&r| r != actual) {
            return Err(LifecycleError::RoleChanged {
                name: name.to_owned(),
                running,
                new: actual,
            });
        }
        let config = manifest.config.unwrap_or_else(empty_config);
        let instantiate = |part| {
            Plugin::instantiate(
                &self.runtime,
                name,
                &module,
                self.store.plugin_state(name, part),
                &config.to_string(),
                manifest.limits,
            )
        };
        let parts = self.part_ids();
        // The trial instance sees one partition's durable state; its writes
        // are dropped.
        if let Some(&first) = parts.first() {
            instantiate(first)?.init()?;
        }
        let mut instances = Vec::with_capacity(parts.len());
        for part in parts {
            instances.push((part, instantiate(part)?));
        }
        self.store.put_module(&module.digest, wasm)?;
        Ok(Prepared {
            instances,
            module,
            config,
            limits: manifest.limits,
            origin,
            base,
        })
    }

    /// Hands every partition its `change` and waits for their answers,
    /// combined: the longest pause, the replays summed; `None` when no
    /// partition is open.
    fn request(
        &self,
        name: &str,
        mut change: impl FnMut(weft_state::Part) -> Option<Change>,
    ) -> Result<Option<Applied>, LifecycleError> {
        let mut answers = Vec::new();
        for view in self.views() {
            let Some(change) = change(view.part) else {
                continue;
            };
            let (reply, answer) = mpsc::channel();
            lock(&view.requests)
                .send(Request {
                    name: name.to_owned(),
                    change,
                    reply,
                })
                .map_err(|_| LifecycleError::Unavailable("it has stopped"))?;
            answers.push((view.part, answer));
        }
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut combined: Option<Applied> = None;
        let mut failures = Vec::new();
        for (part, answer) in answers {
            let wait = deadline.saturating_duration_since(Instant::now());
            match answer.recv_timeout(wait) {
                Ok(Ok((applied, old))) => {
                    drop(old);
                    combined = Some(match combined {
                        None => applied,
                        Some(mut c) => {
                            c.pause_ms = max_of(c.pause_ms, applied.pause_ms);
                            c.replayed = sum_of(c.replayed, applied.replayed);
                            c.failed_again = sum_of(c.failed_again, applied.failed_again);
                            c
                        }
                    });
                }
                Ok(Err(e)) => failures.push((part, e)),
                Err(_) => failures.push((
                    part,
                    LifecycleError::Unavailable("it did not apply the change in time"),
                )),
            }
        }
        match combined {
            Some(applied) if failures.is_empty() => Ok(Some(applied)),
            None if failures.is_empty() => Ok(None),
            // Failed everywhere, most likely for one reason: that one.
            None => Err(failures.swap_remove(0).1),
            Some(_) => Err(LifecycleError::Conflict(format!(
                "the change was applied in some partitions but failed in partitions {}: {}",
                failures
                    .iter()
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                failures[0].1
            ))),
        }
    }

    /// Logs and counts the outcome of a lifecycle action on `name`.
    fn report(&self, name: &str, action: &str, result: &Result<Applied, LifecycleError>) {
        match result {
            Ok(applied) => {
                tracing::info!(plugin = name, action, digest = ?applied.digest, pause_ms = ?applied.pause_ms, "Plugin {action} done.");
                self.telemetry.reloaded(name, "ok");
            }
            Err(e) => self.report_failure(name, action, &e.to_string()),
        }
    }

    /// Reports a failed lifecycle action on `name`: a log line, the
    /// plugin's `reload_error`, and `weft_plugin_reloads_total`.
    pub fn report_failure(&self, name: &str, action: &str, error: &str) {
        tracing::warn!(
            plugin = name,
            action,
            error,
            "Plugin {action} failed; the running version stays."
        );
        for (_, slot) in self.slots(name) {
            lock(&slot.stats).reload_error = Some(error.to_owned());
        }
        self.telemetry.reloaded(name, "failed");
    }
}

/// What the pipeline starts with: each configured instance, or the version
/// that ran under its name before the restart if its configuration (module,
/// config and limits) is unchanged since, plus the instances loaded through
/// the API.
pub(crate) fn resolve(
    store: &Store,
    specs: Vec<PluginSpec>,
) -> Result<Vec<PluginSpec>, LifecycleError> {
    let mut out = Vec::new();
    let mut configured = Vec::new();
    for spec in specs {
        let base = Base::of(&spec);
        let mut record = InstanceRecord::load(store, &spec.name)?.unwrap_or_default();
        configured.push(spec.name.clone());
        if record.configured_as(&base) {
            // Configured as before: whatever ran last runs again.
            if let Some(current) = record.current() {
                if current.digest != base.digest
                    || current.config != base.config
                    || current.limits != base.limits
                {
                    tracing::info!(
                        plugin = %spec.name,
                        digest = %current.digest,
                        origin = ?current.origin,
                        "Running the version loaded last (not the configured one, which is unchanged since): change the configuration, or roll back, to run the configured one."
                    );
                }
                out.push(stored(store, &spec.name, current, spec.origin)?);
            }
            continue;
        }
        if let Some(current) = record.current().filter(|v| v.origin != spec.origin) {
            tracing::info!(
                plugin = %spec.name,
                replaced = %current.digest,
                "The configuration changed since the last start: it wins over the version loaded through the API."
            );
        }
        store.put_module(&base.digest, &spec.wasm)?;
        record.push(Version {
            digest: base.digest.clone(),
            loaded_at: now_ms(),
            origin: spec.origin,
            config: spec.config.clone(),
            limits: spec.limits,
            replaced_at: None,
            replaced_by: None,
        });
        record.base = Some(StoredBase::Full(base));
        record.save(store, &spec.name)?;
        out.push(spec);
    }
    for (name, _) in store.instances()? {
        if configured.contains(&name) {
            continue;
        }
        let Some(record) = InstanceRecord::load(store, &name)? else {
            continue;
        };
        // Born through the API and not unloaded; configured instances that
        // left the configuration stay unloaded.
        if let (None, Some(current)) = (&record.base, record.current()) {
            out.push(stored(store, &name, current, Origin::Api)?);
        }
    }
    store.flush()?;
    Ok(out)
}

fn stored(
    store: &Store,
    name: &str,
    version: &Version,
    origin: Origin,
) -> Result<PluginSpec, LifecycleError> {
    let wasm = store.module(&version.digest)?.ok_or_else(|| {
        LifecycleError::Conflict(format!(
            "version {} of `{name}` is recorded but not stored",
            version.digest
        ))
    })?;
    Ok(PluginSpec {
        name: name.to_owned(),
        wasm: wasm.into(),
        config: version.config.clone(),
        limits: version.limits,
        origin,
        role: None,
    })
}

enum RecordChange {
    Push {
        version: Version,
        base: Option<Base>,
    },
    Remove,
}

fn record(store: &Store, name: &str, change: RecordChange) -> Result<(), LifecycleError> {
    let mut record = InstanceRecord::load(store, name)?.unwrap_or_default();
    match change {
        RecordChange::Push { version, base } => {
            if let Some(base) = base {
                record.base = Some(StoredBase::Full(base));
            }
            record.push(version);
        }
        RecordChange::Remove => record.remove(),
    }
    record.save(store, name)
}

impl Partition {
    /// Applies the changes waiting for a batch boundary; called right after
    /// a checkpoint.
    pub(crate) fn apply_pending(&mut self) {
        for request in std::mem::take(&mut self.pending) {
            let Request {
                name,
                change,
                reply,
            } = request;
            let result = match change {
                Change::Deploy { module, instance } => self.swap_in(&name, module, *instance),
                Change::Remove => self.unload(&name).map(|a| (a, None)),
                Change::ReplayDeadLetters => self.replay(&name).map(|a| (a, None)),
            };
            let _ = reply.send(result);
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Initializes the prepared instance over the (just checkpointed) state
    /// and puts it in place of the running one, or beside the others. The
    /// partition waits only for this; the record, the flush and freeing the
    /// old instance come after, in the caller's thread.
    fn swap_in(
        &mut self,
        name: &str,
        module: Module,
        mut instance: Plugin,
    ) -> Result<(Applied, Option<Plugin>), LifecycleError> {
        let digest = module.digest.clone();
        let role = module.role();
        let index = self.index(name);
        let dead_letters = match index {
            Some(_) => 0,
            None => self.shared.store.count_dead_letters(name, self.part)?,
        };
        let started = Instant::now();
        instance.init()?;
        let (old, replaced) = match index {
            Some(i) => {
                let slot = self.slots[i].clone();
                let old = std::mem::replace(&mut *lock(&slot.plugin), instance);
                let mut stats = lock(&slot.stats);
                let replaced = std::mem::replace(&mut stats.digest, digest.clone());
                stats.quarantined = None;
                stats.failing = false;
                stats.reload_error = None;
                stats.loaded_at = now_ms();
                self.records[i] = Record::default();
                self.journals[i].clear();
                (Some(old), Some(replaced))
            }
            None => {
                let stats = PluginStats {
                    digest: digest.clone(),
                    loaded_at: now_ms(),
                    dead_letters,
                    dead_letter_seq: self.dead_letter_seq.get(name).copied().unwrap_or(0),
                    ..PluginStats::default()
                };
                let slot = Arc::new(PluginSlot::new(name.to_owned(), role, instance, stats));
                // Stages run in the order they came, before every metric.
                let at = match role {
                    Role::Stage => self.stage_count,
                    Role::Metric => self.slots.len(),
                };
                self.stage_count += usize::from(role == Role::Stage);
                self.slots.insert(at, slot);
                self.journals.insert(at, Vec::new());
                self.records.insert(at, Record::default());
                self.publish_slots();
                (None, None)
            }
        };
        let pause = started.elapsed();
        self.shared
            .telemetry
            .swap_pause
            .observe(pause.as_secs_f64());
        let pause_ms = pause.as_secs_f64() * 1e3;
        if let Some(i) = self.index(name) {
            lock(&self.slots[i].stats).last_swap_pause_ms = Some(pause_ms);
        }
        let applied = Applied {
            name: name.to_owned(),
            digest: Some(digest),
            replaced,
            role: Some(role),
            pause_ms: Some(pause_ms),
            ..Applied::default()
        };
        Ok((applied, old))
    }

    fn unload(&mut self, name: &str) -> Result<Applied, LifecycleError> {
        let i = self
            .index(name)
            .ok_or_else(|| LifecycleError::NotFound(name.to_owned()))?;
        let slot = self.slots.remove(i);
        self.journals.remove(i);
        self.records.remove(i);
        if slot.role == Role::Stage {
            self.stage_count -= 1;
        }
        let stats = lock(&slot.stats).clone();
        self.dead_letter_seq
            .insert(name.to_owned(), stats.dead_letter_seq);
        self.publish_slots();
        let applied = Applied {
            name: name.to_owned(),
            replaced: Some(stats.digest),
            role: Some(slot.role),
            ..Applied::default()
        };
        Ok(applied)
    }

    /// Feeds plugin `name` its dead letters again, then checkpoints so the
    /// replayed ones are gone and their effects kept in one write.
    fn replay(&mut self, name: &str) -> Result<Applied, LifecycleError> {
        let i = self
            .index(name)
            .ok_or_else(|| LifecycleError::NotFound(name.to_owned()))?;
        let slot = self.slots[i].clone();
        let seq_before = lock(&slot.stats).dead_letter_seq;
        let mut replayed = 0;
        // Sequence numbers start at 1: this is before the partition's first.
        let mut after = weft_state::Seq {
            part: self.part,
            seq: 0,
        };
        loop {
            let page = self.shared.store.dead_letters(name, Some(after), 64)?;
            let page: Vec<_> = page
                .into_iter()
                .take_while(|(s, _)| s.part == self.part)
                .collect();
            let Some(&(last, _)) = page.last() else {
                break;
            };
            after = last;
            for (weft_state::Seq { seq, .. }, bytes) in page {
                let letter = crate::isolation::DeadLetter::decode(&bytes).map_err(|e| {
                    LifecycleError::State(StateError::Corrupt {
                        what: "dead letter",
                        detail: format!("{name} #{seq}: {e}"),
                    })
                })?;
                for event in &letter.events {
                    self.builder.push(event);
                }
                let batch = self.builder.finish();
                // A stage's letters go on through the stages after it and
                // every metric; a metric's only to itself.
                if i < self.stage_count {
                    self.run_from(i, Arc::new(batch));
                } else {
                    self.call(i, crate::isolation::Call::Batch(&Arc::new(batch)));
                }
                self.replayed.push((name.to_owned(), seq));
                lock(&slot.stats).dead_letters -= 1;
                replayed += 1;
            }
        }
        let failed_again = lock(&slot.stats).dead_letter_seq - seq_before;
        self.checkpoint()
            .map_err(|e| LifecycleError::Conflict(format!("checkpoint after the replay: {e}")))?;
        Ok(Applied {
            name: name.to_owned(),
            digest: Some(lock(&slot.stats).digest.clone()),
            role: Some(slot.role),
            replayed: Some(replayed),
            failed_again: Some(failed_again),
            ..Applied::default()
        })
    }
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn sum_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The config of an instance given none: an empty JSON object.
pub(crate) fn empty_config() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
