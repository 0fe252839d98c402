//! A plugin compiled natively instead of to WebAssembly: the same
//! [`Metric`] or [`Stage`] implementation, called by a host in the same
//! process. It exists to measure what WebAssembly costs (`BENCHMARKS.md`,
//! the WASM tax): the host runs the native build where it would run the
//! component, through the same calls.
//!
//! Built for any target but `wasm32`, [`export_metric!`](crate::export_metric)
//! and [`export_stage!`](crate::export_stage) give the plugin crate a
//! `pub fn native_plugin() -> weft_plugin::native::Instance` instead of the
//! component's exports. Each call takes the [`Host`] that serves the
//! plugin's `state` and `log` imports for the duration of the call.
//!
//! For unit tests of a plugin crate (`cargo test --target <host triple>`),
//! [`MemoryHost`] serves the imports from memory, [`batch`] makes a batch of
//! [`TestEvent`]s, and [`Partitioned`] runs a metric as the host does: one
//! instance per partition of the users, each query answered by `query` on
//! every partition and one `merge`.
//!
//! The instance owns its plugin value and the plugin's state containers;
//! between calls nothing of it is left in thread-locals, so it may move to
//! another thread with everything it holds (hence the `Send` below). A plugin
//! type must not share its own `Rc`s outside itself (in a `thread_local!`,
//! say) to be built natively.

use std::{cell::Cell, collections::BTreeMap, ptr::NonNull};

pub use crate::bindings::weft::plugin::{
    log::Level,
    state::Entry,
    types::{Batch, StageOutput},
};
use crate::{Config, Error, Metric, Output, Query, Stage, state};

/// What the host provides a native plugin: the WIT `state` and `log` imports.
pub trait Host {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    fn set(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
    fn scan(&mut self, prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry>;
    fn log(&mut self, level: Level, message: &str);
}

/// A native plugin instance, by role.
pub enum Instance {
    Metric(Box<dyn MetricInstance>),
    Stage(Box<dyn StageInstance>),
}

/// The calls both worlds export.
pub trait Calls: Send {
    fn init(&mut self, host: &mut dyn Host, config: &str) -> Result<(), String>;
    fn tick(&mut self, host: &mut dyn Host, watermark: i64) -> Result<(), String>;
    fn checkpoint(&mut self, host: &mut dyn Host) -> Result<(), String>;
}

/// The `metric` world's calls.
pub trait MetricInstance: Calls {
    fn ingest(&mut self, host: &mut dyn Host, batch: Batch) -> Result<(), String>;
    /// This instance's partial answer (its partition's).
    fn query(
        &mut self,
        host: &mut dyn Host,
        params: Vec<(String, String)>,
    ) -> Result<String, String>;
    /// The answer combined from every partition's partial answer; needs no
    /// state and no `init` (the WIT `merge`).
    fn merge(
        &mut self,
        host: &mut dyn Host,
        params: Vec<(String, String)>,
        partials: Vec<String>,
    ) -> Result<String, String>;
}

/// The `stage` world's calls.
pub trait StageInstance: Calls {
    fn process(&mut self, host: &mut dyn Host, batch: Batch) -> Result<StageOutput, String>;
}

/// A native [`Metric`].
pub fn metric<P: Metric>() -> Instance {
    Instance::Metric(Box::new(Native::new(
        <P as Metric>::init,
        <P as Metric>::tick,
    )))
}

/// A native [`Stage`].
pub fn stage<P: Stage>() -> Instance {
    Instance::Stage(Box::new(Native::new(
        <P as Stage>::init,
        <P as Stage>::tick,
    )))
}

thread_local! {
    /// The host of the call in progress on this thread, set by [`enter`].
    static HOST: Cell<Option<NonNull<dyn Host>>> = const { Cell::new(None) };
}

/// Runs `f` with the host of the call in progress.
fn with_host<T>(f: impl FnOnce(&mut dyn Host) -> T) -> T {
    // Taken out while in use: a reentrant use panics instead of aliasing.
    let mut host = HOST
        .take()
        .expect("a weft state or log call outside a plugin call");
    // SAFETY: `enter` stored a pointer from a `&mut dyn Host` borrowed for
    // the whole call in progress, and `Entered` clears it before that call
    // returns; nothing else holds it while it is out of the cell.
    let result = f(unsafe { host.as_mut() });
    HOST.set(Some(host));
    result
}

pub(crate) fn get(key: &[u8]) -> Option<Vec<u8>> {
    with_host(|h| h.get(key))
}

pub(crate) fn set(key: &[u8], value: &[u8]) {
    with_host(|h| h.set(key, value))
}

pub(crate) fn delete(key: &[u8]) {
    with_host(|h| h.delete(key))
}

pub(crate) fn scan(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
    with_host(|h| h.scan(prefix, after, limit))
}

pub(crate) fn log(level: Level, message: &str) {
    with_host(|h| h.log(level, message))
}

/// A plugin value with its state containers, between calls, and its role's
/// `init` and `tick` (a type could implement both roles).
struct Native<P> {
    plugin: Option<P>,
    containers: state::Containers,
    init: fn(Config) -> crate::Result<P>,
    tick: fn(&mut P, i64) -> crate::Result<()>,
}

impl<P> Native<P> {
    fn new(
        init: fn(Config) -> crate::Result<P>,
        tick: fn(&mut P, i64) -> crate::Result<()>,
    ) -> Self {
        Native {
            plugin: None,
            containers: Default::default(),
            init,
            tick,
        }
    }
}

// SAFETY: the only `!Send` parts are the plugin's state containers, `Rc`s
// shared between `plugin` and `containers` and, during a call, this thread's
// container registry; `Entered` moves them back here before a call returns,
// so the whole graph of `Rc`s moves between threads together.
unsafe impl<P> Send for Native<P> {}

/// A call in progress: this instance's host and containers are the thread's.
struct Entered<'a> {
    containers: &'a mut state::Containers,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        HOST.set(None);
        state::swap_containers(self.containers);
    }
}

fn enter<'a>(host: &'a mut dyn Host, containers: &'a mut state::Containers) -> Entered<'a> {
    let host = NonNull::from(host);
    // SAFETY: only the lifetime is erased; `Entered` (which borrows the host
    // for 'a) clears the pointer when dropped.
    let host: NonNull<dyn Host> = unsafe { std::mem::transmute(host) };
    HOST.set(Some(host));
    state::swap_containers(containers);
    Entered { containers }
}

impl<P: 'static> Native<P> {
    /// Runs `f` on the plugin within a call.
    fn call<T>(
        &mut self,
        host: &mut dyn Host,
        f: impl FnOnce(&mut P) -> crate::Result<T>,
    ) -> Result<T, String> {
        let _entered = enter(host, &mut self.containers);
        match self.plugin.as_mut() {
            Some(p) => f(p).map_err(|Error(e)| e),
            None => Err("the plugin was called before init".to_string()),
        }
    }
}

impl<P: 'static> Calls for Native<P> {
    fn init(&mut self, host: &mut dyn Host, config: &str) -> Result<(), String> {
        let _entered = enter(host, &mut self.containers);
        let plugin = Config::parse(config)
            .and_then(self.init)
            .map_err(|Error(e)| e)?;
        self.plugin = Some(plugin);
        Ok(())
    }

    fn tick(&mut self, host: &mut dyn Host, watermark: i64) -> Result<(), String> {
        let tick = self.tick;
        self.call(host, |p| tick(p, watermark))
    }

    fn checkpoint(&mut self, host: &mut dyn Host) -> Result<(), String> {
        self.call(host, |_| {
            state::flush_all();
            Ok(())
        })
    }
}

impl<P: Metric> MetricInstance for Native<P> {
    fn ingest(&mut self, host: &mut dyn Host, batch: Batch) -> Result<(), String> {
        self.call(host, |p| p.ingest(&crate::Batch::new(batch)?))
    }

    fn query(
        &mut self,
        host: &mut dyn Host,
        params: Vec<(String, String)>,
    ) -> Result<String, String> {
        self.call(host, |p| {
            let value = p.query(&Query(params))?;
            Ok(serde_json::to_string(&value)?)
        })
    }

    fn merge(
        &mut self,
        host: &mut dyn Host,
        params: Vec<(String, String)>,
        partials: Vec<String>,
    ) -> Result<String, String> {
        // Like the component's `merge`, it does not need `init` to have run.
        let _entered = enter(host, &mut self.containers);
        crate::rt::merge(params, partials, <P as Metric>::merge)
    }
}

impl<P: Stage> StageInstance for Native<P> {
    fn process(&mut self, host: &mut dyn Host, batch: Batch) -> Result<StageOutput, String> {
        self.call(host, |p| {
            let batch = crate::Batch::new(batch)?;
            let mut out = Output::new(&batch);
            p.process(&batch, &mut out)?;
            Ok(out.finish())
        })
    }
}

/// A [`Host`] that keeps the state in memory and the log lines in a list:
/// runs a native plugin in a unit test.
#[derive(Default)]
pub struct MemoryHost {
    /// Every state entry written, by key.
    pub state: BTreeMap<Vec<u8>, Vec<u8>>,
    pub logs: Vec<(Level, String)>,
}

impl Host for MemoryHost {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.state.insert(key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, key: &[u8]) {
        self.state.remove(key);
    }

    fn scan(&mut self, prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_vec()),
            None => std::ops::Bound::Included(prefix.to_vec()),
        };
        self.state
            .range((start, std::ops::Bound::Unbounded))
            .skip_while(|(k, _)| !k.starts_with(prefix) && k.as_slice() < prefix)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit as usize)
            .map(|(k, v)| Entry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }
}

/// An event for [`batch`]: the fields of the WIT `event`, as strings ("" is
/// absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestEvent {
    pub id: String,
    /// Epoch milliseconds.
    pub time: i64,
    pub user: String,
    pub name: String,
    pub session: String,
    pub path: String,
    pub device: String,
    pub browser: String,
    pub os: String,
    pub props: Vec<(String, String)>,
}

/// The batch of `events` (in the order given), as the host would send it.
pub fn batch(events: &[TestEvent]) -> Batch {
    use crate::bindings::weft::plugin::types::{Event, Prop};
    struct Table {
        text: Vec<u8>,
        ends: Vec<u32>,
        index: BTreeMap<String, u32>,
    }
    impl Table {
        fn intern(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            if let Some(&i) = self.index.get(s) {
                return i;
            }
            self.text.extend_from_slice(s.as_bytes());
            self.ends.push(self.text.len() as u32);
            let i = self.ends.len() as u32 - 1;
            self.index.insert(s.to_owned(), i);
            i
        }
    }
    let mut table = Table {
        text: Vec::new(),
        ends: vec![0],
        index: BTreeMap::new(),
    };
    let mut props = Vec::new();
    let events = events
        .iter()
        .map(|e| {
            let props_start = props.len() as u32;
            for (k, v) in &e.props {
                props.push(Prop {
                    key: table.intern(k),
                    value: table.intern(v),
                });
            }
            Event {
                id: table.intern(&e.id),
                time: e.time,
                user: table.intern(&e.user),
                name: table.intern(&e.name),
                session: table.intern(&e.session),
                path: table.intern(&e.path),
                device: table.intern(&e.device),
                browser: table.intern(&e.browser),
                os: table.intern(&e.os),
                props_start,
                props_len: e.props.len() as u32,
            }
        })
        .collect();
    Batch {
        text: table.text,
        ends: table.ends,
        events,
        props,
    }
}

/// A native metric run as the host runs it over partitions: one instance,
/// with its own state, per partition; every event of a user goes to the
/// same partition; a query asks every partition's instance for its partial
/// answer and merges them on one of them (with one partition too).
pub struct Partitioned {
    parts: Vec<(Box<dyn MetricInstance>, MemoryHost)>,
}

impl Partitioned {
    /// `partitions` (at least 1) instances of the metric `build` makes
    /// (a plugin crate's `native_plugin`), each given `config`.
    pub fn new(build: fn() -> Instance, config: &str, partitions: usize) -> Result<Self, String> {
        let mut parts = Vec::new();
        for _ in 0..partitions.max(1) {
            let Instance::Metric(mut metric) = build() else {
                return Err("not a metric".into());
            };
            let mut host = MemoryHost::default();
            metric.init(&mut host, config)?;
            parts.push((metric, host));
        }
        Ok(Partitioned { parts })
    }

    /// The partition of `user`: a hash of it (FNV-1a), modulo the partitions.
    pub fn partition_of(&self, user: &str) -> usize {
        let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % self.parts.len() as u64) as usize
    }

    /// Ingests `events` (in event-time order) as one batch per partition,
    /// each event in its user's partition.
    pub fn ingest(&mut self, events: &[TestEvent]) -> Result<(), String> {
        let mut split = vec![Vec::new(); self.parts.len()];
        for e in events {
            split[self.partition_of(&e.user)].push(e.clone());
        }
        for ((metric, host), events) in self.parts.iter_mut().zip(split) {
            if !events.is_empty() {
                metric.ingest(host, batch(&events))?;
            }
        }
        Ok(())
    }

    /// Every partition's `tick`.
    pub fn tick(&mut self, watermark: i64) -> Result<(), String> {
        for (metric, host) in &mut self.parts {
            metric.tick(host, watermark)?;
        }
        Ok(())
    }

    /// Every partition's `checkpoint`.
    pub fn checkpoint(&mut self) -> Result<(), String> {
        for (metric, host) in &mut self.parts {
            metric.checkpoint(host)?;
        }
        Ok(())
    }

    /// Every partition's partial answer, in partition order.
    pub fn partials(&mut self, params: &[(&str, &str)]) -> Result<Vec<String>, String> {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.parts
            .iter_mut()
            .map(|(metric, host)| metric.query(host, params.clone()))
            .collect()
    }

    /// The answer to a query: every partition's partial answer, merged (on
    /// the last partition's instance).
    pub fn query(&mut self, params: &[(&str, &str)]) -> Result<String, String> {
        let partials = self.partials(params)?;
        let owned = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (metric, host) = self.parts.last_mut().expect("at least one partition");
        metric.merge(host, owned, partials)
    }
}

/// A sample clickstream for tests: `count` events of `users` users (`u0`,
/// `u1`, …) in event-time order, from 2026-01-01, with the session ids the
/// sessionizer gives them (`USER:START_MS`, a 30 min gap), page views over a
/// few paths, a funnel's steps, devices, browsers and a few absent fields.
/// The same `seed` gives the same events.
pub fn sample_events(seed: u64, users: usize, count: usize) -> Vec<TestEvent> {
    const GAP_MS: i64 = 30 * 60 * 1000;
    const NAMES: [&str; 8] = [
        "page_view",
        "page_view",
        "page_view",
        "add_to_cart",
        "checkout",
        "purchase",
        "scroll",
        "signup_click",
    ];
    const PATHS: [&str; 7] = [
        "/",
        "/pricing",
        "/docs",
        "/blog/wasm",
        "/products/42",
        "/checkout",
        "",
    ];
    const DEVICES: [&str; 4] = ["desktop", "mobile", "tablet", ""];
    const BROWSERS: [&str; 4] = ["Firefox", "Chrome", "Safari", ""];
    // splitmix64
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    };
    let users = users.max(1);
    let mut time: i64 = 1_767_225_600_000;
    let mut open: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        // Mostly seconds apart, now and then an hour or two later.
        time += match next(100) {
            0 => 3_600_000 + next(3_600_000) as i64,
            1..=9 => 0,
            _ => next(90_000) as i64,
        };
        let user = format!("u{}", next(users as u64));
        let (start, last) = open.entry(user.clone()).or_insert((time, time));
        if time - *last > GAP_MS {
            *start = time;
        }
        *last = time;
        let session = format!("{user}:{start}");
        let pick = |list: &[&str], n: u64| list[n as usize % list.len()].to_owned();
        let name = pick(&NAMES, next(NAMES.len() as u64));
        let props = match name.as_str() {
            "purchase" => vec![("amount".to_owned(), format!("{}", 10 + next(90)))],
            _ => Vec::new(),
        };
        events.push(TestEvent {
            id: format!("e{i}"),
            time,
            path: pick(&PATHS, next(PATHS.len() as u64)),
            device: pick(&DEVICES, next(DEVICES.len() as u64)),
            browser: pick(&BROWSERS, next(BROWSERS.len() as u64)),
            os: String::new(),
            user,
            name,
            session,
            props,
        });
    }
    events
}

/// The answers to `queries` of the metric `build` makes (given `config`)
/// over `events` split into `partitions` by user: the events go in batches
/// of `batch_size`, each followed by a `tick` at its last event's time and a
/// `checkpoint`, as the host would. An answer is the merged JSON text or the
/// error of the query or the merge. Compare the answers of 1 partition and of
/// more to see a metric's `merge` is exact.
pub fn answers(
    build: fn() -> Instance,
    config: &str,
    partitions: usize,
    events: &[TestEvent],
    batch_size: usize,
    queries: &[&[(&str, &str)]],
) -> Result<Vec<Result<String, String>>, String> {
    let mut metric = Partitioned::new(build, config, partitions)?;
    for chunk in events.chunks(batch_size.max(1)) {
        metric.ingest(chunk)?;
        metric.tick(chunk.last().map_or(0, |e| e.time))?;
        metric.checkpoint()?;
    }
    Ok(queries.iter().map(|q| metric.query(q)).collect())
}

#[cfg(test)]
mod tests {
    //! The native kit: the memory host, batches, partitions and `merge`.

    use super::*;
    use crate::prelude::*;

    /// Events per user, and the mean time per event of the user (a mean:
    /// its own `merge`).
    struct PerUser {
        events: Map<u64>,
        time: Map<i64>,
        newest: crate::Cell<i64>,
    }

    impl Metric for PerUser {
        fn init(_: Config) -> Result<Self> {
            Ok(PerUser {
                events: Map::new("events"),
                time: Map::new("time"),
                newest: crate::Cell::new("newest"),
            })
        }

        fn ingest_event(&mut self, event: EventRef) {
            self.events.update(event.user(), |n| *n += 1);
            self.time.update(event.user(), |t| *t += event.time());
            self.newest.update(|t| *t = event.time().max(*t));
        }

        fn query(&mut self, query: &Query) -> Result<Value> {
            if query.get("mean").is_some() {
                return Ok(json!({ "events": self.events.entries(), "time": self.time.entries() }));
            }
            // Wrong on purpose: the default merge adds the newest times up.
            Ok(json!({ "events": self.events.entries(), "newest": self.newest.get() }))
        }

        fn merge(query: &Query, partials: Vec<Value>) -> Result<Value> {
            let total = crate::merge::sum(partials)?;
            if query.get("mean").is_none() {
                return Ok(total);
            }
            let mean: BTreeMap<&String, f64> = total["events"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(user, n)| {
                    let time = total["time"][user].as_f64().unwrap_or(0.0);
                    (user, time / n.as_f64().unwrap_or(1.0))
                })
                .collect();
            Ok(json!({ "mean_time": mean }))
        }
    }

    fn build() -> Instance {
        metric::<PerUser>()
    }

    #[test]
    fn the_memory_host_scans_by_prefix_after_and_limit() {
        let mut host = MemoryHost::default();
        for key in ["a\0x", "b\0", "b\0a", "b\0b", "b\0c", "c"] {
            host.set(key.as_bytes(), b"1");
        }
        let keys = |entries: Vec<Entry>| {
            entries
                .into_iter()
                .map(|e| String::from_utf8(e.key).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(host.scan(b"b\0", None, 10)),
            ["b\0", "b\0a", "b\0b", "b\0c"]
        );
        assert_eq!(keys(host.scan(b"b\0", Some(b"b\0a"), 2)), ["b\0b", "b\0c"]);
        assert_eq!(keys(host.scan(b"b\0", Some(b"a"), 1)), ["b\0"]);
        assert!(host.scan(b"d", None, 10).is_empty());
    }

    #[test]
    fn a_batch_carries_every_field_through_its_string_table() {
        let events = sample_events(3, 4, 40);
        let raw = batch(&events);
        assert_eq!(raw.ends[0], 0);
        let view = crate::Batch::new(raw).unwrap();
        for (e, v) in events.iter().zip(view.events()) {
            assert_eq!(
                (v.id(), v.time(), v.user(), v.name(), v.session()),
                (&*e.id, e.time, &*e.user, &*e.name, &*e.session)
            );
            assert_eq!(
                (v.path(), v.device(), v.browser()),
                (&*e.path, &*e.device, &*e.browser)
            );
            let props: Vec<(String, String)> =
                v.props().map(|(k, v)| (k.into(), v.into())).collect();
            assert_eq!(props, e.props);
        }
    }

    #[test]
    fn partitions_merge_to_the_answer_of_one() {
        let events = sample_events(11, 9, 400);
        let queries: &[&[(&str, &str)]] = &[&[("mean", "1")], &[]];
        let one = answers(build, "{}", 1, &events, 50, queries).unwrap();
        assert_eq!(
            answers(build, "{}", 3, &events, 50, queries).unwrap()[0],
            one[0]
        );
        // What does not add up (the newest time) comes out wrong.
        let parts = answers(build, "{}", 3, &events, 50, queries).unwrap();
        assert_ne!(parts[1], one[1]);
        // Every user in one partition, whatever the split.
        let metric = Partitioned::new(build, "{}", 3).unwrap();
        assert_eq!(metric.partition_of("u1"), metric.partition_of("u1"));
    }

    #[test]
    fn state_outlives_the_instance() {
        let mut host = MemoryHost::default();
        let Instance::Metric(mut first) = build() else {
            panic!("a metric")
        };
        first.init(&mut host, "{}").unwrap();
        first
            .ingest(&mut host, batch(&sample_events(1, 2, 10)))
            .unwrap();
        first.checkpoint(&mut host).unwrap();
        let Instance::Metric(mut second) = build() else {
            panic!("a metric")
        };
        second.init(&mut host, "{}").unwrap();
        let a = first.query(&mut host, vec![]).unwrap();
        assert_eq!(second.query(&mut host, vec![]).unwrap(), a);
    }

    #[test]
    fn merge_reports_partials_that_are_not_json_or_do_not_add_up() {
        let Instance::Metric(mut metric) = build() else {
            panic!("a metric")
        };
        let mut host = MemoryHost::default();
        // `merge` needs no `init`.
        let err = metric
            .merge(&mut host, vec![], vec!["{}".into(), "{".into()])
            .unwrap_err();
        assert!(err.starts_with("partial answer 1 is not JSON"), "{err}");
        let err = metric
            .merge(
                &mut host,
                vec![],
                vec![r#"{"a":[1]}"#.into(), r#"{"a":[2]}"#.into()],
            )
            .unwrap_err();
        assert!(err.contains("implement Metric::merge"), "{err}");
        assert_eq!(
            metric.merge(
                &mut host,
                vec![],
                vec![r#"{"a":1}"#.into(), r#"{"a":2,"b":"x"}"#.into()]
            ),
            Ok(r#"{"a":3,"b":"x"}"#.into())
        );
        let err = metric.merge(&mut host, vec![], vec![]).unwrap_err();
        assert_eq!(err, "no partial answers to merge");
    }
}
