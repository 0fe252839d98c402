//! The typed view of a batch (events over a batch-local string table) and the
//! builder of a stage's output, which extends the input batch.

use rustc_hash::FxHashMap;

use crate::bindings::weft::plugin::types::{
    Batch as RawBatch, Event as RawEvent, Prop, StageOutput,
};
use crate::{Error, Result};

/// A batch of events in event-time order. Strings are borrowed from the
/// batch's one text buffer: reading a field does not allocate.
pub struct Batch {
    text: String,
    ends: Vec<u32>,
    events: Vec<RawEvent>,
    props: Vec<Prop>,
}

impl Batch {
    #[doc(hidden)]
    pub fn new(raw: RawBatch) -> Result<Self> {
        let text =
            String::from_utf8(raw.text).map_err(|_| Error("batch text is not UTF-8".into()))?;
        Ok(Batch {
            text,
            ends: raw.ends,
            events: raw.events,
            props: raw.props,
        })
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn events(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> {
        self.events
            .iter()
            .map(move |raw| EventRef { batch: self, raw })
    }

    /// String `index` of the table ("" when out of range).
    pub fn str(&self, index: u32) -> &str {
        let i = index as usize;
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    fn string_count(&self) -> u32 {
        self.ends.len() as u32
    }
}

/// One event of a [`Batch`]. Absent fields read as "".
#[derive(Clone, Copy)]
pub struct EventRef<'a> {
    batch: &'a Batch,
    raw: &'a RawEvent,
}

impl<'a> EventRef<'a> {
    pub fn id(&self) -> &'a str {
        self.batch.str(self.raw.id)
    }
    /// Event time, epoch milliseconds.
    pub fn time(&self) -> i64 {
        self.raw.time
    }
    pub fn user(&self) -> &'a str {
        self.batch.str(self.raw.user)
    }
    pub fn name(&self) -> &'a str {
        self.batch.str(self.raw.name)
    }
    pub fn session(&self) -> &'a str {
        self.batch.str(self.raw.session)
    }
    pub fn path(&self) -> &'a str {
        self.batch.str(self.raw.path)
    }
    pub fn device(&self) -> &'a str {
        self.batch.str(self.raw.device)
    }
    pub fn browser(&self) -> &'a str {
        self.batch.str(self.raw.browser)
    }
    pub fn os(&self) -> &'a str {
        self.batch.str(self.raw.os)
    }
    /// The event's other properties, as key/value pairs.
    pub fn props(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let batch = self.batch;
        let start = self.raw.props_start as usize;
        let end = start.saturating_add(self.raw.props_len as usize);
        batch
            .props
            .get(start..end)
            .unwrap_or(&[])
            .iter()
            .map(move |p| (batch.str(p.key), batch.str(p.value)))
    }
    /// The value of property `key`, if the event has it.
    pub fn prop(&self, key: &str) -> Option<&'a str> {
        self.props().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// A stage's output: the events that go on, each kept as it came or edited.
pub struct Output<'a> {
    batch: &'a Batch,
    raw: StageOutput,
    /// Added strings, so each distinct one crosses back once per batch.
    added: FxHashMap<String, u32>,
}

impl<'a> Output<'a> {
    #[doc(hidden)]
    pub fn new(batch: &'a Batch) -> Self {
        Output {
            batch,
            raw: StageOutput {
                text: Vec::new(),
                ends: Vec::new(),
                events: Vec::with_capacity(batch.len()),
                props: Vec::new(),
            },
            added: FxHashMap::default(),
        }
    }

    /// Passes `event` on; edit it through the returned handle.
    pub fn push(&mut self, event: &EventRef<'_>) -> EventMut<'_, 'a> {
        self.raw.events.push(*event.raw);
        EventMut { out: self }
    }

    fn intern(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&i) = self.added.get(s) {
            return i;
        }
        let index = self.batch.string_count() + self.raw.ends.len() as u32;
        self.raw.text.extend_from_slice(s.as_bytes());
        self.raw.ends.push(self.raw.text.len() as u32);
        self.added.insert(s.to_owned(), index);
        index
    }

    #[doc(hidden)]
    pub fn finish(self) -> StageOutput {
        self.raw
    }
}

/// Edits the event just pushed to an [`Output`].
pub struct EventMut<'o, 'a> {
    out: &'o mut Output<'a>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(self, value: &str) -> Self {
            let index = self.out.intern(value);
            if let Some(e) = self.out.raw.events.last_mut() {
                e.$field = index;
            }
            self
        }
    )*};
}

impl EventMut<'_, '_> {
    setters! {
        set_user => user;
        set_name => name;
        /// Sets the session id (what the sessionizer does).
        set_session => session;
        set_path => path;
        set_device => device;
        set_browser => browser;
        set_os => os;
    }

    pub fn set_time(self, time: i64) -> Self {
        if let Some(e) = self.out.raw.events.last_mut() {
            e.time = time;
        }
        self
    }
}
