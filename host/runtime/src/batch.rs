//! Batches as they cross into plugins: every distinct string of a batch is
//! stored once in one text buffer and events refer to it by index, so a batch
//! crosses the component boundary as a handful of flat lists rather than one
//! allocation per string.

use rustc_hash::FxHashMap;
use weft_normalize::Event as Normalized;

use crate::bindings::{Batch, Event, Prop, StageOutput};

/// Builds a [`Batch`] from normalized events.
#[derive(Default)]
pub struct BatchBuilder {
    batch: Batch,
    index: FxHashMap<Box<str>, u32>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            text: Vec::new(),
            ends: vec![0],
            events: Vec::new(),
            props: Vec::new(),
        }
    }
}

impl BatchBuilder {
    pub fn len(&self) -> usize {
        self.batch.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.events.is_empty()
    }

    fn intern(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.batch.ends.len() as u32;
        self.batch.text.extend_from_slice(s.as_bytes());
        self.batch.ends.push(self.batch.text.len() as u32);
        self.index.insert(s.into(), i);
        i
    }

    pub fn push(&mut self, e: &Normalized) {
        let props_start = self.batch.props.len() as u32;
        for (k, v) in &e.props {
            let prop = Prop {
                key: self.intern(k),
                value: self.intern(v),
            };
            self.batch.props.push(prop);
        }
        let event = Event {
            id: self.intern(&e.id),
            time: e.time,
            user: self.intern(&e.user),
            name: self.intern(&e.name),
            session: self.intern(&e.session),
            path: self.intern(&e.path),
            device: self.intern(&e.device),
            browser: self.intern(&e.browser),
            os: self.intern(&e.os),
            props_start,
            props_len: e.props.len() as u32,
        };
        self.batch.events.push(event);
    }

    /// The batch built so far; the builder starts over.
    pub fn finish(&mut self) -> Batch {
        self.index.clear();
        std::mem::take(&mut self.batch)
    }
}

/// The events of `batch` as owned normalized events (for dead letters).
pub fn events(batch: &Batch) -> Vec<Normalized> {
    let text = |i: u32| {
        let i = i as usize;
        let end = batch.ends.get(i).copied().unwrap_or(0) as usize;
        let start = if i == 0 {
            0
        } else {
            batch.ends.get(i - 1).copied().unwrap_or(0) as usize
        };
        String::from_utf8_lossy(batch.text.get(start..end).unwrap_or(&[])).into_owned()
    };
    batch
        .events
        .iter()
        .map(|e| {
            let start = e.props_start as usize;
            let props = batch
                .props
                .get(start..start + e.props_len as usize)
                .unwrap_or(&[]);
            Normalized {
                id: text(e.id),
                time: e.time,
                user: text(e.user),
                name: text(e.name),
                session: text(e.session),
                path: text(e.path),
                device: text(e.device),
                browser: text(e.browser),
                os: text(e.os),
                props: props.iter().map(|p| (text(p.key), text(p.value))).collect(),
            }
        })
        .collect()
}

/// Applies a stage's output to its input: the input's string table and props
/// extended by the output's, with the output's events. Checks, before
/// changing anything, every index, that strings are UTF-8 at their
/// boundaries, that events keep a user and a name, and that they stay in
/// event-time order; a malformed output leaves `batch` as it was.
pub fn apply(batch: &mut Batch, out: StageOutput) -> Result<(), String> {
    let text =
        std::str::from_utf8(&out.text).map_err(|e| format!("added text is not UTF-8: {e}"))?;
    let mut previous = 0u32;
    for &end in &out.ends {
        if end < previous || end as usize > text.len() {
            return Err(format!(
                "added string ends out of order or past the text: {end}"
            ));
        }
        if !text.is_char_boundary(end as usize) {
            return Err(format!(
                "added string ending at {end} splits a UTF-8 character"
            ));
        }
        previous = end;
    }
    let strings = (batch.ends.len() + out.ends.len()) as u32;
    let props = (batch.props.len() + out.props.len()) as u64;
    if let Some(p) = out
        .props
        .iter()
        .find(|p| p.key >= strings || p.value >= strings)
    {
        return Err(format!(
            "a property refers to string {} of {strings}",
            p.key.max(p.value)
        ));
    }
    let mut last_time = i64::MIN;
    for (i, e) in out.events.iter().enumerate() {
        let fields = [
            e.id, e.user, e.name, e.session, e.path, e.device, e.browser, e.os,
        ];
        if let Some(bad) = fields.iter().find(|&&s| s >= strings) {
            return Err(format!("event {i} refers to string {bad} of {strings}"));
        }
        if string_len(batch, &out, e.user) == 0 || string_len(batch, &out, e.name) == 0 {
            return Err(format!("event {i} has no user or no event name"));
        }
        if u64::from(e.props_start) + u64::from(e.props_len) > props {
            return Err(format!(
                "event {i} refers to properties past the batch's {props}"
            ));
        }
        if e.time < last_time {
            return Err(format!("event {i} is out of event-time order"));
        }
        last_time = e.time;
    }
    let base = batch.text.len() as u32;
    batch.text.extend_from_slice(&out.text);
    batch.ends.extend(out.ends.iter().map(|e| e + base));
    batch.props.extend(out.props);
    batch.events = out.events;
    Ok(())
}

/// Length of string `i` of the input's table followed by the output's.
fn string_len(batch: &Batch, out: &StageOutput, i: u32) -> u32 {
    let span = |ends: &[u32], i: usize| ends[i] - if i == 0 { 0 } else { ends[i - 1] };
    let i = i as usize;
    match i.checked_sub(batch.ends.len()) {
        None => span(&batch.ends, i),
        Some(j) => span(&out.ends, j),
    }
}
