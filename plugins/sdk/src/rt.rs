//! Glue between the generated export bindings and the [`Metric`](crate::Metric)
//! / [`Stage`](crate::Stage) traits. The export macros expand to calls into here.

use std::{cell::RefCell, thread::LocalKey};

use crate::{Config, Error, Query, Result};

/// Runs `init` with the parsed config and keeps the instance.
pub fn init<P: 'static>(
    slot: &'static LocalKey<RefCell<Option<P>>>,
    config: &str,
    init: fn(Config) -> Result<P>,
) -> Result<(), String> {
    let plugin = Config::parse(config).and_then(init).map_err(|Error(e)| e)?;
    slot.with(|s| *s.borrow_mut() = Some(plugin));
    Ok(())
}

/// Runs `f` on the instance; an error if `init` has not run.
pub fn with<P: 'static, T>(
    slot: &'static LocalKey<RefCell<Option<P>>>,
    f: impl FnOnce(&mut P) -> Result<T>,
) -> Result<T, String> {
    slot.with(|s| match s.borrow_mut().as_mut() {
        Some(p) => f(p).map_err(|Error(e)| e),
        None => Err("the plugin was called before init".to_string()),
    })
}

/// Hands every dirty state entry to the host.
pub fn checkpoint() -> Result<(), String> {
    crate::state::flush_all();
    Ok(())
}

/// Parses the partial answers, merges them with `merge` (a metric's
/// [`Metric::merge`](crate::Metric::merge)) and writes the answer.
pub fn merge(
    params: Vec<(String, String)>,
    partials: Vec<String>,
    merge: fn(&Query, Vec<serde_json::Value>) -> Result<serde_json::Value>,
) -> Result<String, String> {
    let run = || {
        let partials = partials
            .iter()
            .enumerate()
            .map(|(i, text)| {
                serde_json::from_str(text)
                    .map_err(|e| Error(format!("partial answer {i} is not JSON: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let value = merge(&Query(params), partials)?;
        Ok(serde_json::to_string(&value)?)
    };
    run().map_err(|Error(e)| e)
}
