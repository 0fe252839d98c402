//! A plugin compiled natively instead of to WebAssembly: the same
//! [`Metric`] or [`Stage`] implementation, called by a host in the same
//! process. It exists to measure what WebAssembly costs (`BENCHMARKS.md`,
//! the WASM tax): the host runs the native build where it would run the
//! component, through the same calls.
//!
//! Built for any target but `wasm32`, [`export_metric!`](crate::export_metric)
//! and [`export_stage!`](crate::export_stage) give the plugin crate a
//! `pub fn native_plugin() -> weft_plugin::native::Instance` instead of the
//! component's exports. Each call takes the [`Host`] that serves the
//! plugin's `state` and `log` imports for the duration of the call.
//!
//! The instance owns its plugin value and the plugin's state containers;
//! between calls nothing of it is left in thread-locals, so it may move to
//! another thread with everything it holds (hence the `Send` below). A plugin
//! type must not share its own `Rc`s outside itself (in a `thread_local!`,
//! say) to be built natively.

use std::{cell::Cell, ptr::NonNull};

pub use crate::bindings::weft::plugin::{
    log::Level,
    state::Entry,
    types::{Batch, StageOutput},
};
use crate::{Config, Error, Metric, Output, Query, Stage, state};

/// What the host provides a native plugin: the WIT `state` and `log` imports.
pub trait Host {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    fn set(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
    fn scan(&mut self, prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry>;
    fn log(&mut self, level: Level, message: &str);
}

/// A native plugin instance, by role.
pub enum Instance {
    Metric(Box<dyn MetricInstance>),
    Stage(Box<dyn StageInstance>),
}

/// The calls both worlds export.
pub trait Calls: Send {
    fn init(&mut self, host: &mut dyn Host, config: &str) -> Result<(), String>;
    fn tick(&mut self, host: &mut dyn Host, watermark: i64) -> Result<(), String>;
    fn checkpoint(&mut self, host: &mut dyn Host) -> Result<(), String>;
}

/// The `metric` world's calls.
pub trait MetricInstance: Calls {
    fn ingest(&mut self, host: &mut dyn Host, batch: Batch) -> Result<(), String>;
    fn query(
        &mut self,
        host: &mut dyn Host,
        params: Vec<(String, String)>,
    ) -> Result<String, String>;
}

/// The `stage` world's calls.
pub trait StageInstance: Calls {
    fn process(&mut self, host: &mut dyn Host, batch: Batch) -> Result<StageOutput, String>;
}

/// A native [`Metric`].
pub fn metric<P: Metric>() -> Instance {
    Instance::Metric(Box::new(Native::new(
        <P as Metric>::init,
        <P as Metric>::tick,
    )))
}

/// A native [`Stage`].
pub fn stage<P: Stage>() -> Instance {
    Instance::Stage(Box::new(Native::new(
        <P as Stage>::init,
        <P as Stage>::tick,
    )))
}

thread_local! {
    /// The host of the call in progress on this thread, set by [`enter`].
    static HOST: Cell<Option<NonNull<dyn Host>>> = const { Cell::new(None) };
}

/// Runs `f` with the host of the call in progress.
fn with_host<T>(f: impl FnOnce(&mut dyn Host) -> T) -> T {
    // Taken out while in use: a reentrant use panics instead of aliasing.
    let mut host = HOST
        .take()
        .expect("a weft state or log call outside a plugin call");
    // SAFETY: `enter` stored a pointer from a `&mut dyn Host` borrowed for
    // the whole call in progress, and `Entered` clears it before that call
    // returns; nothing else holds it while it is out of the cell.
    let result = f(unsafe { host.as_mut() });
    HOST.set(Some(host));
    result
}

pub(crate) fn get(key: &[u8]) -> Option<Vec<u8>> {
    with_host(|h| h.get(key))
}

pub(crate) fn set(key: &[u8], value: &[u8]) {
    with_host(|h| h.set(key, value))
}

pub(crate) fn delete(key: &[u8]) {
    with_host(|h| h.delete(key))
}

pub(crate) fn scan(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
    with_host(|h| h.scan(prefix, after, limit))
}

pub(crate) fn log(level: Level, message: &str) {
    with_host(|h| h.log(level, message))
}

/// A plugin value with its state containers, between calls, and its role's
/// `init` and `tick` (a type could implement both roles).
struct Native<P> {
    plugin: Option<P>,
    containers: state::Containers,
    init: fn(Config) -> crate::Result<P>,
    tick: fn(&mut P, i64) -> crate::Result<()>,
}

impl<P> Native<P> {
    fn new(
        init: fn(Config) -> crate::Result<P>,
        tick: fn(&mut P, i64) -> crate::Result<()>,
    ) -> Self {
        Native {
            plugin: None,
            containers: Default::default(),
            init,
            tick,
        }
    }
}

// SAFETY: the only `!Send` parts are the plugin's state containers, `Rc`s
// shared between `plugin` and `containers` and, during a call, this thread's
// container registry; `Entered` moves them back here before a call returns,
// so the whole graph of `Rc`s moves between threads together.
unsafe impl<P> Send for Native<P> {}

/// A call in progress: this instance's host and containers are the thread's.
struct Entered<'a> {
    containers: &'a mut state::Containers,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        HOST.set(None);
        state::swap_containers(self.containers);
    }
}

fn enter<'a>(host: &'a mut dyn Host, containers: &'a mut state::Containers) -> Entered<'a> {
    let host = NonNull::from(host);
    // SAFETY: only the lifetime is erased; `Entered` (which borrows the host
    // for 'a) clears the pointer when dropped.
    let host: NonNull<dyn Host> = unsafe { std::mem::transmute(host) };
    HOST.set(Some(host));
    state::swap_containers(containers);
    Entered { containers }
}

impl<P: 'static> Native<P> {
    /// Runs `f` on the plugin within a call.
    fn call<T>(
        &mut self,
        host: &mut dyn Host,
        f: impl FnOnce(&mut P) -> crate::Result<T>,
    ) -> Result<T, String> {
        let _entered = enter(host, &mut self.containers);
        match self.plugin.as_mut() {
            Some(p) => f(p).map_err(|Error(e)| e),
            None => Err("the plugin was called before init".to_string()),
        }
    }
}

impl<P: 'static> Calls for Native<P> {
    fn init(&mut self, host: &mut dyn Host, config: &str) -> Result<(), String> {
        let _entered = enter(host, &mut self.containers);
        let plugin = Config::parse(config)
            .and_then(self.init)
            .map_err(|Error(e)| e)?;
        self.plugin = Some(plugin);
        Ok(())
    }

    fn tick(&mut self, host: &mut dyn Host, watermark: i64) -> Result<(), String> {
        let tick = self.tick;
        self.call(host, |p| tick(p, watermark))
    }

    fn checkpoint(&mut self, host: &mut dyn Host) -> Result<(), String> {
        self.call(host, |_| {
            state::flush_all();
            Ok(())
        })
    }
}

impl<P: Metric> MetricInstance for Native<P> {
    fn ingest(&mut self, host: &mut dyn Host, batch: Batch) -> Result<(), String> {
        self.call(host, |p| p.ingest(&crate::Batch::new(batch)?))
    }

    fn query(
        &mut self,
        host: &mut dyn Host,
        params: Vec<(String, String)>,
    ) -> Result<String, String> {
        self.call(host, |p| {
            let value = p.query(&Query(params))?;
            Ok(serde_json::to_string(&value)?)
        })
    }
}

impl<P: Stage> StageInstance for Native<P> {
    fn process(&mut self, host: &mut dyn Host, batch: Batch) -> Result<StageOutput, String> {
        self.call(host, |p| {
            let batch = crate::Batch::new(batch)?;
            let mut out = Output::new(&batch);
            p.process(&batch, &mut out)?;
            Ok(out.finish())
        })
    }
}
