//! The leftover properties of a message: whatever was not consumed as a named field,
//! flattened into `(key, text)` pairs sorted by key.
//!
//! Sorting (rather than input order) keeps the output deterministic whether or not some
//! other crate in the build turns on serde_json's `preserve_order` feature.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Top-level leftovers plus the entries of a leftover `properties` object, one level deep.
/// A top-level key wins over a `properties` entry of the same name.
pub(crate) fn flatten(mut map: Map<String, Value>) -> Vec<(String, String)> {
    let nested = match map.remove("properties") {
        Some(Value::Object(nested)) => nested,
        // Not an object: an ordinary leftover like any other key.
        Some(other) => {
            map.insert("properties".to_owned(), other);
            Map::new()
        }
        None => Map::new(),
    };
    let mut props = BTreeMap::new();
    for (key, value) in map {
        if let Some(text) = text(value) {
            props.insert(key, text);
        }
    }
    for (key, value) in nested {
        if let Some(text) = text(value) {
            props.entry(key).or_insert(text);
        }
    }
    props.into_iter().collect()
}

/// Strings as-is, numbers and booleans as their JSON text, arrays and objects as compact
/// JSON; `None` for null.
fn text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}
