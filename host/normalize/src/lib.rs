//! Turns one raw clickstream message (the bytes of one JSON object) into a normalized
//! [`Event`], or a [`Rejection`] saying why the message cannot be used.
//!
//! Fields are resolved generically rather than by guessing the input shape: every output
//! field has a list of candidate keys (dotted paths into the object) and the first one that
//! is present with a non-null value wins. The candidates cover the common shapes out of the
//! box; a [`FieldMapping`] from the config file replaces the list for any field it sets.
//! Whatever is not consumed as a named field ends up in [`Event::props`].
//!
//! Checks run in a fixed order, so a message with several problems is always rejected for
//! the first one: not JSON, not an object, missing user, missing event name, missing or bad
//! time (see [`Reason`]).
//!
//! [`Normalizer::normalize`] never panics, whatever the bytes.

mod agent;
mod fields;
mod object;
mod props;
mod time;

#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::Value;

use agent::AgentCache;
use fields::{Candidates, FieldPaths};
use object::{Members, Node};
use time::TimeError;

/// One normalized event. Absent string fields are "" (empty).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// `event_id`, "" if absent.
    pub id: String,
    /// Event time, epoch milliseconds UTC.
    pub time: i64,
    pub user: String,
    /// Event name.
    pub name: String,
    /// Session id from the input, "" if absent.
    pub session: String,
    pub path: String,
    /// An explicit platform/device field, else the device class from the user agent.
    pub device: String,
    pub browser: String,
    pub os: String,
    /// Properties not consumed as named fields, sorted by key: the leftover top-level keys
    /// plus the leftover entries of a `properties` object (a top-level key wins over a
    /// `properties` entry of the same name). Strings are kept as-is, numbers and booleans
    /// become their JSON text, arrays and objects compact JSON; nulls are dropped.
    pub props: Vec<(String, String)>,
}

/// Why a message was not turned into an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .reason.code(), .detail)]
pub struct Rejection {
    pub reason: Reason,
    /// Human readable, e.g. ``field `ts`: "yesterday" is not epoch ms, epoch s or RFC 3339``.
    pub detail: String,
}

/// Rejection reasons, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NotJson,
    NotObject,
    MissingUser,
    MissingEvent,
    MissingTime,
    BadTime,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::NotJson,
        Reason::NotObject,
        Reason::MissingUser,
        Reason::MissingEvent,
        Reason::MissingTime,
        Reason::BadTime,
    ];

    /// Stable snake_case code, suitable for metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotJson => "not_json",
            Reason::NotObject => "not_object",
            Reason::MissingUser => "missing_user",
            Reason::MissingEvent => "missing_event",
            Reason::MissingTime => "missing_time",
            Reason::BadTime => "bad_time",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Optional field mapping from the config file for input shapes not recognised out of the box.
/// Each value is a dotted path into the JSON object (e.g. "props.uid", "meta.ts"); when set it
/// replaces the built-in candidate keys for that field.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    pub id: Option<String>,
    pub time: Option<String>,
    pub user: Option<String>,
    pub event: Option<String>,
    pub session: Option<String>,
    pub path: Option<String>,
    pub device: Option<String>,
    pub user_agent: Option<String>,
    /// "auto" (default), "ms", "s", "rfc3339"
    pub time_format: Option<TimeFormat>,
}

/// How the time field is read.
///
/// `Auto` accepts a JSON number or a string of digits (optionally with a fraction): a value
/// below 100_000_000_000 (1e11) is epoch **seconds**, anything else epoch milliseconds.
/// 1e11 s is in the year 5138 while 1e11 ms is March 1973, so real event times are never
/// ambiguous. Fractions are rounded down to the millisecond. Any other string is tried as
/// RFC 3339 (with offset), then as a naive `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DDTHH:MM:SS`
/// with optional fraction, read as UTC.
///
/// `Ms` and `S` force the unit of a number or digit string; `Rfc3339` accepts only date-time
/// strings (RFC 3339, or the naive forms above read as UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeFormat {
    #[default]
    Auto,
    Ms,
    S,
    Rfc3339,
}

/// Normalizes messages; holds the field mapping and a bounded user-agent cache, so keep one
/// per worker and reuse it.
pub struct Normalizer {
    paths: FieldPaths,
    time_format: TimeFormat,
    agents: AgentCache,
}

/// Longest serde_json message or offending value quoted in a rejection detail.
const MAX_DETAIL_VALUE: usize = 120;

impl Normalizer {
    /// A normalizer reading fields as `mapping` says (use `FieldMapping::default()` for the
    /// built-in candidates only).
    pub fn new(mapping: FieldMapping) -> Self {
        Normalizer {
            paths: FieldPaths::new(&mapping),
            time_format: mapping.time_format.unwrap_or_default(),
            agents: AgentCache::new(),
        }
    }

    /// The user [`Normalizer::normalize`] finds in a message, read without
    /// parsing the rest of it (only the user's candidates are parsed, every
    /// other member is skipped): what
    /// routes a message to its user's partition. `None` when normalizing
    /// would reject the message before or at its user.
    pub fn user_of(&self, raw: &[u8]) -> Option<String> {
        let found = fields::skim(raw, &self.paths.user)?;
        let (_, user) = text(&found, &self.paths.user, Reason::MissingUser, "user", true).ok()?;
        Some(user)
    }

    /// Normalizes one message, or says why it cannot be used. Never panics.
    pub fn normalize(&mut self, raw: &[u8]) -> Result<Event, Rejection> {
        let mut map = match serde_json::from_slice::<Node>(raw) {
            Ok(Node::Object(members)) => members,
            _ => return Err(unreadable(raw)),
        };

        let p = &self.paths;
        let user = required(&mut map, &p.user, Reason::MissingUser, "user", true)?;
        let name = required(
            &mut map,
            &p.event,
            Reason::MissingEvent,
            "event name",
            false,
        )?;
        let time = event_time(&mut map, &p.time, self.time_format)?;

        let id = optional(&mut map, &p.id);
        let session = optional(&mut map, &p.session);
        let path = optional(&mut map, &p.path);
        let explicit_device = optional(&mut map, &p.device);
        let user_agent = optional(&mut map, &p.user_agent);

        let agent = self.agents.lookup(&user_agent);
        let device = if explicit_device.is_empty() {
            agent.device.to_owned()
        } else {
            explicit_device
        };

        Ok(Event {
            id,
            time,
            user,
            name,
            session,
            path,
            device,
            browser: agent.browser,
            os: agent.os,
            props: props::flatten(map),
        })
    }
}

/// Why `raw`, which is not a JSON object, was rejected: the reason and
/// detail serde_json's own value parser gives.
fn unreadable(raw: &[u8]) -> Rejection {
    match serde_json::from_slice::<Value>(raw) {
        Err(e) => reject(Reason::NotJson, clip(&e.to_string(), MAX_DETAIL_VALUE)),
        Ok(other) => {
            let detail = format!("expected a JSON object, got {}", kind(&other));
            reject(Reason::NotObject, detail)
        }
    }
}

fn reject(reason: Reason, detail: String) -> Rejection {
    Rejection { reason, detail }
}

/// A mandatory text field, consumed: see [`text`].
fn required(
    map: &mut Members<'_>,
    candidates: &Candidates,
    reason: Reason,
    what: &str,
    integer_ok: bool,
) -> Result<String, Rejection> {
    let (path, text) = text(map, candidates, reason, what, integer_ok)?;
    fields::take(map, path);
    Ok(text)
}

/// A mandatory text field: a non-empty string, or (if `integer_ok`) an integer as its decimal
/// text. The first non-null candidate decides; a bad or empty value is not skipped over.
fn text<'c>(
    map: &Members<'_>,
    candidates: &'c Candidates,
    reason: Reason,
    what: &str,
    integer_ok: bool,
) -> Result<(&'c fields::Path, String), Rejection> {
    let Some((path, value)) = candidates.first(map) else {
        let detail = format!("no {what} field (tried {})", candidates.names());
        return Err(reject(reason, detail));
    };
    let text = match value {
        Node::Text(s) if s.is_empty() => {
            return Err(reject(reason, format!("field `{}` is empty", path.name())));
        }
        Node::Text(s) => s.as_ref().to_owned(),
        Node::Other(Value::Number(n)) if integer_ok && (n.is_i64() || n.is_u64()) => n.to_string(),
        other => {
            let expected = if integer_ok {
                "a string or an integer"
            } else {
                "a string"
            };
            let detail = format!(
                "field `{}`: expected {expected}, got {}",
                path.name(),
                show(&other.to_value())
            );
            return Err(reject(reason, detail));
        }
    };
    Ok((path, text))
}

/// An optional text field: a string as-is or a number as its JSON text. Any other type
/// leaves the field "" and the value in place, so it still shows up in the props.
fn optional(map: &mut Members<'_>, candidates: &Candidates) -> String {
    let Some((path, value)) = candidates.first(map) else {
        return String::new();
    };
    let text = match value {
        Node::Text(s) => s.as_ref().to_owned(),
        Node::Other(Value::Number(n)) => n.to_string(),
        _ => return String::new(),
    };
    fields::take(map, path);
    text
}

fn event_time(
    map: &mut Members<'_>,
    candidates: &Candidates,
    format: TimeFormat,
) -> Result<i64, Rejection> {
    let Some((path, value)) = candidates.first(map) else {
        let detail = format!("no time field (tried {})", candidates.names());
        return Err(reject(Reason::MissingTime, detail));
    };
    let value = value.to_value();
    let ms = time::parse(&value, format).map_err(|e: TimeError| {
        let detail = format!("field `{}`: {} {e}", path.name(), show(&value));
        reject(Reason::BadTime, detail)
    })?;
    fields::take(map, path);
    Ok(ms)
}

/// A value as compact JSON, clipped for use in a rejection detail.
fn show(value: &Value) -> String {
    clip(&value.to_string(), MAX_DETAIL_VALUE)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` bytes of `s`, cut on a char boundary, with "…" appended when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", prefix(s, max))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}
