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
//! The host splits the events into partitions by user, each with its own
//! instance of the metric. A query asks every partition's instance for a
//! partial answer ([`Metric::query`]), then combines the partials with
//! [`Metric::merge`]. The default `merge` adds the partials up
//! ([`merge::sum`]), so a metric whose answer is made of counts and sums
//! needs no `merge` of its own:
//!
//! ```
//! use weft_plugin::prelude::*;
//!
//! struct EventCounts(Map<u64>);
//!
//! impl Metric for EventCounts {
//!     fn init(_: Config) -> Result<Self> {
//!         Ok(EventCounts(Map::new("counts")))
//!     }
//!     fn ingest_event(&mut self, event: EventRef) {
//!         self.0.update(event.name(), |n| *n += 1);
//!     }
//!     fn query(&mut self, _: &Query) -> Result<Value> {
//!         Ok(json!({ "counts": self.0.entries() }))
//!     }
//! }
//! weft_plugin::export_metric!(EventCounts);
//! # // Natively, as the host runs it: three partitions, merged.
//! # let mut metric = weft_plugin::native::Partitioned::new(native_plugin, "{}", 3).unwrap();
//! # metric.ingest(&weft_plugin::native::sample_events(1, 5, 100)).unwrap();
//! # assert!(metric.query(&[]).unwrap().starts_with(r#"{"counts":{"add_to_cart":"#));
//! ```
//!
//! An answer with averages, rates, sorting or limits returns what combines
//! exactly from `query` (sums and counts, every key) and works out the rest
//! in its own `merge`:
//!
//! ```ignore
//! fn query(&mut self, _: &Query) -> Result<Value> {
//!     Ok(json!({ "sum": self.sum.get(), "count": self.count.get() }))
//! }
//! fn merge(_: &Query, partials: Vec<Value>) -> Result<Value> {
//!     let total = weft_plugin::merge::sum(partials)?;
//!     let (sum, count) = (total["sum"].as_f64().unwrap_or(0.0), total["count"].as_u64().unwrap_or(0));
//!     Ok(json!({ "mean": (count > 0).then(|| sum / count as f64) }))
//! }
//! ```
//!
//! Layout:
//! - [`batch`]: the typed view of an incoming batch and the builder of a stage's output;
//! - [`state`]: durable keyed state, cached in the guest;
//! - [`merge`]: combining partial answers (the default [`Metric::merge`]);
//! - [`prelude`]: the names most plugins use, for a glob import;
//! - [`log`]: log lines attributed to the plugin by the host;
//! - [`native`] (not in wasm builds): the plugin as a native library, for
//!   measuring what WebAssembly costs and for unit tests;
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
        world: "weft:plugin/imports@0.2.0",
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

pub mod prelude {
    //! What most plugins use, in one import: `use weft_plugin::prelude::*;`.

    pub use crate::{
        Batch, Cell, Config, Error, EventRef, Map, Metric, Output, Query, Result, Stage,
    };
    pub use serde_json::{Value, json};
}

pub mod merge {
    //! Combining the partial answers of a metric's partitions: [`sum`], the
    //! default [`Metric::merge`](crate::Metric::merge), and its parts for a
    //! plugin's own `merge`.

    use serde_json::{Map, Number, Value};

    use crate::{Error, Result};

    /// Adds partial answers up, deeply: objects key by key (a key missing
    /// from some partials is the sum of the others), numbers added (an
    /// integer sum stays an integer, `u64` or `i64`; a sum with any float is
    /// an `f64`, added in the partials' order), equal strings, booleans,
    /// nulls and arrays kept. Anything else that differs (two arrays, a
    /// string and a number) is an error naming where: such an answer needs
    /// its own `Metric::merge`.
    ///
    /// No partials at all is an error too (the host always gives one or more).
    pub fn sum(partials: Vec<Value>) -> Result<Value> {
        if partials.is_empty() {
            return Err(Error("no partial answers to merge".into()));
        }
        sum_at(partials, &mut String::from("$"))
    }

    /// Adds integers exactly (`u64` when the sum is not negative, else
    /// `i64`), otherwise as `f64`. `None` when one is not a number or an
    /// integer sum overflows both.
    pub fn add_numbers<'a>(numbers: impl IntoIterator<Item = &'a Number>) -> Option<Number> {
        let numbers: Vec<&Number> = numbers.into_iter().collect();
        let integers: Option<Vec<i128>> = numbers
            .iter()
            .map(|n| {
                n.as_u64()
                    .map(i128::from)
                    .or_else(|| n.as_i64().map(i128::from))
            })
            .collect();
        match integers {
            Some(integers) => {
                let total = integers
                    .into_iter()
                    .try_fold(0i128, |acc, n| acc.checked_add(n))?;
                match u64::try_from(total) {
                    Ok(n) => Some(n.into()),
                    Err(_) => i64::try_from(total).ok().map(Number::from),
                }
            }
            None => {
                let total = numbers.iter().map(|n| n.as_f64()).sum::<Option<f64>>()?;
                // Not finite (an overflow): no JSON number.
                Number::from_f64(total)
            }
        }
    }

    fn sum_at(mut values: Vec<Value>, path: &mut String) -> Result<Value> {
        if values.len() == 1 {
            return Ok(values.pop().expect("one value"));
        }
        if values.iter().all(Value::is_object) {
            let mut keys: Vec<Map<String, Value>> = values
                .into_iter()
                .map(|v| match v {
                    Value::Object(o) => o,
                    _ => unreachable!("checked above"),
                })
                .collect();
            let mut names: Vec<String> = keys.iter().flat_map(|o| o.keys().cloned()).collect();
            names.sort_unstable();
            names.dedup();
            let mut out = Map::new();
            for name in names {
                let parts: Vec<Value> = keys.iter_mut().filter_map(|o| o.remove(&name)).collect();
                let len = path.len();
                push_key(path, &name);
                let merged = sum_at(parts, path)?;
                path.truncate(len);
                out.insert(name, merged);
            }
            return Ok(Value::Object(out));
        }
        if values.iter().all(Value::is_number) {
            let numbers = values.iter().filter_map(|v| match v {
                Value::Number(n) => Some(n),
                _ => None,
            });
            return add_numbers(numbers).map(Value::Number).ok_or_else(|| {
                Error(format!(
                    "cannot merge the partial answers at `{path}`: the sum overflows; implement Metric::merge"
                ))
            });
        }
        let first = &values[0];
        match values[1..].iter().find(|v| *v != first) {
            None => Ok(values.swap_remove(0)),
            Some(other) => {
                let (a, b) = (kind(first), kind(other));
                let what = if a == b {
                    format!("two different {a}s")
                } else {
                    format!("{} {a} and {} {b}", article(a), article(b))
                };
                Err(Error(format!(
                    "cannot merge the partial answers at `{path}`: {what}; the default merge adds numbers and objects and keeps equal values: implement Metric::merge"
                )))
            }
        }
    }

    /// `$.name` for a plain name, else `$["name"]`.
    fn push_key(path: &mut String, name: &str) {
        let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain {
            path.push('.');
            path.push_str(name);
        } else {
            path.push('[');
            path.push_str(&Value::from(name).to_string());
            path.push(']');
        }
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn article(kind: &str) -> &'static str {
        match kind {
            "array" | "object" => "an",
            _ => "a",
        }
    }

    #[cfg(test)]
    mod tests {
        //! The default merge: what adds up, what is kept, what is refused.

        use serde_json::json;

        use super::sum;

        #[test]
        fn adds_objects_deeply_and_keeps_integers() {
            let got = sum(vec![
                json!({"counts": {"a": 1, "b": 2}, "name": "x", "on": true, "none": null}),
                json!({"counts": {"b": 3, "c": 4}, "name": "x", "on": true, "none": null}),
                json!({"counts": {}, "name": "x", "on": true, "none": null, "only": -2}),
            ])
            .unwrap();
            assert_eq!(
                got,
                json!({"counts": {"a": 1, "b": 5, "c": 4}, "name": "x", "on": true, "none": null, "only": -2})
            );
            assert_eq!(
                got.to_string(),
                r#"{"counts":{"a":1,"b":5,"c":4},"name":"x","none":null,"on":true,"only":-2}"#
            );
        }

        #[test]
        fn integers_stay_integers_and_floats_make_floats() {
            assert_eq!(
                sum(vec![json!(u64::MAX), json!(-1)]).unwrap(),
                json!(u64::MAX - 1)
            );
            assert_eq!(sum(vec![json!(-5), json!(2)]).unwrap(), json!(-3));
            assert!(sum(vec![json!(-5), json!(2)]).unwrap().is_i64());
            assert_eq!(sum(vec![json!(1), json!(0.5)]).unwrap(), json!(1.5));
            assert!(sum(vec![json!(u64::MAX), json!(1)]).is_err(), "overflow");
            assert_eq!(
                sum(vec![json!([1, 2]), json!([1, 2])]).unwrap(),
                json!([1, 2])
            );
            assert_eq!(sum(vec![json!({"a": 1})]).unwrap(), json!({"a": 1}));
            assert!(sum(vec![]).is_err());
        }

        #[test]
        fn what_does_not_add_up_is_an_error_naming_where() {
            let err = sum(vec![
                json!({"p": {"/a b": [1]}}),
                json!({"p": {"/a b": [2]}}),
            ])
            .unwrap_err();
            assert!(err.0.contains(r#"`$.p["/a b"]`"#), "{}", err.0);
            assert!(err.0.contains("two different arrays"), "{}", err.0);
            assert!(err.0.contains("implement Metric::merge"), "{}", err.0);
            let err = sum(vec![json!({"x": "1"}), json!({"x": 1})]).unwrap_err();
            assert!(err.0.contains("`$.x`: a string and a number"), "{}", err.0);
            assert!(sum(vec![json!({"x": "a"}), json!({"x": "b"})]).is_err());
            assert!(sum(vec![json!({"x": null}), json!({"x": 0})]).is_err());
        }
    }
}

/// A metric plugin: ingests batches, answers queries.
///
/// The host runs one instance per partition of the events (every event of
/// one user goes to the same partition). A query asks each instance for its
/// partial answer ([`query`](Metric::query)) and combines them with
/// [`merge`](Metric::merge); an answer with one partition goes through
/// `merge` too.
pub trait Metric: Sized + 'static {
    /// Builds the instance from its config. State containers created here
    /// find the state the host kept from earlier runs.
    fn init(config: Config) -> Result<Self>;
    /// Folds a batch of events (in event-time order) into the metric. By
    /// default, hands each event to [`ingest_event`](Metric::ingest_event).
    fn ingest(&mut self, batch: &Batch) -> Result<()> {
        for event in batch.events() {
            self.ingest_event(event);
        }
        Ok(())
    }
    /// Folds one event into the metric: what the default
    /// [`ingest`](Metric::ingest) calls for every event of a batch. A metric
    /// implements this one or `ingest` (which also sees the batch as a
    /// whole and may fail).
    fn ingest_event(&mut self, _event: EventRef<'_>) {}
    /// Event time has reached `watermark` (epoch ms): no older event follows.
    fn tick(&mut self, _watermark: i64) -> Result<()> {
        Ok(())
    }
    /// Answers a query for this instance's partition: a partial answer that
    /// [`merge`](Metric::merge) combines with the other partitions'. Carry
    /// what combines exactly: counts and sums (an average as its sum and
    /// count), every key of a top-N list (cut it in `merge`).
    fn query(&mut self, query: &Query) -> Result<serde_json::Value>;
    /// Combines the partial answers of [`query`](Metric::query) (one per
    /// partition, at least one, in no particular order) into the answer of
    /// the query. It sees nothing but its arguments: no `self`, no state,
    /// the config only as far as the partials carry it. For any split of the
    /// users into partitions, the answer must be that of all the events.
    ///
    /// By default the partials are added up ([`merge::sum`]): objects key
    /// by key, numbers added, equal values kept; anything else is an error.
    fn merge(_query: &Query, partials: Vec<serde_json::Value>) -> Result<serde_json::Value> {
        merge::sum(partials)
    }
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
            fn merge(
                params: Vec<(String, String)>,
                partials: Vec<String>,
            ) -> Result<String, String> {
                $crate::rt::merge(params, partials, <P as $crate::Metric>::merge)
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
