//! Where each output field is read from: the built-in candidate keys (or the configured
//! mapping) as dotted paths, plus lookup and removal of a path's value in a message.
//!
//! A value is removed from the message once it is used, so what remains afterwards is
//! exactly the set of leftover properties.

use std::{borrow::Cow, fmt};

use serde::de::{Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::FieldMapping;
use crate::object::{Members, Node};

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

    #[cfg(test)]
    pub(crate) fn segments(&self) -> &[String] {
        &self.segments
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

    /// The first candidate present in `object` with a non-null value.
    pub(crate) fn first<'c, 'm, 'a>(
        &'c self,
        object: &'m Members<'a>,
    ) -> Option<(&'c Path, &'m Node<'a>)> {
        self.0.iter().find_map(|path| match get(object, path) {
            None => None,
            Some(value) if value.is_null() => None,
            Some(value) => Some((path, value)),
        })
    }

    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[Path] {
        &self.0
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
fn get<'m, 'a>(object: &'m Members<'a>, path: &Path) -> Option<&'m Node<'a>> {
    let (last, parents) = path.segments.split_last()?;
    let mut current = object;
    for segment in parents {
        match current.get(segment)? {
            Node::Object(child) => current = child,
            _ => return None,
        }
    }
    current.get(last)
}

/// The members of an object that a path of some candidate goes through, in
/// order, with their values left unparsed and their keys borrowed from the
/// message where they have no escapes; every other member is skipped.
pub(crate) struct Skim<'a>(Vec<(Cow<'a, [u8]>, &'a RawValue)>);

impl<'a> Skim<'a> {
    /// The value of `key`: its last occurrence, as a parsed object keeps.
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| **k == *key.as_bytes())
            .map(|(_, v)| *v)
    }
}

/// Reads a [`Skim`] of an object at `depth` segments into the candidates'
/// paths: only members named by a candidate's segment at that depth are kept.
struct Wanted<'c> {
    candidates: &'c Candidates,
    depth: usize,
}

impl Wanted<'_> {
    fn wants(&self, key: &[u8]) -> bool {
        let at = |p: &Path| {
            p.segments
                .get(self.depth)
                .is_some_and(|s| s.as_bytes() == key)
        };
        self.candidates.0.iter().any(at)
    }
}

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = Skim<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Skim<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = Skim<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skim<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            if self.wants(&key) {
                members.push((key, map.next_value()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Skim(members))
    }
}

/// A member's key as bytes (unescaped, not checked for UTF-8: it is only
/// compared with the candidates' names), borrowed when it can be.
struct Key<'a>(Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// The values of `candidates` in the JSON object `raw`, parsed, at the
/// same paths of an object of their own: [`Candidates::first`] finds in it
/// what it would find in the whole message. `None` if `raw` is no object
/// (members no candidate names are skipped, not parsed).
pub(crate) fn skim<'a>(raw: &'a [u8], candidates: &Candidates) -> Option<Members<'a>> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let top = Wanted {
        candidates,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .ok()?;
    deserializer.end().ok()?;
    let mut found = Members::default();
    for path in &candidates.0 {
        if let Some(value) = skim_at(&top, &path.segments, candidates, 1) {
            insert_at(&mut found, &path.segments, value);
        }
    }
    Some(found)
}

/// The value at `segments` in a skimmed object at `depth`, parsed.
fn skim_at<'a>(
    object: &Skim<'a>,
    segments: &[String],
    candidates: &Candidates,
    depth: usize,
) -> Option<Node<'a>> {
    let (first, rest) = segments.split_first()?;
    let raw = object.get(first)?;
    if rest.is_empty() {
        return serde_json::from_str(raw.get()).ok();
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let child = Wanted { candidates, depth }
        .deserialize(&mut deserializer)
        .ok()?;
    skim_at(&child, rest, candidates, depth + 1)
}

fn insert_at<'a>(object: &mut Members<'a>, segments: &[String], value: Node<'a>) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        object.push(Cow::Owned(first.clone()), value);
        return;
    }
    if object.get(first).is_none() {
        object.push(Cow::Owned(first.clone()), Node::Object(Members::default()));
    }
    if let Some(Node::Object(child)) = object.get_mut(first) {
        insert_at(child, rest, value);
    }
}

/// Removes and returns the value at `path`. Objects left empty by the removal are removed
/// too, so a consumed `meta.ts` does not leave an empty `meta` behind in the props.
pub(crate) fn take<'a>(object: &mut Members<'a>, path: &Path) -> Option<Node<'a>> {
    take_in(object, &path.segments)
}

fn take_in<'a>(object: &mut Members<'a>, segments: &[String]) -> Option<Node<'a>> {
    let (first, rest) = segments.split_first()?;
    if rest.is_empty() {
        return object.remove(first);
    }
    let Some(Node::Object(child)) = object.get_mut(first) else {
        return None;
    };
    let taken = take_in(child, rest)?;
    if child.is_empty() {
        object.remove(first);
    }
    Some(taken)
}
