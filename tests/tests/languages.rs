//! Plugins in every supported language, through the real `weft` binary.
//!
//! - The `page_stats` example (bounce rate and time on page per path) in
//!   Rust, Python, JavaScript (both engines) and C is built from source with
//!   its documented command, loaded into one `weft` beside the bundled
//!   plugins, fed a generated clickstream through the Kafka-protocol broker
//!   (4 partitions keyed by user, so each language's `merge` combines four
//!   partial answers) — stopped with SIGKILL halfway and restarted on its
//!   data directory — and every language must answer exactly what the plain
//!   reference below computes over the unsplit stream.
//! - `weft plugin new` makes, for every language, a project that builds with
//!   the command it prints and passes the test it prints.
//! - `weft plugin check` names what is missing from a component of the wrong
//!   world.
//!
//! Needs the toolchains `scripts/test.sh` installs: componentize-py, Node.js
//! and npm, clang + lld + wasi-libc, wit-bindgen-cli and wasm-tools.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};
use weft_tests::{
    broker::{brokers, create_topic, kafka_args, produce},
    clickstream::{Delivery, Event, events},
    languages::{Example, build_examples, sh},
    process::{Weft, binary},
    reference::{GAP_MS, session_ids},
};

/// Per path totals of the reference.
#[derive(Default)]
struct PathTotals {
    entries: u64,
    bounces: u64,
    views: u64,
    timed_views: u64,
    time_ms: i64,
}

/// `page_stats` by its definition, over whole sessions: a session's entry
/// page is its first page view's path and it bounced if it has exactly one
/// page view; a page view is timed by the session's next event, if any.
fn reference(events: &[Event]) -> Value {
    let ids = session_ids(events, GAP_MS);
    let mut sessions: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for (event, id) in events.iter().zip(&ids) {
        sessions.entry(id).or_default().push(event);
    }
    let mut paths: BTreeMap<&str, PathTotals> = BTreeMap::new();
    for session in sessions.values_mut() {
        session.sort_by_key(|e| e.time);
        let views: Vec<usize> = (0..session.len())
            .filter(|&i| session[i].name == "page_view")
            .collect();
        if let Some(&first) = views.first() {
            let entry = paths.entry(&session[first].path).or_default();
            entry.entries += 1;
            entry.bounces += u64::from(views.len() == 1);
        }
        for &i in &views {
            let totals = paths.entry(&session[i].path).or_default();
            totals.views += 1;
            if let Some(next) = session.get(i + 1) {
                totals.timed_views += 1;
                totals.time_ms += next.time - session[i].time;
            }
        }
    }
    let ratio = |n: f64, d: u64| {
        if d == 0 {
            Value::Null
        } else {
            json!(n / d as f64)
        }
    };
    let paths: serde_json::Map<String, Value> = paths
        .into_iter()
        .map(|(path, t)| {
            let stats = json!({
                "entries": t.entries,
                "bounces": t.bounces,
                "bounce_rate": ratio(t.bounces as f64, t.entries),
                "views": t.views,
                "timed_views": t.timed_views,
                "time_on_page_ms": ratio(t.time_ms as f64, t.timed_views),
            });
            (path.to_owned(), stats)
        })
        .collect();
    json!({ "paths": paths })
}

/// Generated events with no two of a user at the same millisecond (which of
/// two simultaneous events is "next" would be a matter of delivery order),
/// as messages in time order.
fn stream() -> (Vec<Event>, Vec<Delivery>) {
    let mut events = events(29, 250);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for e in &mut events {
        let previous = last.entry(e.user.clone()).or_insert(i64::MIN);
        e.time = e.time.max(*previous + 1);
        *previous = e.time;
    }
    events.sort_by_key(|e| e.time);
    let deliveries = events
        .iter()
        .map(|e| Delivery {
            key: e.user.clone(),
            payload: serde_json::to_vec(&json!({
                "event_id": e.id,
                "ts": e.time,
                "user_id": e.user,
                "event": e.name,
                "path": e.path,
                "platform": e.device,
            }))
            .expect("JSON"),
        })
        .collect();
    (events, deliveries)
}

fn config(dir: &Path, wasm: &[(&Example, PathBuf)]) -> String {
    let mut text = String::from(
        "\
         [pipeline]\ncheckpoint_interval_ms = 100\nbatch_size = 256\n\n\
         [[plugins]]\nname = \"sessionizer\"\n\n[[plugins]]\nname = \"core\"\n\n",
    );
    for (example, path) in wasm {
        text.push_str(&format!(
            "[[plugins]]\nname = \"{}\"\nmodule = {:?}\nlimits = {}\n\n",
            example.instance,
            path.display().to_string(),
            example.limits.unwrap_or("{}"),
        ));
    }
    let path = dir.join("weft.toml");
    std::fs::write(&path, text).expect("write weft.toml");
    path.display().to_string()
}

#[test]
fn page_stats_is_exact_in_every_language_across_a_restart() {
    let wasm = build_examples();

    let (events, deliveries) = stream();
    let want = reference(&events);
    assert!(
        want["paths"].as_object().is_some_and(|p| p.len() > 5),
        "the stream should cover many paths: {want}"
    );
    let topic = create_topic(4);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = config(dir.path(), &wasm);
    let group = format!("{topic}-languages");
    let args = kafka_args(&topic, &group, &brokers, Some(&config));
    let data = dir.path().join("data");

    // The first half, then SIGKILL: what was not checkpointed is read again.
    let half = deliveries.len() / 2;
    produce(&topic, &deliveries[..half]);
    let weft = Weft::start(&data, &args);
    weft.wait_until_processed(half as u64, 0, half as u64);
    weft.kill();
    produce(&topic, &deliveries[half..]);
    let weft = Weft::start(&data, &args);
    let n = deliveries.len() as u64;
    weft.wait_until_processed(n, 0, n);

    for (example, _) in &wasm {
        let answer = weft.get(&format!("/api/plugins/{}/query", example.instance));
        assert_eq!(
            answer, want,
            "{} differs from the reference",
            example.instance
        );
    }
}

/// The `build:` and `test:` lines `weft plugin new` prints.
fn printed(output: &str, label: &str) -> String {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{output}"))
        .trim()
        .to_owned()
}

#[test]
fn every_scaffold_builds_and_passes_its_own_test() {
    let weft = binary();
    let dir = tempfile::tempdir().expect("a temp dir");
    for lang in ["rust", "python", "js", "c"] {
        let name = format!("my_{lang}_metric");
        let project = dir.path().join(&name);
        let made = sh(
            dir.path(),
            &format!("{} plugin new {name} --lang {lang}", weft.display()),
        );
        sh(&project, &printed(&made, "build:"));
        let test = printed(&made, "test:");
        let test = test
            .strip_prefix("weft ")
            .unwrap_or_else(|| panic!("the test line runs weft: {test}"));
        let out = sh(&project, &format!("{} {test}", weft.display()));
        assert!(
            out.contains("The answer equals expected.json."),
            "{lang}: {out}"
        );
    }
}

#[test]
fn check_names_what_a_component_of_the_wrong_world_lacks() {
    let weft = binary();
    let artifacts = Path::new(weft::bundled::ARTIFACTS_DIR);
    let run = |args: &[&str]| {
        let out = Command::new(&weft)
            .args(args)
            .output()
            .expect("run weft plugin check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let wasm = |name: &str| artifacts.join(format!("{name}.wasm")).display().to_string();

    let (ok, out) = run(&["plugin", "check", &wasm("core")]);
    assert!(ok, "{out}");
    assert!(out.contains("fits the `metric` world"), "{out}");

    let (ok, out) = run(&["plugin", "check", &wasm("wrong_world")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("as a metric: missing export(s) init, ingest, tick, checkpoint, query")
            && out.contains("as a stage: missing export(s) init, process, tick, checkpoint"),
        "{out}"
    );

    let (ok, out) = run(&["plugin", "check", &wasm("sessionizer"), "--role", "metric"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("does not fit the `metric` world: missing export(s) ingest, query"),
        "{out}"
    );
}
