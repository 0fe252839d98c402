//! A message parsed once, with its keys and strings borrowed from the bytes
//! where they have no escapes: objects as their members in input order,
//! strings as text, anything else as a `serde_json::Value`. It is read as a
//! parsed map would be: of a key given twice, the last value counts.
//!
//! Every value is parsed by serde_json's own deserializer, so what it
//! refuses (bad syntax, a number out of range, a lone surrogate, nesting too
//! deep) is refused here too, at the same place.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::de::{
    Deserialize, Deserializer, MapAccess, SeqAccess, Visitor, value::SeqAccessDeserializer,
};
use serde_json::{Map, Number, Value};

/// One value of a message.
#[derive(Debug)]
pub(crate) enum Node<'a> {
    Text(Cow<'a, str>),
    Object(Members<'a>),
    /// Null, a boolean, a number or an array.
    Other(Value),
}

/// An object's members, in input order, repeated keys included.
#[derive(Debug, Default)]
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, Node<'a>)>);

impl<'a> Members<'a> {
    /// The value of `key`: its last occurrence.
    pub(crate) fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Node<'a>> {
        self.0
            .iter_mut()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Removes `key` (every occurrence) and returns its value.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Node<'a>> {
        let last = self.0.iter().rposition(|(k, _)| k == key)?;
        let (_, value) = self.0.remove(last);
        self.0.retain(|(k, _)| k != key);
        Some(value)
    }

    pub(crate) fn push(&mut self, key: Cow<'a, str>, value: Node<'a>) {
        self.0.push((key, value));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One value per key (the last), sorted by key.
    pub(crate) fn into_unique(self) -> BTreeMap<Cow<'a, str>, Node<'a>> {
        self.0.into_iter().collect()
    }
}

impl Node<'_> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Node::Other(Value::Null))
    }

    /// The value as serde_json would have parsed it.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Node::Text(s) => Value::String(s.as_ref().to_owned()),
            Node::Object(members) => Value::Object(
                members
                    .0
                    .iter()
                    .map(|(k, v)| (k.as_ref().to_owned(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Node::Other(value) => value.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Owned(v)))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Other(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Other(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Other(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        Ok(Node::Other(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Other(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Node<'de>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Node::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members = Members::default();
        while let Some(Key(key)) = map.next_key()? {
            members.push(key, map.next_value()?);
        }
        Ok(Node::Object(members))
    }
}

/// A member's key, borrowed when it can be.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Text)
    }
}
