//! The Rust SDK for weft plugins.
//!
//! A plugin is a WebAssembly component in one of two roles:
//! - a **metric** ([`Metric`]) ingests batches of events and answers queries
//!   with JSON;
//! - a **stage** ([`Stage`]) receives a batch and returns a batch (the
//!   sessionizer, filters, enrichers).
//!
//! Implement the trait, then export it with [`export_metric!`] or
//! [`export_stage!`]. The SDK hides the WIT bindings: batches arrive as a
//! typed view ([`Batch`], [`EventRef`]) over the batch's string table, and
//! durable state lives in [`Map`] and [`Cell`] containers that the SDK caches
//! in the guest and hands to the host at every checkpoint.
//!
//! ```ignore
//! use weft_plugin::{Batch, Cell, Config, Metric, Query, Result};
//! use std::collections::BTreeMap;
//!
//! struct EventCounts { counts: Cell<BTreeMap<String, u64>> }
//!
//! impl Metric for EventCounts {
//!     fn init(_: Config) -> Result<Self> { Ok(Self { counts: Cell::new("counts") }) }
//!     fn ingest(&mut self, batch: &Batch) -> Result<()> {
//!         self.counts.update(|c| for e in batch.events() { *c.entry(e.name().into()).or_default() += 1 });
//!         Ok(())
//!     }
//!     fn query(&mut self, _: &Query) -> Result<serde_json::Value> {
//!         Ok(serde_json::json!({ "counts": self.counts.get() }))
//!     }
//! }
//! weft_plugin::export_metric!(EventCounts);
//! ```
//!
//! Layout:
//! - [`batch`]: the typed view of an incoming batch and the builder of a stage's output;
//! - [`state`]: durable keyed state, cached in the guest;
//! - [`log`]: log lines attributed to the plugin by the host;
//! - [`native`] (not in wasm builds): the plugin as a native library, for
//!   measuring what WebAssembly costs;
//! - `rt` (hidden): the glue the export macros expand to.

pub mod batch;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
#[doc(hidden)]
pub mod rt;
pub mod state;

/// The host's imports: the WIT bindings in a component; in a native build,
/// the host of the call in progress.
mod host {
    #[cfg(target_arch = "wasm32")]
    pub(crate) use crate::bindings::weft::plugin::{
        log::log,
        state::{delete, get, scan, set},
    };
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) use crate::native::{delete, get, log, scan, set};
}

pub use batch::{Batch, EventMut, EventRef, Output};
pub use serde_json;
pub use state::{Cell, Map};

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings of the `imports` world: the host's state and log interfaces and
/// the batch types shared by every role.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "weft:plugin/imports@0.1.0",
        generate_unused_types: true,
    });
}

include!(concat!(env!("OUT_DIR"), "/generate.rs"));

/// An error a plugin returns to the host; the host reports it with the
/// plugin's name and the function that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The instance's config: the JSON object from the host's pipeline config.
#[derive(Debug, Clone)]
pub struct Config(serde_json::Value);

impl Config {
    #[doc(hidden)]
    pub fn parse(text: &str) -> Result<Self> {
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(text).map_err(|e| Error(format!("config is not JSON: {e}")))?
        };
        Ok(Config(value))
    }

    /// Deserializes the config into the plugin's own settings type; fields
    /// missing from the config take their `#[serde(default)]`.
    pub fn get<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.0.clone()).map_err(|e| Error(format!("bad config: {e}")))
    }

    pub fn json(&self) -> &serde_json::Value {
        &self.0
    }
}

/// Query parameters, as given to `GET /api/plugins/{name}/query?…`.
#[derive(Debug, Clone, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A metric plugin: ingests batches, answers queries.
pub trait Metric: Sized + 'static {
    /// Builds the instance from its config. State containers created here
    /// find the state the host kept from earlier runs.
    fn init(config: Config) -> Result<Self>;
    /// Folds a batch of events (in event-time order) into the metric.
    fn ingest(&mut self, batch: &Batch) -> Result<()>;
    /// Event time has reached `watermark` (epoch ms): no older event follows.
    fn tick(&mut self, _watermark: i64) -> Result<()> {
        Ok(())
    }
    /// Answers a query with a JSON document.
    fn query(&mut self, query: &Query) -> Result<serde_json::Value>;
}

/// A stage plugin: transforms a batch on its way to the metrics.
pub trait Stage: Sized + 'static {
    fn init(config: Config) -> Result<Self>;
    /// Pushes the events that go on to `out`, edited as needed.
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()>;
    /// Event time has reached `watermark` (epoch ms): no older event follows.
    fn tick(&mut self, _watermark: i64) -> Result<()> {
        Ok(())
    }
}

/// Exports a [`Metric`] implementation as this component's `metric` world.
#[macro_export]
macro_rules! export_metric {
    ($ty:ty) => {
        $crate::__export!($ty, metric, $crate::Metric, {
            fn ingest(batch: Batch) -> Result<(), String> {
                $crate::rt::with(&PLUGIN, |p| {
                    let batch = $crate::Batch::new(batch)?;
                    <P as $crate::Metric>::ingest(p, &batch)
                })
            }
            fn query(params: Vec<(String, String)>) -> Result<String, String> {
                $crate::rt::with(&PLUGIN, |p| {
                    let value = <P as $crate::Metric>::query(p, &$crate::Query(params))?;
                    Ok($crate::serde_json::to_string(&value)?)
                })
            }
        });
    };
}

/// Exports a [`Stage`] implementation as this component's `stage` world.
#[macro_export]
macro_rules! export_stage {
    ($ty:ty) => {
        $crate::__export!($ty, stage, $crate::Stage, {
            fn process(batch: Batch) -> Result<StageOutput, String> {
                $crate::rt::with(&PLUGIN, |p| {
                    let batch = $crate::Batch::new(batch)?;
                    let mut out = $crate::Output::new(&batch);
                    <P as $crate::Stage>::process(p, &batch, &mut out)?;
                    Ok(out.finish())
                })
            }
        });
    };
}

/// What both export macros expand to: in a component, the world's bindings,
/// the instance slot, and the functions every role has; in a native build,
/// `native_plugin()`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($ty:ty, $world:ident, $role:path, { $($functions:tt)* }) => {
        #[doc(hidden)]
        type __WeftPlugin = $ty;

        /// This plugin built natively (see `weft_plugin::native`).
        #[cfg(not(target_arch = "wasm32"))]
        pub fn native_plugin() -> $crate::native::Instance {
            $crate::native::$world::<__WeftPlugin>()
        }

        #[doc(hidden)]
        #[cfg(target_arch = "wasm32")]
        #[allow(clippy::too_many_arguments)]
        mod __weft_export {
            $crate::__generate!($world);

            type P = super::__WeftPlugin;
            ::std::thread_local! {
                static PLUGIN: ::std::cell::RefCell<Option<P>> = const { ::std::cell::RefCell::new(None) };
            }

            struct Component;
            impl Guest for Component {
                fn init(config: String) -> Result<(), String> {
                    $crate::rt::init::<P>(&PLUGIN, &config, <P as $role>::init)
                }
                fn tick(watermark: i64) -> Result<(), String> {
                    $crate::rt::with(&PLUGIN, |p| <P as $role>::tick(p, watermark))
                }
                fn checkpoint() -> Result<(), String> {
                    $crate::rt::checkpoint()
                }
                $($functions)*
            }
            export!(Component);
        }
    };
}
