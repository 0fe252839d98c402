//! The wasmtime engine, the linker, and the compiled-module cache.
//!
//! Plugins get the WIT imports (`state`, `log`) and a WASI that grants
//! nothing: no preopened directories, no environment or arguments, no
//! sockets or name lookups, clocks frozen at zero and seeded randomness. It
//! exists so components built by standard toolchains (whose language runtimes
//! import WASI) instantiate; it gives them no way out.
//!
//! Compiling a component costs from tens of milliseconds (Rust) to seconds
//! (Python, JS); the compiled artifact is cached on disk by the digest of the
//! component and the engine's configuration, so a restart deserializes it,
//! after checking the digest kept with it.

use std::{
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine,
    component::{Component, HasSelf, Linker},
};

use crate::{
    Error,
    bindings::{MetricPre, MetricWorld, StagePre},
    plugin::{PluginCtx, Role},
};

/// How often the engine's epoch advances: how often a running call's CPU
/// time is looked at (see [`crate::budget`]).
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine
/// lives.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("weft-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "Cannot start the epoch ticker: plugin CPU budgets will not interrupt.");
    }
}

/// Hex SHA-256 of a component's bytes: a version's identity.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The serialized component in a cache file, if its digest matches.
fn verified(file: &[u8]) -> Option<&[u8]> {
    let (digest, serialized) = file.split_at_checked(32)?;
    (Sha256::digest(serialized).as_slice() == digest).then_some(serialized)
}

/// A compiled component, ready to instantiate.
#[derive(Clone)]
pub struct Module {
    pub(crate) pre: Pre,
    /// Hex SHA-256 of the component's bytes: a version's identity.
    pub digest: String,
}

impl Module {
    pub fn role(&self) -> Role {
        match self.pre {
            Pre::Metric(_) => Role::Metric,
            Pre::Stage(_) => Role::Stage,
            #[cfg(feature = "native")]
            Pre::Native(_, role) => role,
        }
    }
}

/// The engine and linker shared by all plugin instances.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<PluginCtx>>,
    cache_dir: Option<PathBuf>,
    /// Set once the host stops: calls in progress are interrupted, new ones
    /// refused.
    pub(crate) stop: Arc<AtomicBool>,
    /// Native builds standing in for components, by the component's digest.
    #[cfg(feature = "native")]
    natives: Arc<std::collections::HashMap<String, crate::native::Build>>,
}

impl Runtime {
    /// A runtime; compiled modules are cached in `cache_dir` when given.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, wasmtime::Error> {
        Runtime::with_cpu_budgets(cache_dir, true)
    }

    /// Interrupts every plugin call in progress, within about 100 ms, and
    /// refuses new ones (they fail with [`Error::Interrupted`]): for a
    /// shutdown that must not wait for a plugin's whole budget.
    pub fn interrupt_calls(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A runtime whose plugins' calls are interrupted at their CPU budget
    /// (`true`, what `weft` runs) or never (`false`: what the benchmark
    /// harness compares against, to price the guard).
    pub fn with_cpu_budgets(
        cache_dir: Option<PathBuf>,
        budgets: bool,
    ) -> Result<Self, wasmtime::Error> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Plugins' CPU budgets: a call traps once its epoch deadline passes.
        config.epoch_interruption(budgets);
        let engine = Engine::new(&config)?;
        if budgets {
            spawn_ticker(&engine);
        }
        let mut linker = Linker::new(&engine);
        MetricWorld::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |ctx| ctx)?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache_dir,
            stop: Arc::default(),
            #[cfg(feature = "native")]
            natives: Default::default(),
        })
    }

    /// This runtime, running `build` (the same plugin compiled natively)
    /// wherever it is asked to load `component`.
    #[cfg(feature = "native")]
    pub fn with_native(mut self, component: &[u8], build: crate::native::Build) -> Self {
        Arc::make_mut(&mut self.natives).insert(digest(component), build);
        self
    }

    /// Compiles `bytes` (or loads the cached compilation) and finds its role.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Module, Error> {
        let digest = digest(bytes);
        #[cfg(feature = "native")]
        if let Some(&build) = self.natives.get(&digest) {
            let pre = Pre::Native(build, crate::native::role(build));
            return Ok(Module { pre, digest });
        }
        let component = match &self.cache_dir {
            Some(dir) => self.load_cached(name, bytes, &digest, dir)?,
            None => self.compile(name, bytes)?,
        };
        let pre = self.pre(name, &component)?;
        Ok(Module { pre, digest })
    }

    fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component, Error> {
        let started = std::time::Instant::now();
        tracing::info!(
            plugin = name,
            bytes = bytes.len(),
            "Compiling the component."
        );
        let component = Component::new(&self.engine, bytes).map_err(|source| Error::Compile {
            plugin: name.into(),
            source,
        })?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(plugin = name, seconds, "Compiled the component.");
        Ok(component)
    }

    /// The compiled component from the cache, else compiled and cached.
    ///
    /// A cache file is the SHA-256 of the serialized component followed by
    /// it; one whose digest does not match (a flipped bit, a truncated
    /// write) is discarded and compiled again: compiled code is executed, so
    /// only bytes weft wrote itself may be loaded.
    fn load_cached(
        &self,
        name: &str,
        bytes: &[u8],
        digest: &str,
        dir: &std::path::Path,
    ) -> Result<Component, Error> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let path = dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
        match std::fs::read(&path) {
            Ok(file) => match verified(&file) {
                // SAFETY: the bytes are what `Component::serialize` of this
                // engine configuration (the name carries its compatibility
                // hash) wrote, as their digest shows.
                Some(serialized) => {
                    match unsafe { Component::deserialize(&self.engine, serialized) } {
                        Ok(c) => return Ok(c),
                        Err(e) => {
                            tracing::warn!(plugin = name, path = %path.display(), error = %e, "Cached module unusable; recompiling.")
                        }
                    }
                }
                None => {
                    tracing::warn!(plugin = name, path = %path.display(), "Cached module is corrupt (its digest does not match); recompiling.")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(plugin = name, path = %path.display(), error = %e, "Cannot read the cached module; recompiling.")
            }
        }
        let component = self.compile(name, bytes)?;
        let cache_err = |source| Error::Cache {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(cache_err)?;
        match component.serialize() {
            Ok(serialized) => {
                let mut file = Sha256::digest(&serialized).to_vec();
                file.extend_from_slice(&serialized);
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, file).map_err(cache_err)?;
                std::fs::rename(&tmp, &path).map_err(cache_err)?;
            }
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "Cannot serialize the compiled module; it will be compiled again next start.")
            }
        }
        Ok(component)
    }

    /// Checks the component against both worlds; the one it fits is its role.
    fn pre(&self, name: &str, component: &Component) -> Result<Pre, Error> {
        let wrong = |detail: String| Error::WrongWorld {
            plugin: name.into(),
            detail,
        };
        let instance = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| wrong(format!("{e:#}")))?;
        let as_metric = match MetricPre::new(instance.clone()) {
            Ok(pre) => return Ok(Pre::Metric(pre)),
            Err(e) => e,
        };
        match StagePre::new(instance) {
            Ok(pre) => Ok(Pre::Stage(pre)),
            Err(as_stage) => Err(wrong(format!(
                "as a metric: {as_metric:#}; as a stage: {as_stage:#}"
            ))),
        }
    }
}

/// A component linked and type-checked against its world.
#[derive(Clone)]
pub(crate) enum Pre {
    Metric(MetricPre<PluginCtx>),
    Stage(StagePre<PluginCtx>),
    /// A native build (see [`Runtime::with_native`]), and its role.
    #[cfg(feature = "native")]
    Native(crate::native::Build, Role),
}

/// What `weft plugin check` reports about a component.
#[derive(Debug)]
pub struct Fit {
    /// What the component imports, e.g. `weft:plugin/state@0.2.0`.
    pub imports: Vec<String>,
    /// What it exports, functions with their types.
    pub exports: Vec<String>,
    /// Whether its imports are all provided (the WIT imports and WASI).
    pub linked: Result<(), String>,
    /// Whether it fits the `metric` world, or exactly why not.
    pub metric: Result<(), String>,
    /// Whether it fits the `stage` world, or exactly why not.
    pub stage: Result<(), String>,
}

impl Fit {
    /// The role whose world the component fits, if any.
    pub fn role(&self) -> Option<Role> {
        match (&self.metric, &self.stage) {
            (Ok(()), _) => Some(Role::Metric),
            (_, Ok(())) => Some(Role::Stage),
            _ => None,
        }
    }
}

impl Runtime {
    /// Compiles `bytes` and checks them against every role's world, saying
    /// what is missing or mistyped rather than only that something is.
    pub fn check(&self, bytes: &[u8]) -> Result<Fit, Error> {
        let component = self.compile("checked", bytes)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, item)| match item.ty {
                wasmtime::component::types::ComponentItem::ComponentFunc(f) => {
                    format!("{name}: {}", signature(&f))
                }
                _ => name.to_owned(),
            })
            .collect();
        let explain = |e: wasmtime::Error| format!("{e:#}");
        let exported: Vec<&str> = ty.exports(&self.engine).map(|(n, _)| n).collect();
        // wasmtime names the first missing export; say every one of them.
        let world = |role: Role, fits: Result<(), String>| {
            let missing: Vec<&str> = role
                .exports()
                .iter()
                .copied()
                .filter(|f| !exported.contains(f))
                .collect();
            fits.map_err(|why| match missing.as_slice() {
                [] => why,
                _ => format!("missing export(s) {}", missing.join(", ")),
            })
        };
        let (linked, metric, stage) = match self.linker.instantiate_pre(&component) {
            Ok(pre) => (
                Ok(()),
                world(
                    Role::Metric,
                    MetricPre::new(pre.clone()).map(drop).map_err(explain),
                ),
                world(Role::Stage, StagePre::new(pre).map(drop).map_err(explain)),
            ),
            Err(e) => {
                let why = explain(e);
                (Err(why.clone()), Err(why.clone()), Err(why))
            }
        };
        Ok(Fit {
            imports,
            exports,
            linked,
            metric,
            stage,
        })
    }
}

/// A component function's type, WIT-like: `func(a: T) -> R`.
fn signature(f: &wasmtime::component::types::ComponentFunc) -> String {
    let params: Vec<String> = f
        .params()
        .map(|(n, t)| format!("{n}: {}", wit_type(&t)))
        .collect();
    let results: Vec<String> = f.results().map(|t| wit_type(&t)).collect();
    match results.as_slice() {
        [] => format!("func({})", params.join(", ")),
        _ => format!("func({}) -> {}", params.join(", "), results.join(", ")),
    }
}

/// A value type as WIT would write it; records and variants spelled out.
fn wit_type(ty: &wasmtime::component::types::Type) -> String {
    use wasmtime::component::types::Type as T;
    let opt = |t: Option<T>| t.map_or_else(|| "_".to_owned(), |t| wit_type(&t));
    match ty {
        T::Bool => "bool".into(),
        T::S8 => "s8".into(),
        T::U8 => "u8".into(),
        T::S16 => "s16".into(),
        T::U16 => "u16".into(),
        T::S32 => "s32".into(),
        T::U32 => "u32".into(),
        T::S64 => "s64".into(),
        T::U64 => "u64".into(),
        T::Float32 => "f32".into(),
        T::Float64 => "f64".into(),
        T::Char => "char".into(),
        T::String => "string".into(),
        T::List(l) => format!("list<{}>", wit_type(&l.ty())),
        T::FixedLengthList(l) => format!("list<{}, {}>", wit_type(&l.ty()), l.len()),
        T::Map(m) => format!("map<{}, {}>", wit_type(&m.key()), wit_type(&m.value())),
        T::Record(r) => {
            let fields: Vec<String> = r
                .fields()
                .map(|f| format!("{}: {}", f.name, wit_type(&f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        T::Tuple(t) => {
            let types: Vec<String> = t.types().map(|t| wit_type(&t)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        T::Variant(v) => {
            let cases: Vec<String> = v
                .cases()
                .map(|c| match c.ty {
                    Some(t) => format!("{}({})", c.name, wit_type(&t)),
                    None => c.name.to_owned(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        T::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        T::Flags(f) => format!("flags {{ {} }}", f.names().collect::<Vec<_>>().join(", ")),
        T::Option(o) => format!("option<{}>", wit_type(&o.ty())),
        T::Result(r) => format!("result<{}, {}>", opt(r.ok()), opt(r.err())),
        T::Own(_) => "own<resource>".into(),
        T::Borrow(_) => "borrow<resource>".into(),
        T::Future(f) => format!("future<{}>", opt(f.ty())),
        T::Stream(s) => format!("stream<{}>", opt(s.ty())),
        T::ErrorContext => "error-context".into(),
    }
}
