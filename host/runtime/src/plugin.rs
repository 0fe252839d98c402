//! One plugin instance: its store, its role, and the calls the pipeline makes.
//!
//! Errors a plugin returns (`result<_, string>`) and traps are both reported
//! with the plugin's name and the function; a trap also carries whatever the
//! guest wrote to stderr (a Rust panic message, a Python traceback).

use std::{fmt, sync::Arc, time::Duration};

use wasmtime::{Store, component::ResourceTable};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView, p2::pipe::MemoryOutputPipe,
};

use crate::{
    Error,
    bindings::{
        Batch, Entry, Level, LogHost, MetricWorld, StageOutput, StageWorld, StateHost, TypesHost,
    },
    engine::{Module, Pre, Runtime},
    state::{DurableState, PendingState, Write},
};

/// A plugin's role: which world it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Stage,
    Metric,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Stage => "stage",
            Role::Metric => "metric",
        })
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
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StateHost for PluginCtx {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.state.get(&key)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.state.set(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.state.delete(key);
    }

    fn scan(&mut self, prefix: Vec<u8>, after: Option<Vec<u8>>, limit: u32) -> Vec<Entry> {
        self.state
            .scan(&prefix, after.as_deref(), limit as usize)
            .into_iter()
            .map(|(key, value)| Entry { key, value })
            .collect()
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

enum Instance {
    Metric(MetricWorld),
    Stage(StageWorld),
}

/// A running plugin instance.
pub struct Plugin {
    name: String,
    digest: String,
    store: Store<PluginCtx>,
    instance: Instance,
}

impl Plugin {
    /// Instantiates `module` over its durable state and calls `init(config)`.
    pub fn start(
        runtime: &Runtime,
        name: &str,
        module: &Module,
        durable: Arc<dyn DurableState>,
        config: &str,
    ) -> Result<Self, Error> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let ctx = PluginCtx {
            name: name.to_owned(),
            state: PendingState::new(durable),
            wasi: sandbox(stderr.clone()),
            table: ResourceTable::new(),
            stderr,
        };
        let mut store = Store::new(&runtime.engine, ctx);
        let instantiate = |source| Error::Instantiate {
            plugin: name.into(),
            source,
        };
        let instance = match &module.pre {
            Pre::Metric(pre) => Instance::Metric(pre.instantiate(&mut store).map_err(instantiate)?),
            Pre::Stage(pre) => Instance::Stage(pre.instantiate(&mut store).map_err(instantiate)?),
        };
        let mut plugin = Plugin {
            name: name.to_owned(),
            digest: module.digest.clone(),
            store,
            instance,
        };
        let result = match &plugin.instance {
            Instance::Metric(m) => m.call_init(&mut plugin.store, config),
            Instance::Stage(s) => s.call_init(&mut plugin.store, config),
        };
        plugin.outcome("init", result)?;
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn role(&self) -> Role {
        match self.instance {
            Instance::Metric(_) => Role::Metric,
            Instance::Stage(_) => Role::Stage,
        }
    }

    /// Turns a call's outcome into this crate's error, naming the plugin.
    fn outcome<T>(
        &mut self,
        function: &'static str,
        result: wasmtime::Result<Result<T, String>>,
    ) -> Result<T, Error> {
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(Error::Failed {
                plugin: self.name.clone(),
                function,
                message,
            }),
            Err(trap) => {
                let stderr = self.store.data().stderr.contents();
                let stderr = String::from_utf8_lossy(&stderr);
                let detail = match stderr.trim() {
                    "" => format!("{trap:#}"),
                    said => format!("{trap:#}; the plugin wrote: {said}"),
                };
                Err(Error::Trap {
                    plugin: self.name.clone(),
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
        let Instance::Stage(s) = &self.instance else {
            return Err(self.wrong_role(Role::Stage));
        };
        let result = s.call_process(&mut self.store, batch);
        self.outcome("process", result)
    }

    /// Feeds `batch` to a metric.
    pub fn ingest(&mut self, batch: &Batch) -> Result<(), Error> {
        let Instance::Metric(m) = &self.instance else {
            return Err(self.wrong_role(Role::Metric));
        };
        let result = m.call_ingest(&mut self.store, batch);
        self.outcome("ingest", result)
    }

    pub fn tick(&mut self, watermark: i64) -> Result<(), Error> {
        let result = match &self.instance {
            Instance::Metric(m) => m.call_tick(&mut self.store, watermark),
            Instance::Stage(s) => s.call_tick(&mut self.store, watermark),
        };
        self.outcome("tick", result)
    }

    /// Asks the plugin to hand over its state changes and returns every
    /// write pending since the last checkpoint.
    pub fn checkpoint(&mut self) -> Result<Vec<Write>, Error> {
        let result = match &self.instance {
            Instance::Metric(m) => m.call_checkpoint(&mut self.store),
            Instance::Stage(s) => s.call_checkpoint(&mut self.store),
        };
        self.outcome("checkpoint", result)?;
        Ok(self.store.data_mut().state.drain())
    }

    /// Asks a metric a query; returns its JSON text.
    pub fn query(&mut self, params: &[(String, String)]) -> Result<String, Error> {
        let Instance::Metric(m) = &self.instance else {
            return Err(self.wrong_role(Role::Metric));
        };
        let result = m.call_query(&mut self.store, params);
        self.outcome("query", result)
    }
}
