//! The plugins as really compiled, driven through the host's runtime.
//!
//! Loads the components the `plugins/` workspace builds (`weft::bundled` for
//! the bundled ones, `weft::bundled::ARTIFACTS_DIR` for the fixtures), runs
//! them with `weft_runtime` over a real sled `Store` in a temporary
//! directory, and checks every answer exactly against the reference
//! implementation (`weft_tests::reference`), computed from the same events
//! (hand-made, or from `weft_tests::clickstream`): the sessionizer's edge
//! cases, every number of `core`, `event_counts` and `funnel` (all time and
//! over time ranges), restarts from a checkpoint, how errors surface, and
//! the sandbox.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::OnceLock,
};

use serde_json::{Value, json};
use weft_normalize::Event;
use weft_runtime::{
    Batch, BatchBuilder, Error, Module, Plugin, Role, Runtime, StageOutput, apply,
    bindings::{Event as RawEvent, Prop},
};
use weft_state::{Checkpoint, Store};
use weft_tests::{
    clickstream::{self, START_MS},
    reference::{self, GAP_MS},
};

/// One minute, in ms.
const MINUTE: i64 = 60_000;
/// A Saturday, 2025-11-22 10:00:12.345 UTC: deliberately not on a minute.
const BASE: i64 = 1_763_805_612_345;

// ---------------------------------------------------------------------------
// Harness: one runtime and compiled modules per test binary, one store per test.

/// Every plugin the tests use: (instance name, component file in ARTIFACTS_DIR).
const PLUGINS: &[(&str, &str)] = &[
    ("sessionizer", "sessionizer"),
    ("core", "core"),
    ("event_counts", "event_counts"),
    ("funnel", "funnel"),
    ("noop", "noop"),
    ("noop_stage", "noop_stage"),
    ("escape", "escape"),
];

/// The runtime and the compiled plugins, shared by every test: compiling is
/// the slow part, instantiating is cheap.
fn compiled() -> &'static (Runtime, HashMap<&'static str, Module>) {
    static COMPILED: OnceLock<(Runtime, HashMap<&'static str, Module>)> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let runtime = Runtime::new(None).expect("wasmtime engine");
        let modules = PLUGINS
            .iter()
            .map(|&(name, artifact)| {
                // The bundled ones as the binary embeds them; fixtures from the build output.
                let bytes = match weft::bundled::get(name) {
                    Some(bytes) => bytes.to_vec(),
                    None => {
                        let path = PathBuf::from(weft::bundled::ARTIFACTS_DIR)
                            .join(format!("{artifact}.wasm"));
                        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    }
                };
                (
                    name,
                    runtime.load(name, &bytes).unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect();
        (runtime, modules)
    })
}

fn runtime() -> &'static Runtime {
    &compiled().0
}

/// A sled store in a temporary directory.
struct Host {
    dir: tempfile::TempDir,
    store: Store,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        Host { dir, store }
    }

    /// Starts plugin `name` over its state in this store.
    fn start(&self, name: &str, config: &str) -> Plugin {
        self.try_start(name, config)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(&self, name: &str, config: &str) -> Result<Plugin, Error> {
        let module = &compiled().1[name];
        Plugin::start(
            runtime(),
            name,
            module,
            self.store.plugin_state(name, 0),
            config,
            weft_runtime::Limits::default(),
        )
    }

    /// Closes the sled store and opens it again from disk. Every plugin
    /// started over it must be dropped first (they hold the tree).
    fn reopen(self) -> Self {
        let Host { dir, store } = self;
        drop(store);
        // sled's background flusher lets go of the file lock a moment after
        // the last handle is dropped.
        let store = weft_tests::wait_for(
            "the sled lock to be released",
            std::time::Duration::from_secs(10),
            || Ok(Store::open(dir.path()).map_err(|e| e.to_string()).ok()),
        );
        Host { dir, store }
    }

    /// Checkpoints `plugins` and writes their writes to the store.
    fn checkpoint(&self, plugins: &mut [&mut Plugin]) {
        let plugin_writes = plugins
            .iter_mut()
            .map(|p| {
                (
                    p.name().to_owned(),
                    p.checkpoint().unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect();
        self.store
            .checkpoint(
                0,
                Checkpoint {
                    plugin_writes,
                    ..Checkpoint::default()
                },
            )
            .expect("checkpoint");
    }
}

/// A plain event of `user`; devices, browsers and props are set by the callers that need them.
fn event(time: i64, user: &str, name: &str, path: &str) -> Event {
    Event {
        id: String::new(),
        time,
        user: user.into(),
        name: name.into(),
        session: String::new(),
        path: path.into(),
        device: "desktop".into(),
        browser: "Firefox".into(),
        os: "Linux".into(),
        props: Vec::new(),
    }
}

fn batch(events: &[Event]) -> Batch {
    let mut builder = BatchBuilder::default();
    for e in events {
        builder.push(e);
    }
    builder.finish()
}

/// String `i` of a batch's table.
fn text(batch: &Batch, i: u32) -> String {
    let i = i as usize;
    let start = if i == 0 {
        0
    } else {
        batch.ends[i - 1] as usize
    };
    String::from_utf8(batch.text[start..batch.ends[i] as usize].to_vec()).expect("UTF-8")
}

/// The events of a batch, strings resolved through its table.
fn events_of(batch: &Batch) -> Vec<Event> {
    batch
        .events
        .iter()
        .map(|e| {
            let props =
                &batch.props[e.props_start as usize..(e.props_start + e.props_len) as usize];
            Event {
                id: text(batch, e.id),
                time: e.time,
                user: text(batch, e.user),
                name: text(batch, e.name),
                session: text(batch, e.session),
                path: text(batch, e.path),
                device: text(batch, e.device),
                browser: text(batch, e.browser),
                os: text(batch, e.os),
                props: props
                    .iter()
                    .map(|p| (text(batch, p.key), text(batch, p.value)))
                    .collect(),
            }
        })
        .collect()
}

/// Runs `events` through a stage and applies its output; returns the batch
/// as the metrics would receive it.
fn run_stage(stage: &mut Plugin, events: &[Event]) -> Batch {
    let mut b = batch(events);
    let out = stage.process(&b).unwrap_or_else(|e| panic!("{e}"));
    apply(&mut b, out).expect("the stage's output applies");
    b
}

/// The session ids the sessionizer set on `events`, fed in batches of
/// `batch_size`, with a tick after each batch at its last event time (the
/// events are in time order, so no older event follows).
fn sessionize(stage: &mut Plugin, events: &[Event], batch_size: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in events.chunks(batch_size) {
        let b = run_stage(stage, chunk);
        ids.extend(b.events.iter().map(|e| text(&b, e.session)));
        stage
            .tick(chunk.last().expect("chunks are not empty").time)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    ids
}

fn query(metric: &mut Plugin, params: &[(&str, &str)]) -> Value {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // One instance is one partition: its partial answer, merged alone.
    let partial = metric.query(&params).unwrap_or_else(|e| panic!("{e}"));
    let answer = metric
        .merge(&params, &[partial])
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&answer).expect("queries answer JSON")
}

// ---------------------------------------------------------------------------
// The pipeline.

/// The sessionizer feeding the three metrics, as the default pipeline runs them.
struct Pipeline {
    sessionizer: Plugin,
    core: Plugin,
    event_counts: Plugin,
    funnel: Plugin,
}

impl Pipeline {
    fn start(host: &Host) -> Self {
        Pipeline {
            sessionizer: host.start("sessionizer", "{}"),
            core: host.start("core", "{}"),
            event_counts: host.start("event_counts", "{}"),
            funnel: host.start("funnel", "{}"),
        }
    }

    /// Feeds `events` in batches of `batch_size`, ticking every plugin after
    /// each batch; returns the events as the metrics received them.
    fn feed(&mut self, events: &[Event], batch_size: usize) -> Vec<Event> {
        let mut seen = Vec::new();
        for chunk in events.chunks(batch_size) {
            let b = run_stage(&mut self.sessionizer, chunk);
            for metric in [&mut self.core, &mut self.event_counts, &mut self.funnel] {
                metric.ingest(&b).unwrap_or_else(|e| panic!("{e}"));
            }
            let watermark = chunk.last().expect("chunks are not empty").time;
            for plugin in self.all() {
                plugin.tick(watermark).unwrap_or_else(|e| panic!("{e}"));
            }
            seen.extend(events_of(&b));
        }
        seen
    }

    /// A pipeline fed `events`, checking that the sessionizer set the
    /// reference sessions and changed nothing else.
    fn fed(host: &Host, events: &[Event], batch_size: usize) -> Self {
        let mut pipeline = Pipeline::start(host);
        assert_eq!(
            pipeline.feed(events, batch_size),
            reference::with_sessions(events, GAP_MS),
            "the sessionizer set the reference sessions and changed nothing else"
        );
        pipeline
    }

    fn all(&mut self) -> [&mut Plugin; 4] {
        [
            &mut self.sessionizer,
            &mut self.core,
            &mut self.event_counts,
            &mut self.funnel,
        ]
    }

    /// The answers the comparisons look at.
    fn answers(&mut self) -> Value {
        json!({
            "core": query(&mut self.core, &[]),
            "core_series": query(&mut self.core, &[("bucket", "1m")]),
            "event_counts": query(&mut self.event_counts, &[]),
            "funnel": query(&mut self.funnel, &[]),
        })
    }
}

/// Checks [`Pipeline::answers`] against the reference, one answer at a time.
#[track_caller]
fn assert_reference_answers(answers: &Value, events: &[Event]) {
    let want = [
        ("core", reference::core(events)),
        ("core_series", reference::core_series(events)),
        ("event_counts", reference::event_counts(events)),
        ("funnel", reference::funnel(events)),
    ];
    for (name, want) in want {
        assert_eq!(answers[name], want, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Sessionizer edge cases.

#[test]
fn sessionizer_keeps_events_exactly_a_gap_apart_and_splits_one_ms_later() {
    let host = Host::new();
    let mut stage = host.start("sessionizer", "{}");
    let events =
        [0, GAP_MS, 2 * GAP_MS + 1, 3 * GAP_MS + 1].map(|t| event(BASE + t, "u", "click", ""));
    let ids = sessionize(&mut stage, &events, events.len());
    assert_eq!(ids, reference::session_ids(&events, GAP_MS));
    // Exactly `gap` apart: one session; `gap + 1` apart: a new one, named by its start.
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
    assert_eq!(ids[2], format!("u:{}", events[2].time));
    assert_eq!(ids[3], ids[2]);
}

#[test]
fn sessionizer_one_event_sessions() {
    let host = Host::new();
    let mut stage = host.start("sessionizer", "{}");
    // Users seen once, and one user whose every event is more than a gap after the last.
    let mut events: Vec<Event> = (0..5)
        .map(|i| event(BASE + i, &format!("once-{i}"), "click", ""))
        .collect();
    events.extend((0..4).map(|i| event(BASE + 10 + i * (GAP_MS + 1), "sparse", "page_view", "/")));
    events.sort_by_key(|e| e.time);
    let ids = sessionize(&mut stage, &events, 3);
    assert_eq!(ids, reference::session_ids(&events, GAP_MS));
    // Every event is its own session: the id is its user and its time.
    let own: Vec<String> = events
        .iter()
        .map(|e| format!("{}:{}", e.user, e.time))
        .collect();
    assert_eq!(ids, own);
}

#[test]
fn sessionizer_interleaved_users_in_batches_of_any_size() {
    let events = clickstream::events(7, 25);
    let expected = reference::session_ids(&events, GAP_MS);
    assert!(
        expected.iter().collect::<BTreeSet<_>>().len() > 25,
        "the stream has users with several sessions"
    );
    for batch_size in [1, 7, 64, events.len()] {
        let host = Host::new();
        let mut stage = host.start("sessionizer", "{}");
        assert_eq!(
            sessionize(&mut stage, &events, batch_size),
            expected,
            "batches of {batch_size}"
        );
    }
}

#[test]
fn sessionizer_session_spans_batches() {
    let host = Host::new();
    let mut stage = host.start("sessionizer", "{}");
    // Every 10 minutes for 3 hours, three events per batch, with ticks between.
    let events: Vec<Event> = (0..18)
        .map(|i| event(BASE + i * 10 * MINUTE, "long", "page_view", "/"))
        .collect();
    let ids = sessionize(&mut stage, &events, 3);
    assert_eq!(ids, reference::session_ids(&events, GAP_MS));
    assert!(
        ids.iter().all(|id| *id == format!("long:{BASE}")),
        "one session across six batches: {ids:?}"
    );
}

#[test]
fn sessionizer_custom_gap() {
    let host = Host::new();
    let mut stage = host.start("sessionizer", r#"{"gap_ms": 1000}"#);
    let times = [0, 1000, 2001, 2500, 3500, 4501, 4501, 60_000];
    let mut events: Vec<Event> = times
        .iter()
        .map(|&t| event(BASE + t, "u", "click", ""))
        .collect();
    events.extend(
        times
            .iter()
            .map(|&t| event(BASE + t + 500, "v", "click", "")),
    );
    events.sort_by_key(|e| e.time);
    let ids = sessionize(&mut stage, &events, 4);
    assert_eq!(ids, reference::session_ids(&events, 1000));
    // The same events with the default gap are one session per user.
    assert_ne!(ids, reference::session_ids(&events, GAP_MS));
    assert_eq!(
        reference::session_ids(&events, GAP_MS)
            .iter()
            .collect::<BTreeSet<_>>()
            .len(),
        2
    );
}

#[test]
fn sessionizer_tick_evicts_closed_sessions_and_results_stay_right() {
    let host = Host::new();
    let mut stage = host.start("sessionizer", "{}");
    let first = [
        event(BASE, "gone", "page_view", "/"),
        event(BASE + 1, "stays", "page_view", "/"),
        event(BASE + GAP_MS, "stays", "page_view", "/a"),
    ];
    let second = [
        event(BASE + GAP_MS + 1, "gone", "page_view", "/"),
        event(BASE + 2 * GAP_MS, "stays", "page_view", "/b"),
    ];
    let mut ids = sessionize(&mut stage, &first, first.len());
    // No event older than this follows: `gone`'s session (last event a gap
    // + 1 ms earlier) is closed, `stays`'s is not.
    let watermark = BASE + GAP_MS + 1;
    stage.tick(watermark).expect("tick");
    host.checkpoint(&mut [&mut stage]);
    let state = host.store.plugin_state("sessionizer", 0);
    assert_eq!(
        state.get(b"open\0gone").expect("a read"),
        None,
        "the closed session is evicted from the state"
    );
    assert!(
        state.get(b"open\0stays").expect("a read").is_some(),
        "the open session is kept"
    );

    ids.extend(sessionize(&mut stage, &second, second.len()));
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    assert_eq!(ids, reference::session_ids(&all, GAP_MS));
    assert_eq!(
        ids[3],
        format!("gone:{}", BASE + GAP_MS + 1),
        "a returning user starts a new session"
    );
    assert_eq!(
        ids[4],
        format!("stays:{}", BASE + 1),
        "the open session goes on"
    );
}

#[test]
fn sessionizer_tick_after_a_restart_evicts_sessions_from_before_it() {
    let host = Host::new();
    let mut stage = host.start("sessionizer", "{}");
    let users: Vec<String> = (0..3000).map(|u| format!("u{u}")).collect();
    let events: Vec<Event> = users
        .iter()
        .map(|u| event(BASE, u, "page_view", "/"))
        .collect();
    sessionize(&mut stage, &events, 512);
    host.checkpoint(&mut [&mut stage]);
    drop(stage);

    // A new instance has none of the sessions in memory; its first tick
    // still closes every one of them (more entries than one scan page).
    let host = host.reopen();
    let mut stage = host.start("sessionizer", "{}");
    stage.tick(BASE + GAP_MS + 1).expect("tick");
    host.checkpoint(&mut [&mut stage]);
    let state = host.store.plugin_state("sessionizer", 0);
    assert_eq!(
        state.scan(b"open\0", None, 10).expect("a scan"),
        vec![],
        "every closed session is evicted"
    );
}

// ---------------------------------------------------------------------------
// Metrics over a generated clickstream.

#[test]
fn metrics_all_time_match_the_reference() {
    let events = clickstream::events(42, 40);
    let host = Host::new();
    let answers = Pipeline::fed(&host, &events, 50).answers();
    assert_reference_answers(&answers, &events);
    let funnel = &answers["funnel"];
    assert!(
        funnel["steps"][3]["sessions"].as_u64() > Some(0),
        "some sessions reach the last step: {funnel}"
    );
}

#[test]
fn core_ranges_windows_and_buckets_match_the_reference() {
    let events = clickstream::events(1234, 40);
    let host = Host::new();
    let mut pipeline = Pipeline::fed(&host, &events, 64);
    let core = &mut pipeline.core;
    let newest = events.iter().map(|e| e.time).max().expect("events");

    // from / to, off the bucket boundaries, in epoch ms and in RFC 3339.
    for (from, to) in [
        (START_MS + 17 * MINUTE + 123, START_MS + 63 * MINUTE + 7),
        (START_MS - MINUTE, START_MS + 5 * MINUTE),
        (newest, newest + 1),
    ] {
        let got = query(
            core,
            &[("from", &from.to_string()), ("to", &to.to_string())],
        );
        assert_eq!(
            got,
            reference::core_range(&events, from, Some(to)),
            "from {from} to {to}"
        );
        let rfc3339 = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .expect("a valid time")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        assert_eq!(
            query(core, &[("from", &rfc3339(from)), ("to", &rfc3339(to))]),
            got,
            "RFC 3339 times"
        );
    }
    // Only `from`: up to the end of time, `to` echoed as null.
    let from = START_MS + 45 * MINUTE;
    let got = query(core, &[("from", &from.to_string())]);
    assert_eq!(got["to"], Value::Null);
    assert_eq!(got, reference::core_range(&events, from, None), "only from");

    // window=5m: the five minutes up to the newest event.
    assert_eq!(
        query(core, &[("window", "5m")]),
        reference::core_range(&events, newest - 5 * MINUTE, Some(newest + 1)),
        "window=5m"
    );

    // bucket=1m: one point per minute from the first event's to the newest's.
    let got = query(core, &[("bucket", "1m")]);
    assert_eq!(got, reference::core_series(&events), "bucket=1m");
    // The buckets add up to all time.
    let total: u64 = got["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| p["total_events"].as_u64().expect("n"))
        .sum();
    assert_eq!(total, events.len() as u64);
}

// ---------------------------------------------------------------------------
// Restarts.

#[test]
fn restart_from_a_checkpoint_equals_one_uninterrupted_run() {
    let events = clickstream::events(99, 40);
    let (first, second) = events.split_at(events.len() / 2);

    let uninterrupted = Host::new();
    let mut pipeline = Pipeline::start(&uninterrupted);
    let seen_once = pipeline.feed(&events, 50);
    let want = pipeline.answers();

    let host = Host::new();
    let mut pipeline = Pipeline::start(&host);
    let mut seen = pipeline.feed(first, 50);
    host.checkpoint(&mut pipeline.all());
    // Stop everything, close sled, and come back from what is on disk.
    drop(pipeline);
    let host = host.reopen();
    let mut pipeline = Pipeline::start(&host);
    seen.extend(pipeline.feed(second, 50));

    assert_eq!(seen, seen_once, "sessions continue across the restart");
    assert_eq!(pipeline.answers(), want);
    assert_reference_answers(&want, &events);
}

// ---------------------------------------------------------------------------
// Errors and fixtures.

#[test]
fn query_with_bad_parameters_fails_naming_query() {
    let host = Host::new();
    let mut core = host.start("core", "{}");
    let params = [("window".to_owned(), "abc".to_owned())];
    let err = core.query(&params).expect_err("`abc` is not a duration");
    let Error::Failed {
        plugin,
        function,
        message,
    } = &err
    else {
        panic!("expected Error::Failed, got {err}");
    };
    assert_eq!((plugin.as_str(), *function), ("core", "query"));
    assert!(message.contains("abc"), "{message}");
    assert!(err.to_string().contains("`query`"), "{err}");
    // The instance is still usable.
    assert_eq!(query(&mut core, &[])["total_events"], 0);
}

#[test]
fn load_rejects_bytes_that_are_not_wasm() {
    match runtime().load("junk", b"this is not a WebAssembly component") {
        Err(Error::Compile { plugin, .. }) => assert_eq!(plugin, "junk"),
        Err(other) => panic!("expected Error::Compile, got {other}"),
        Ok(_) => panic!("junk loaded"),
    }
}

#[test]
fn bad_config_fails_init_and_roles_are_checked() {
    let host = Host::new();
    match host.try_start("sessionizer", r#"{"gap": 5}"#) {
        Err(Error::Failed {
            function: "init",
            message,
            ..
        }) => assert!(message.contains("gap"), "{message}"),
        Err(other) => panic!("expected Error::Failed in init, got {other}"),
        Ok(_) => panic!("an unknown setting was accepted"),
    }
    let mut stage = host.start("sessionizer", "{}");
    let b = batch(&[event(BASE, "u", "click", "")]);
    assert!(matches!(
        stage.ingest(&b),
        Err(Error::Role {
            expected: Role::Metric,
            actual: Role::Stage,
            ..
        })
    ));
    let mut metric = host.start("noop", "{}");
    assert!(matches!(
        metric.process(&b),
        Err(Error::Role {
            expected: Role::Stage,
            actual: Role::Metric,
            ..
        })
    ));
}

#[test]
fn apply_rejects_malformed_output_leaving_the_batch_unchanged() {
    let events = clickstream::events(5, 3);
    let mut b = batch(&events);
    let before = format!("{b:?}");
    let strings = b.ends.len() as u32;
    let good = b.events[0];

    let output = |event: RawEvent, props: Vec<Prop>| StageOutput {
        text: Vec::new(),
        ends: Vec::new(),
        events: vec![event],
        props,
    };
    let malformed = [
        (
            "string index out of range",
            output(
                RawEvent {
                    path: strings,
                    ..good
                },
                vec![],
            ),
        ),
        ("empty user", output(RawEvent { user: 0, ..good }, vec![])),
        ("empty name", output(RawEvent { name: 0, ..good }, vec![])),
        (
            "props out of range",
            output(
                RawEvent {
                    props_start: b.props.len() as u32,
                    props_len: 1,
                    ..good
                },
                vec![],
            ),
        ),
        (
            "prop string out of range",
            output(
                good,
                vec![Prop {
                    key: strings + 1,
                    value: 0,
                }],
            ),
        ),
        (
            "added string past the text",
            StageOutput {
                text: b"x".to_vec(),
                ends: vec![2],
                events: vec![good],
                props: Vec::new(),
            },
        ),
        (
            "out of time order",
            StageOutput {
                events: vec![
                    good,
                    RawEvent {
                        time: good.time - 1,
                        ..good
                    },
                ],
                ..output(good, vec![])
            },
        ),
    ];
    for (what, out) in malformed {
        assert!(apply(&mut b, out).is_err(), "{what} was accepted");
        assert_eq!(format!("{b:?}"), before, "{what} changed the batch");
    }
}

#[test]
fn noop_fixtures_ignore_and_pass_through() {
    let host = Host::new();
    let events = clickstream::events(3, 5);
    let mut metric = host.start("noop", "{}");
    metric.ingest(&batch(&events)).expect("ingest");
    assert_eq!(query(&mut metric, &[]), json!({}));

    let mut stage = host.start("noop_stage", "{}");
    let before = batch(&events);
    let after = run_stage(&mut stage, &events);
    assert_eq!(
        format!("{after:?}"),
        format!("{before:?}"),
        "the identity stage changes nothing"
    );
    assert_eq!(events_of(&after), events);
}

// ---------------------------------------------------------------------------
// The sandbox.

#[test]
fn escape_fixture_reaches_nothing_outside_its_sandbox() {
    let host = Host::new();
    let mut escape = host.start("escape", "{}");
    assert_eq!(
        query(&mut escape, &[]),
        json!({
            "read_root": false,
            "read_file": false,
            "write_file": false,
            "env": 0,
            "args": 0,
            "clock_secs": 0,
            "tcp": false,
        }),
        "no files, environment, arguments, clock or network"
    );
}

/// A durable store whose reads fail, like a failing disk.
struct FailingReads;

impl weft_state::DurableState for FailingReads {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, weft_state::StateError> {
        Err(weft_state::StateError::Corrupt {
            what: "test store",
            detail: "the disk is failing".into(),
        })
    }

    fn scan(
        &self,
        _: &[u8],
        _: Option<&[u8]>,
        _: usize,
    ) -> Result<weft_state::Entries, weft_state::StateError> {
        self.get(b"").map(|_| Vec::new())
    }
}

#[test]
fn a_failed_state_read_fails_the_call_and_never_reads_as_empty_state() {
    // A `Map` asks the host whether it holds anything at `init`.
    for name in ["event_counts", "core"] {
        let started = Plugin::start(
            runtime(),
            name,
            &compiled().1[name],
            std::sync::Arc::new(FailingReads),
            "{}",
            weft_runtime::Limits::default(),
        );
        match started {
            Err(Error::State {
                plugin, function, ..
            }) => assert_eq!((plugin.as_str(), function), (name, "init")),
            other => panic!(
                "expected the read to fail `init` of {name}, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
