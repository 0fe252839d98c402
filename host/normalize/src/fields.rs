//! Where each output field is read from: the built-in candidate keys (or the configured
//! mapping) as dotted paths, plus lookup and removal of a path's value in a message.
//!
//! A value is removed from the message once it is used, so what remains afterwards is
//! exactly the set of leftover properties.

use serde_json::{Map, Value};

use crate::FieldMapping;

/// A dotted path into a JSON object, e.g. `properties.page`.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    name: String,
    segments: Vec<String>,
}

impl Path {
    fn parse(name: &str) -> Self {
        Path {
            name: name.to_owned(),
            segments: name.split('.').map(str::to_owned).collect(),
        }
    }

    /// The path as written, for rejection details.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Candidate paths for one field, in priority order.
#[derive(Debug, Clone)]
pub(crate) struct Candidates(Vec<Path>);

impl Candidates {
    /// The built-in list, or the single configured path when the mapping sets one.
    fn new(configured: Option<&String>, defaults: &[&str]) -> Self {
        match configured {
            Some(path) => Candidates(vec![Path::parse(path)]),
            None => Candidates(defaults.iter().map(|p| Path::parse(p)).collect()),
        }
    }

    /// The first candidate present in `map` with a non-null value.
    pub(crate) fn first<'c, 'm>(
        &'c self,
        map: &'m Map<String, Value>,
    ) -> Option<(&'c Path, &'m Value)> {
        self.0.iter().find_map(|path| match get(map, path) {
            None | Some(Value::Null) => None,
            Some(value) => Some((path, value)),
        })
    }

    /// "`a`, `b`" for rejection details.
    pub(crate) fn names(&self) -> String {
        let names: Vec<String> = self.0.iter().map(|p| format!("`{}`", p.name)).collect();
        names.join(", ")
    }
}

/// Candidate paths for every field read from a message.
#[derive(Debug, Clone)]
pub(crate) struct FieldPaths {
    pub id: Candidates,
    pub time: Candidates,
    pub user: Candidates,
    pub event: Candidates,
    pub session: Candidates,
    pub path: Candidates,
    pub device: Candidates,
    pub user_agent: Candidates,
}

impl FieldPaths {
    pub(crate) fn new(m: &FieldMapping) -> Self {
        FieldPaths {
            id: Candidates::new(m.id.as_ref(), &["event_id"]),
            time: Candidates::new(
                m.time.as_ref(),
                &["ts", "timestamp", "event_timestamp", "event_time", "time"],
            ),
            user: Candidates::new(
                m.user.as_ref(),
                &["user_id", "user", "person_code", "distinct_id"],
            ),
            event: Candidates::new(
                m.event.as_ref(),
                &["event", "action", "event_type", "event_name"],
            ),
            session: Candidates::new(m.session.as_ref(), &["session_id"]),
            path: Candidates::new(
                m.path.as_ref(),
                &["path", "page", "properties.page", "properties.path"],
            ),
            device: Candidates::new(
                m.device.as_ref(),
                &[
                    "platform",
                    "device",
                    "event_platform",
                    "properties.platform",
                    "properties.device",
                ],
            ),
            user_agent: Candidates::new(
                m.user_agent.as_ref(),
                &["user_agent", "properties.user_agent"],
            ),
        }
    }
}

/// The value at `path`, walking nested objects.
pub(crate) fn get<'m>(map: &'m Map<String, Value>, path: &Path) -> Option<&'m Value> {
    let (last, parents) = path.segments.split_last()?;
    let mut current = map;
    for segment in parents {
        current = current.get(segment)?.as_object()?;
    }
    current.get(last)
}

/// Removes and returns the value at `path`. Objects left empty by the removal are removed
/// too, so a consumed `meta.ts` does not leave an empty `meta` behind in the props.
pub(crate) fn take(map: &mut Map<String, Value>, path: &Path) -> Option<Value> {
    take_in(map, &path.segments)
}

fn take_in(map: &mut Map<String, Value>, segments: &[String]) -> Option<Value> {
    let (first, rest) = segments.split_first()?;
    if rest.is_empty() {
        return map.remove(first);
    }
    let child = map.get_mut(first)?.as_object_mut()?;
    let taken = take_in(child, rest)?;
    if child.is_empty() {
        map.remove(first);
    }
    Some(taken)
}
