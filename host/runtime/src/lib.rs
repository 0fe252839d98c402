//! weft's plugin runtime: loads WebAssembly components written against the
//! `weft:plugin` WIT package, calls them in batches and serves their imports.
//!
//! Layout:
//! - [`bindings`]: the host bindings of the `stage` and `metric` worlds;
//! - [`engine`]: the wasmtime engine, the linker (the WIT imports plus a WASI
//!   that grants nothing) and the compiled-module cache;
//! - [`plugin`]: one plugin instance — its store, its role, its calls;
//! - `budget`: CPU budgets in the calling thread's CPU time, and
//!   interrupting calls when the host stops;
//! - the `state` import is served from `weft-state`'s pending writes over the
//!   durable store (a failed read traps the call, see [`Error::State`]);
//! - [`batch`]: building batches (one string table per batch) and applying a
//!   stage's output;
//! - `native` (feature `native`): plugins compiled natively standing in for
//!   their components, to measure what WebAssembly costs.

pub mod batch;
pub mod bindings;
mod budget;
pub mod engine;
#[cfg(feature = "native")]
pub mod native;
pub mod plugin;

pub use batch::{BatchBuilder, apply, events};
pub use bindings::{Batch, StageOutput};
pub use engine::{Module, Runtime, digest};
pub use plugin::{Limits, Plugin, Role};
pub use weft_state::{DurableState, Write};

/// What can go wrong loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin `{plugin}`: cannot compile the component: {source}")]
    Compile {
        plugin: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error(
        "plugin `{plugin}`: the component fits neither the `stage` nor the `metric` world: {detail}"
    )]
    WrongWorld { plugin: String, detail: String },
    #[error("plugin `{plugin}`: cannot instantiate: {source}")]
    Instantiate {
        plugin: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("plugin `{plugin}`: `{function}` trapped: {detail}")]
    Trap {
        plugin: String,
        function: &'static str,
        detail: String,
    },
    #[error("plugin `{plugin}`: `{function}` failed: {message}")]
    Failed {
        plugin: String,
        function: &'static str,
        message: String,
    },
    #[error(
        "plugin `{plugin}`: `{function}` exceeded its CPU budget of {limit_ms} ms (it used {used_ms} ms of CPU time)"
    )]
    Budget {
        plugin: String,
        function: &'static str,
        limit_ms: u64,
        used_ms: u64,
    },
    #[error("plugin `{plugin}`: its call was interrupted because the host is stopping")]
    Interrupted { plugin: String },
    #[error("plugin `{plugin}`: `{function}` exceeded its memory limit of {limit_mib} MiB")]
    Memory {
        plugin: String,
        function: &'static str,
        limit_mib: u64,
    },
    #[error("plugin `{plugin}`: `{function}` could not read its state: {source}")]
    State {
        plugin: String,
        function: &'static str,
        #[source]
        source: Box<weft_state::StateError>,
    },
    #[error("plugin `{plugin}` trapped earlier and must be restarted before it is called again")]
    Poisoned { plugin: String },
    #[error("plugin `{plugin}`: `process` returned a malformed batch: {detail}")]
    BadOutput { plugin: String, detail: String },
    #[error("plugin `{plugin}` has role {actual}, not {expected}")]
    Role {
        plugin: String,
        expected: Role,
        actual: Role,
    },
    #[error("compiled-module cache at {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
