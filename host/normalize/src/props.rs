//! The leftover properties of a message: whatever was not consumed as a named field,
//! flattened into `(key, text)` pairs sorted by key.
//!
//! Sorting (rather than input order) keeps the output deterministic whether or not some
//! other crate in the build turns on serde_json's `preserve_order` feature.

use std::collections::BTreeMap;

use crate::object::{Members, Node};

/// Top-level leftovers plus the entries of a leftover `properties` object, one level deep.
/// A top-level key wins over a `properties` entry of the same name.
pub(crate) fn flatten(object: Members<'_>) -> Vec<(String, String)> {
    let mut top = object.into_unique();
    let nested = match top.remove("properties") {
        Some(Node::Object(nested)) => nested.into_unique(),
        // Not an object: an ordinary leftover like any other key.
        Some(other) => {
            top.insert("properties".into(), other);
            BTreeMap::new()
        }
        None => BTreeMap::new(),
    };
    let mut props = BTreeMap::new();
    for (key, value) in top {
        if let Some(text) = text(value) {
            props.insert(key.into_owned(), text);
        }
    }
    for (key, value) in nested {
        if let Some(text) = text(value) {
            props.entry(key.into_owned()).or_insert(text);
        }
    }
    props.into_iter().collect()
}

/// Strings as-is, numbers and booleans as their JSON text, arrays and objects as compact
/// JSON; `None` for null.
fn text(value: Node<'_>) -> Option<String> {
    match value {
        Node::Text(s) => Some(s.into_owned()),
        Node::Other(serde_json::Value::Null) => None,
        Node::Other(other) => Some(other.to_string()),
        object @ Node::Object(_) => Some(object.to_value().to_string()),
    }
}
