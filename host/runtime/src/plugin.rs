//! One plugin instance: its store, its role, and the calls the pipeline makes.
//!
//! Errors a plugin returns (`result<_, string>`) and traps are both reported
//! with the plugin's name and the function; a trap also carries whatever the
//! guest wrote to stderr (a Rust panic message, a Python traceback).
//!
//! Every call runs under the plugin's [`Limits`]: a CPU budget (its thread's
//! CPU time, checked on epoch interruption: see [`crate::budget`]) and a
//! memory limit. A trap leaves the instance unusable
//! ([`Plugin::is_poisoned`]); [`Plugin::restart`] makes a fresh instance of
//! the same module over the same state, keeping the writes not yet
//! checkpointed.

use std::{fmt, sync::Arc, time::Duration};

use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, component::ResourceTable};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView, p2::pipe::MemoryOutputPipe,
};

use crate::{
    Error,
    bindings::{
        Batch, Entry, Level, LogHost, MetricWorld, StageOutput, StageWorld, StateHost, TypesHost,
    },
    budget::{Cause, Meter},
    engine::{Module, Pre, Runtime},
};
use weft_state::{DurableState, PendingState, StateError, Write};

/// What one plugin instance may use (a manifest's or `[[plugins]]`'s
/// `limits`; unset keys take the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// CPU time one call may take, in milliseconds. A `checkpoint`, which
    /// writes what every call since the last one changed, may take this much
    /// per call since the last checkpoint.
    pub cpu_ms: u64,
    /// Linear memory the instance may grow to, in MiB.
    pub memory_mib: u64,
}

impl Limits {
    /// The CPU budget of one call.
    pub(crate) fn cpu(&self) -> Duration {
        Duration::from_millis(self.cpu_ms)
    }

    /// Checks these limits against the host's maxima (`max`), naming the
    /// one exceeded.
    pub fn within(&self, max: &Limits) -> Result<(), String> {
        for (what, asked, most) in [
            ("cpu_ms", self.cpu_ms, max.cpu_ms),
            ("memory_mib", self.memory_mib, max.memory_mib),
        ] {
            if asked == 0 || asked > most {
                return Err(format!(
                    "{what} = {asked} is outside 1..={most} (the host's maximum: max_{what} in weft.toml's [pipeline])"
                ));
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_ms: 200,
            memory_mib: 64,
        }
    }
}

/// A plugin's role: which world it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Stage,
    Metric,
}

impl Role {
    /// The functions a component of this role exports (its world in `wit/`).
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            Role::Stage => &["init", "process", "tick", "checkpoint"],
            Role::Metric => &["init", "ingest", "tick", "checkpoint", "query", "merge"],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Stage => "stage",
            Role::Metric => "metric",
        })
    }
}

/// An instance's limits, and the linear memory it has grown to (all its
/// memories together; wasm memory never shrinks).
struct Memory {
    limits: StoreLimits,
    bytes: usize,
}

impl ResourceLimiter for Memory {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.limits.memory_growing(current, desired, maximum)?;
        if grown {
            self.bytes += desired.saturating_sub(current);
        }
        Ok(grown)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// How much of a guest's stderr is kept to explain a trap.
const STDERR_CAPACITY: usize = 16 * 1024;

/// The store data of one plugin instance.
pub struct PluginCtx {
    name: String,
    state: PendingState,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    limits: Memory,
    meter: Meter,
    /// A state read that failed during the current call: the call fails
    /// with it (see [`Error::State`]).
    state_error: Option<StateError>,
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginCtx {
    /// Keeps a failed read for the call's outcome and traps the guest.
    fn failed_read(&mut self, e: StateError) -> wasmtime::Error {
        let trap = wasmtime::Error::msg(e.to_string());
        self.state_error = Some(e);
        trap
    }
}

impl StateHost for PluginCtx {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.state.get(&key).map_err(|e| self.failed_read(e))
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.state.set(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.state.delete(key);
    }

    fn scan(
        &mut self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<Vec<Entry>> {
        match self.state.scan(&prefix, after.as_deref(), limit as usize) {
            Ok(entries) => Ok(entries
                .into_iter()
                .map(|(key, value)| Entry { key, value })
                .collect()),
            Err(e) => Err(self.failed_read(e)),
        }
    }
}

impl TypesHost for PluginCtx {}

impl LogHost for PluginCtx {
    fn log(&mut self, level: Level, message: String) {
        let plugin = self.name.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Clocks that always read zero: plugins see no time but event time.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A WASI context that grants nothing (see [`crate::engine`]).
fn sandbox(stderr: MemoryOutputPipe) -> WasiCtx {
    let mut wasi = WasiCtx::builder();
    wasi.stderr(stderr)
        .wall_clock(Frozen)
        .monotonic_clock(Frozen)
        .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a; 32]))
        .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5; 32]))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    wasi.build()
}

/// A new store and instance of `module`, under `limits`, over `state`.
fn instantiate(
    runtime: &Runtime,
    name: &str,
    module: &Module,
    state: PendingState,
    limits: Limits,
) -> Result<(Store<PluginCtx>, Instance), Error> {
    let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
    let memory = usize::try_from(limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let ctx = PluginCtx {
        name: name.to_owned(),
        state,
        wasi: sandbox(stderr.clone()),
        table: ResourceTable::new(),
        stderr,
        limits: Memory {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory)
                .trap_on_grow_failure(true)
                .build(),
            bytes: 0,
        },
        meter: Meter::new(runtime.stop.clone()),
        state_error: None,
    };
    let mut store = Store::new(&runtime.engine, ctx);
    store.limiter(|ctx| &mut ctx.limits);
    store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().meter.on_deadline()));
    // Instantiation runs the component's start code: give it a budget too.
    let deadline = store.data_mut().meter.arm(Some(limits.cpu()));
    store.set_epoch_deadline(deadline);
    let instantiate = |source| Error::Instantiate {
        plugin: name.into(),
        source,
    };
    let instance = match &module.pre {
        Pre::Metric(pre) => Instance::Metric(pre.instantiate(&mut store).map_err(instantiate)?),
        Pre::Stage(pre) => Instance::Stage(pre.instantiate(&mut store).map_err(instantiate)?),
        #[cfg(feature = "native")]
        Pre::Native(build, _) => match build() {
            weft_plugin::native::Instance::Metric(m) => Instance::NativeMetric(m),
            weft_plugin::native::Instance::Stage(s) => Instance::NativeStage(s),
        },
    };
    Ok((store, instance))
}

enum Instance {
    Metric(MetricWorld),
    Stage(StageWorld),
    #[cfg(feature = "native")]
    NativeMetric(Box<dyn weft_plugin::native::MetricInstance>),
    #[cfg(feature = "native")]
    NativeStage(Box<dyn weft_plugin::native::StageInstance>),
}

/// A running plugin instance.
pub struct Plugin {
    name: String,
    module: Module,
    /// The config `init` was called with, for restarts.
    config: String,
    limits: Limits,
    runtime: Runtime,
    store: Store<PluginCtx>,
    instance: Instance,
    /// Set by a trap: the instance must not be entered again.
    poisoned: bool,
    /// Calls (`process`, `ingest`, `tick`) since the last checkpoint: the
    /// next checkpoint's CPU budget is this many budgets.
    calls_since_checkpoint: u64,
    /// The CPU budget of the call in progress, ms.
    armed_ms: u64,
    /// Whether calls run under their CPU budget (see [`Plugin::unmetered`]).
    metered: bool,
}

impl Plugin {
    /// Instantiates `module` over its durable state and calls `init(config)`.
    pub fn start(
        runtime: &Runtime,
        name: &str,
        module: &Module,
        durable: Arc<dyn DurableState>,
        config: &str,
        limits: Limits,
    ) -> Result<Self, Error> {
        let mut plugin = Plugin::instantiate(runtime, name, module, durable, config, limits)?;
        plugin.init()?;
        Ok(plugin)
    }

    /// Instantiates `module` over its durable state without calling `init`:
    /// the costly half of [`Plugin::start`], for a new version prepared
    /// ahead of a swap. [`Plugin::init`] must be called before anything else.
    pub fn instantiate(
        runtime: &Runtime,
        name: &str,
        module: &Module,
        durable: Arc<dyn DurableState>,
        config: &str,
        limits: Limits,
    ) -> Result<Self, Error> {
        let (store, instance) =
            instantiate(runtime, name, module, PendingState::new(durable), limits)?;
        Ok(Plugin {
            name: name.to_owned(),
            module: module.clone(),
            config: config.to_owned(),
            limits,
            runtime: runtime.clone(),
            store,
            instance,
            poisoned: false,
            calls_since_checkpoint: 0,
            armed_ms: limits.cpu_ms,
            metered: true,
        })
    }

    /// Calls the plugin's `init` with its config.
    pub fn init(&mut self) -> Result<(), Error> {
        self.arm(1);
        let result = match &mut self.instance {
            Instance::Metric(m) => m.call_init(&mut self.store, &self.config),
            Instance::Stage(s) => s.call_init(&mut self.store, &self.config),
            #[cfg(feature = "native")]
            Instance::NativeMetric(m) => Ok(m.init(self.store.data_mut(), &self.config)),
            #[cfg(feature = "native")]
            Instance::NativeStage(s) => Ok(s.init(self.store.data_mut(), &self.config)),
        };
        self.outcome("init", result)
    }

    /// A fresh instance of the same module and config over the state of the
    /// last checkpoint: the writes pending since then are dropped with what
    /// the old instance held in its memory (the pipeline replays the calls
    /// since the checkpoint).
    pub fn restart(&mut self) -> Result<(), Error> {
        let state = self.store.data_mut().state.reset();
        let (store, instance) =
            instantiate(&self.runtime, &self.name, &self.module, state, self.limits)?;
        self.store = store;
        self.instance = instance;
        self.poisoned = false;
        self.calls_since_checkpoint = 0;
        self.init()
    }

    /// The linear memory this instance has grown to, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limits.bytes as u64
    }

    /// Whether a trap has left the instance unusable (see [`Plugin::restart`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Runs `calls` without CPU budgets: for replaying calls that succeeded
    /// before (after a restart), which must not fail now because the host is
    /// busier. Only a shutdown interrupts them; the memory limit holds.
    pub fn unmetered<R>(&mut self, calls: impl FnOnce(&mut Plugin) -> R) -> R {
        self.metered = false;
        let result = calls(self);
        self.metered = true;
        result
    }

    /// Refuses calls into a poisoned instance, and every call once the host
    /// is stopping; arms the next call with `budgets` CPU budgets.
    fn ready(&mut self, budgets: u64) -> Result<(), Error> {
        if self.store.data().meter.stopping() {
            return Err(Error::Interrupted {
                plugin: self.name.clone(),
            });
        }
        if self.poisoned {
            return Err(Error::Poisoned {
                plugin: self.name.clone(),
            });
        }
        self.arm(budgets);
        Ok(())
    }

    /// Gives the next call `budgets` CPU budgets (at least one).
    fn arm(&mut self, budgets: u64) {
        let budgets = budgets.max(1);
        self.armed_ms = self.limits.cpu_ms.saturating_mul(budgets);
        let limit = self.metered.then(|| Duration::from_millis(self.armed_ms));
        let deadline = self.store.data_mut().meter.arm(limit);
        self.store.set_epoch_deadline(deadline);
    }

    /// Arms a call that changes state: one budget, and one more for the
    /// next checkpoint.
    fn ready_to_change(&mut self) -> Result<(), Error> {
        self.ready(1)?;
        self.calls_since_checkpoint += 1;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn digest(&self) -> &str {
        &self.module.digest
    }

    pub fn role(&self) -> Role {
        match self.instance {
            Instance::Metric(_) => Role::Metric,
            Instance::Stage(_) => Role::Stage,
            #[cfg(feature = "native")]
            Instance::NativeMetric(_) => Role::Metric,
            #[cfg(feature = "native")]
            Instance::NativeStage(_) => Role::Stage,
        }
    }

    /// Turns a call's outcome into this crate's error, naming the plugin.
    fn outcome<T>(
        &mut self,
        function: &'static str,
        result: wasmtime::Result<Result<T, String>>,
    ) -> Result<T, Error> {
        // A failed state read fails the call whatever the guest made of it
        // (a native build sees an absent value and carries on).
        if let Some(source) = self.store.data_mut().state_error.take() {
            self.poisoned = true;
            return Err(Error::State {
                plugin: self.name.clone(),
                function,
                source: Box::new(source),
            });
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(Error::Failed {
                plugin: self.name.clone(),
                function,
                message,
            }),
            Err(trap) => {
                self.poisoned = true;
                let plugin = self.name.clone();
                if trap.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                    let meter = &self.store.data().meter;
                    return Err(match meter.cause() {
                        Cause::Stopping => Error::Interrupted { plugin },
                        Cause::Budget => Error::Budget {
                            plugin,
                            function,
                            limit_ms: self.armed_ms,
                            used_ms: meter.used().as_millis() as u64,
                        },
                    });
                }
                if format!("{trap:#}").contains("forcing trap when growing memory") {
                    return Err(Error::Memory {
                        plugin,
                        function,
                        limit_mib: self.limits.memory_mib,
                    });
                }
                let stderr = self.store.data().stderr.contents();
                let stderr = String::from_utf8_lossy(&stderr);
                let detail = match stderr.trim() {
                    "" => format!("{trap:#}"),
                    said => format!("{trap:#}; the plugin wrote: {said}"),
                };
                Err(Error::Trap {
                    plugin,
                    function,
                    detail,
                })
            }
        }
    }

    fn wrong_role(&self, expected: Role) -> Error {
        Error::Role {
            plugin: self.name.clone(),
            expected,
            actual: self.role(),
        }
    }

    /// Runs a stage over `batch`.
    pub fn process(&mut self, batch: &Batch) -> Result<StageOutput, Error> {
        self.ready_to_change()?;
        let result = match &mut self.instance {
            Instance::Stage(s) => s.call_process(&mut self.store, batch),
            #[cfg(feature = "native")]
            Instance::NativeStage(s) => Ok(s
                .process(self.store.data_mut(), crate::native::batch(batch))
                .map(crate::native::output)),
            _ => return Err(self.wrong_role(Role::Stage)),
        };
        self.outcome("process", result)
    }

    /// Feeds `batch` to a metric.
    pub fn ingest(&mut self, batch: &Batch) -> Result<(), Error> {
        self.ready_to_change()?;
        let result = match &mut self.instance {
            Instance::Metric(m) => m.call_ingest(&mut self.store, batch),
            #[cfg(feature = "native")]
            Instance::NativeMetric(m) => {
                Ok(m.ingest(self.store.data_mut(), crate::native::batch(batch)))
            }
            _ => return Err(self.wrong_role(Role::Metric)),
        };
        self.outcome("ingest", result)
    }

    pub fn tick(&mut self, watermark: i64) -> Result<(), Error> {
        self.ready_to_change()?;
        let result = match &mut self.instance {
            Instance::Metric(m) => m.call_tick(&mut self.store, watermark),
            Instance::Stage(s) => s.call_tick(&mut self.store, watermark),
            #[cfg(feature = "native")]
            Instance::NativeMetric(m) => Ok(m.tick(self.store.data_mut(), watermark)),
            #[cfg(feature = "native")]
            Instance::NativeStage(s) => Ok(s.tick(self.store.data_mut(), watermark)),
        };
        self.outcome("tick", result)
    }

    /// Asks the plugin to hand over its state changes and returns every
    /// write pending since the last checkpoint. Its CPU budget is one per
    /// call since the last checkpoint: writing what many batches changed
    /// takes longer than any one of them.
    pub fn checkpoint(&mut self) -> Result<Vec<Write>, Error> {
        let calls = std::mem::take(&mut self.calls_since_checkpoint);
        self.ready(calls)?;
        let result = match &mut self.instance {
            Instance::Metric(m) => m.call_checkpoint(&mut self.store),
            Instance::Stage(s) => s.call_checkpoint(&mut self.store),
            #[cfg(feature = "native")]
            Instance::NativeMetric(m) => Ok(m.checkpoint(self.store.data_mut())),
            #[cfg(feature = "native")]
            Instance::NativeStage(s) => Ok(s.checkpoint(self.store.data_mut())),
        };
        self.outcome("checkpoint", result)?;
        Ok(self.store.data_mut().state.drain())
    }

    /// Asks a metric a query; returns its JSON text.
    pub fn query(&mut self, params: &[(String, String)]) -> Result<String, Error> {
        self.ready(1)?;
        let result = match &mut self.instance {
            Instance::Metric(m) => m.call_query(&mut self.store, params),
            #[cfg(feature = "native")]
            Instance::NativeMetric(m) => Ok(m.query(self.store.data_mut(), params.to_vec())),
            _ => return Err(self.wrong_role(Role::Metric)),
        };
        self.outcome("query", result)
    }

    /// Asks a metric to combine partial answers of `query` (one per
    /// partition) into the answer; returns its JSON text.
    pub fn merge(
        &mut self,
        params: &[(String, String)],
        partials: &[String],
    ) -> Result<String, Error> {
        self.ready(1)?;
        let result = match &mut self.instance {
            Instance::Metric(m) => m.call_merge(&mut self.store, params, partials),
            #[cfg(feature = "native")]
            Instance::NativeMetric(m) => {
                Ok(m.merge(self.store.data_mut(), params.to_vec(), partials.to_vec()))
            }
            _ => return Err(self.wrong_role(Role::Metric)),
        };
        self.outcome("merge", result)
    }
}
