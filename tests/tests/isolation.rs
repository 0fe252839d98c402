//! Fault isolation, end to end through the real `weft` binary and real HTTP.
//!
//! A generated clickstream (from a JSON-lines file) in which a handful of
//! events, far apart, are renamed `boom`; misbehaving fixture plugins
//! (`plugins/fixtures/faulty`, `plugins/fixtures/garbage-stage`) fail on the
//! batches that hold one. Every assertion is exact:
//!
//! - the host and the well-behaved plugins keep producing the reference
//!   answers;
//! - a failing plugin loses nothing and counts nothing twice: what it counted
//!   plus the events of its dead letters is the reference over every event,
//!   and every dead letter names the cause and the module digest;
//! - a plugin that fails on every batch is quarantined, still losing nothing;
//! - batches a stage returns malformed are dead-lettered for it and reach no
//!   metric;
//! - components that cannot be loaded stop `weft run` at startup with a clear
//!   error.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use weft_tests::{
    clickstream::{Event, Stream, generate},
    process::{Weft, binary},
    reference, wait_for,
};

const LATENESS_MS: i64 = 5_000;
/// Small batches, so the stream makes many and a `boom` is rare among them.
const BATCH_SIZE: usize = 64;
/// How many events are renamed `boom`.
const BOOMS: usize = 5;
/// Consecutive failures after which a plugin is quarantined (the default).
const QUARANTINE_AFTER: usize = 3;
/// The faulty instances' limits: small, so a runaway call ends quickly.
const LIMITS: &str = "{ cpu_ms = 50, memory_mib = 32 }";
/// The memory hog's limits: only memory must stop it, so its CPU budget is
/// ample (filling 32 MiB takes a few milliseconds of CPU time).
const HOG_LIMITS: &str = "{ cpu_ms = 2000, memory_mib = 32 }";

/// A fixture component built by the plugins workspace.
fn fixture(artifact: &str) -> PathBuf {
    let path = Path::new(weft::bundled::ARTIFACTS_DIR).join(format!("{artifact}.wasm"));
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A generated stream in which `BOOMS` accepted events, evenly spread (never
/// the first or last), are named `boom`, in the ground truth and in every
/// delivery of them alike.
fn stream_with_booms(seed: u64, users: usize) -> (Stream, BTreeSet<String>) {
    let mut stream = generate(seed, users, LATENESS_MS);
    let n = stream.events.len();
    let booms: BTreeSet<String> = (1..=BOOMS)
        .map(|k| stream.events[n * k / (BOOMS + 1)].id.clone())
        .collect();
    assert_eq!(booms.len(), BOOMS);
    for e in &mut stream.events {
        if booms.contains(&e.id) {
            e.name = "boom".into();
        }
    }
    for d in &mut stream.deliveries {
        // Malformed messages may not even be JSON: those stay as they are.
        let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(&d.payload) else {
            continue;
        };
        if !o
            .get("event_id")
            .and_then(Value::as_str)
            .is_some_and(|id| booms.contains(id))
        {
            continue;
        }
        // Every input shape names the event `event`, except one: `action`.
        let key = if o.contains_key("action") {
            "action"
        } else {
            "event"
        };
        o.insert(key.into(), json!("boom"));
        d.payload = serde_json::to_vec(&o).expect("JSON");
    }
    (stream, booms)
}

/// Writes a weft.toml with the `[[plugins]]` entries given, holding events
/// back by `lateness_ms`; returns its path.
fn write_config(dir: &Path, lateness_ms: i64, plugins: &str) -> String {
    let path = dir.join("weft.toml");
    let text = format!(
        "[pipeline]\nlateness_ms = {lateness_ms}\nbatch_size = {BATCH_SIZE}\nquarantine_after = {QUARANTINE_AFTER}\n\n{plugins}"
    );
    std::fs::write(&path, text).expect("write weft.toml");
    path.display().to_string()
}

/// A `[[plugins]]` entry of the bundled plugin `name`.
fn bundled(name: &str) -> String {
    format!("[[plugins]]\nname = \"{name}\"\n\n")
}

/// A `faulty` instance that misbehaves with `fault` on batches holding `on`.
fn faulty(name: &str, fault: &str, on: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\nmodule = {:?}\nconfig = {{ fault = \"{fault}\", on = \"{on}\" }}\nlimits = {}\n\n",
        fixture("faulty").display().to_string(),
        if fault == "hog" { HOG_LIMITS } else { LIMITS }
    )
}

/// Starts weft over the file and waits until the file is read to its end and
/// every event released: the final checkpoint, dead letters included, is
/// written in the same pipeline step that publishes `source_running: false`.
fn run_to_end(dir: &Path, source: &str, config: &str, accepted: usize) -> Weft {
    let weft = Weft::start(&dir.join("data"), &["--source", source, "--config", config]);
    // The stream takes about a second; a pipeline stuck for good shows here.
    wait_for(
        "weft to read the whole file",
        Duration::from_secs(120),
        || {
            let status = weft.try_get("/api/status")?;
            let done = status["source_running"] == json!(false)
                && status["buffered"] == json!(0)
                && status["events"]["accepted"] == json!(accepted);
            if done {
                Ok(Some(()))
            } else {
                Err(format!("status {status}"))
            }
        },
    );
    weft
}

/// `GET /api/plugins`, by name.
/// The bundled metrics beside the misbehaving plugins stay exact.
fn assert_bundled_exact(weft: &Weft, events: &[Event]) {
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(events),
        "core"
    );
    assert_eq!(
        weft.get("/api/plugins/event_counts/query"),
        reference::event_counts(events),
        "event_counts"
    );
}

fn plugins(weft: &Weft) -> BTreeMap<String, Value> {
    weft.get("/api/plugins")
        .as_array()
        .expect("a list of plugins")
        .iter()
        .map(|p| (p["name"].as_str().expect("a name").to_owned(), p.clone()))
        .collect()
}

/// Every dead letter of `plugin`, page by page.
fn dead_letters(weft: &Weft, plugin: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = weft.get(&format!(
            "/api/plugins/{plugin}/dead-letters?limit=7{after}"
        ));
        let letters = page["dead_letters"].as_array().expect("a list");
        all.extend(letters.iter().cloned());
        match page["next"].as_str() {
            Some(next) if !letters.is_empty() => after = format!("&after={next}"),
            _ => return all,
        }
    }
}

/// The events of dead letters.
fn letter_events(letters: &[Value]) -> Vec<&Value> {
    letters
        .iter()
        .flat_map(|l| l["events"].as_array().expect("events"))
        .collect()
}

/// Events per name, as `event_counts` answers them.
fn counts_of(answer: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(answer["counts"].clone())
        .unwrap_or_else(|e| panic!("{answer}: no counts: {e}"))
}

/// What a failing metric counted plus the events of its dead letters must be
/// the reference over every event: nothing lost, nothing counted twice. The
/// dead-lettered events must be distinct accepted events.
fn assert_nothing_lost(weft: &Weft, plugin: &str, letters: &[Value], events: &[Event]) {
    let mut counts = counts_of(&weft.get(&format!("/api/plugins/{plugin}/query")));
    let events_in = letter_events(letters);
    let ids: BTreeSet<&str> = events_in
        .iter()
        .map(|e| e["id"].as_str().expect("an event id"))
        .collect();
    assert_eq!(
        ids.len(),
        events_in.len(),
        "{plugin}: an event dead-lettered twice"
    );
    let accepted: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(
        ids.is_subset(&accepted),
        "{plugin}: dead-lettered events that were never accepted"
    );
    for e in events_in {
        *counts
            .entry(e["name"].as_str().expect("a name").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        counts,
        counts_of(&reference::event_counts(events)),
        "{plugin}: counts plus dead-lettered events"
    );
}

/// Asserts what `/api/plugins` shows of a plugin that failed on each of the
/// `booms` batches and recovered every time.
fn assert_recovered(view: &Value, booms: usize) {
    let name = &view["name"];
    assert_eq!(view["status"], "running", "{name}: {view}");
    assert_eq!(view["quarantined"], Value::Null, "{name}: {view}");
    assert_eq!(
        view["restarts"],
        json!(booms),
        "{name}: one restart per failure: {view}"
    );
    assert_eq!(view["errors"], json!(booms), "{name}: {view}");
    assert_eq!(view["dead_letters"], json!(booms), "{name}: {view}");
}

/// Asserts that each letter names `cause`, carries `digest` and holds a
/// `boom` event.
fn assert_letters(plugin: &str, letters: &[Value], cause: &str, digest: &Value) {
    for letter in letters {
        let error = letter["error"].as_str().expect("an error");
        assert!(
            error.contains(cause) && error.contains(&format!("plugin `{plugin}`")),
            "{plugin}: the dead letter's error should name `{cause}`: {error}"
        );
        assert_eq!(&letter["digest"], digest, "{plugin}: the module digest");
        let events = letter["events"].as_array().expect("events");
        assert!(
            events.iter().any(|e| e["name"] == "boom"),
            "{plugin}: a dead-lettered batch without `boom`: {error}"
        );
    }
}

#[test]
fn failing_metrics_lose_nothing_and_leave_the_others_exact() {
    let (stream, booms) = stream_with_booms(23, 150);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    /// (instance, fault, what its dead letters' errors must say).
    const FAULTS: [(&str, &str, &str); 4] = [
        ("faulty_trap", "trap", "`ingest` trapped"),
        ("faulty_loop", "loop", "exceeded its CPU budget of 50 ms"),
        ("faulty_hog", "hog", "exceeded its memory limit of 32 MiB"),
        (
            "faulty_error",
            "error",
            "`ingest` failed: faulty: told to fail on `boom`",
        ),
    ];
    let mut entries = ["sessionizer", "core", "event_counts"]
        .map(bundled)
        .concat();
    for (name, fault, _) in FAULTS {
        entries.push_str(&faulty(name, fault, "boom"));
    }
    let config = write_config(dir.path(), LATENESS_MS, &entries);
    let weft = run_to_end(dir.path(), &source, &config, stream.events.len());

    // The host and the well-behaved plugins are exact.
    assert_bundled_exact(&weft, &stream.events);
    let views = plugins(&weft);
    for name in ["sessionizer", "core", "event_counts"] {
        let view = &views[name];
        assert_eq!(view["status"], "running", "{view}");
        assert_eq!(
            (&view["errors"], &view["restarts"], &view["dead_letters"]),
            (&json!(0), &json!(0), &json!(0)),
            "{view}"
        );
        assert!(
            dead_letters(&weft, name).is_empty(),
            "{name} has dead letters"
        );
    }

    // Each faulty instance failed on exactly the `boom` batches, recovered,
    // and lost nothing.
    for (name, _, cause) in FAULTS {
        let view = &views[name];
        let letters = dead_letters(&weft, name);
        assert_eq!(
            letters.len(),
            booms.len(),
            "{name}: one dead letter per `boom`"
        );
        assert_letters(name, &letters, cause, &view["digest"]);
        assert_recovered(view, booms.len());
        assert_nothing_lost(&weft, name, &letters, &stream.events);
    }
}

/// The config of a run with the bundled plugins and `faulty_always`, which
/// fails on every batch that holds an event named `on` (with `page_view`,
/// nearly all of them).
fn always_failing(dir: &Path, lateness_ms: i64, on: &str) -> String {
    let mut entries = ["sessionizer", "core", "event_counts"]
        .map(bundled)
        .concat();
    entries.push_str(&faulty("faulty_always", "error", on));
    write_config(dir, lateness_ms, &entries)
}

/// Asserts that `faulty_always` ended quarantined, that its dead letters are
/// its failures up to the quarantine (the last `QUARANTINE_AFTER` of them in a
/// row) and then every batch after it, and that it lost nothing. Returns the
/// number of failed calls.
fn assert_quarantined(weft: &Weft, events: &[Event], on: &str) -> usize {
    let name = "faulty_always";
    let view = &plugins(weft)[name];
    assert_eq!(view["status"], "quarantined", "{view}");
    let failure = format!("`ingest` failed: faulty: told to fail on `{on}`");
    let reason = view["quarantined"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("{QUARANTINE_AFTER} failed calls in a row"))
            && reason.contains(&failure),
        "{view}"
    );
    let letters = dead_letters(weft, name);
    assert_eq!(view["dead_letters"], json!(letters.len()), "{view}");
    // Each partition runs its own instance, failing and quarantined on its
    // own: its letters (listed partition by partition) are its failures,
    // then what came after its quarantine.
    let mut by_partition: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for letter in &letters {
        let part = letter["partition"].as_u64().expect("a partition");
        by_partition.entry(part).or_default().push(letter);
    }
    let mut failed_total = 0;
    for (part, letters) in &by_partition {
        let errors: Vec<&str> = letters
            .iter()
            .map(|l| l["error"].as_str().expect("an error"))
            .collect();
        let failed = errors
            .iter()
            .position(|e| e.starts_with("quarantined: "))
            .unwrap_or(errors.len());
        // No letter after the failures: nothing came after the quarantine,
        // or too little failed for one.
        if failed < errors.len() {
            assert!(
                failed >= QUARANTINE_AFTER,
                "{name} in partition {part}: quarantined too early: {errors:?}"
            );
        }
        for (i, error) in errors.iter().enumerate() {
            let want = if i < failed {
                failure.clone()
            } else {
                "quarantined: ".to_owned()
            };
            assert!(
                error.contains(&want),
                "{name} in partition {part}: dead letter {i}: {error}"
            );
        }
        for letter in &letters[..failed] {
            let events = letter["events"].as_array().expect("events");
            assert!(events.iter().any(|e| e["name"] == on), "{name}: {letter}");
        }
        failed_total += failed;
    }
    assert!(
        letters.iter().any(|l| l["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("quarantined: "))),
        "{name}: no batch dead-lettered as quarantined"
    );
    let failed = failed_total;
    for letter in &letters {
        assert_eq!(
            letter["digest"], view["digest"],
            "{name}: the module digest"
        );
    }
    assert_nothing_lost(weft, name, &letters, events);
    failed
}

/// A metric failing on every batch is quarantined after `quarantine_after`
/// failures, in a stream flowing as usual (the watermark, and so `tick`,
/// moving after nearly every batch).
#[test]
fn a_metric_failing_on_every_batch_is_quarantined_and_loses_nothing() {
    let (stream, _) = stream_with_booms(31, 150);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let config = always_failing(dir.path(), LATENESS_MS, "page_view");
    let weft = run_to_end(dir.path(), &source, &config, stream.events.len());
    assert_bundled_exact(&weft, &stream.events);
    assert_quarantined(&weft, &stream.events, "page_view");
}

/// Once quarantined, a plugin's batches go straight to its dead letters and
/// the pipeline carries on. A lateness beyond the whole stream holds every
/// event until the file ends, so all batches run back to back in one
/// pipeline step, with no `tick` between them: the plugin fails on the first
/// `QUARANTINE_AFTER` and every later one is dead-lettered as quarantined.
#[test]
fn batches_after_a_quarantine_are_dead_lettered_and_the_pipeline_goes_on() {
    let (stream, _) = stream_with_booms(37, 150);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let config = always_failing(dir.path(), 1_000_000_000, "page_view");
    let weft = run_to_end(dir.path(), &source, &config, stream.events.len());
    assert_bundled_exact(&weft, &stream.events);
    let failed = assert_quarantined(&weft, &stream.events, "page_view");
    // Each of the 8 partitions runs its events as batches of its own.
    let mut per_partition: BTreeMap<u32, usize> = BTreeMap::new();
    for e in &stream.events {
        *per_partition
            .entry(weft_pipeline::partition_of(&e.user, 8))
            .or_default() += 1;
    }
    let batches: Vec<usize> = per_partition
        .values()
        .map(|n| n.div_ceil(BATCH_SIZE))
        .collect();
    assert_eq!(
        failed,
        batches
            .iter()
            .map(|&b| b.min(QUARANTINE_AFTER))
            .sum::<usize>(),
        "back-to-back failures in every partition"
    );
    assert_eq!(
        plugins(&weft)["faulty_always"]["dead_letters"],
        json!(batches.iter().sum::<usize>()),
        "every batch dead-lettered"
    );
}

/// What a plugin did before its quarantine stays done across a restart: its
/// successful batches are counted (checkpointed) or dead-lettered, never
/// dropped. With `purchase` as the trigger, some batches succeed before three
/// in a row fail.
#[test]
fn a_quarantined_metric_loses_nothing_across_a_restart() {
    let (stream, _) = stream_with_booms(31, 150);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let config = always_failing(dir.path(), LATENESS_MS, "purchase");
    let weft = run_to_end(dir.path(), &source, &config, stream.events.len());
    assert_quarantined(&weft, &stream.events, "purchase");
    let counted = counts_of(&weft.get("/api/plugins/faulty_always/query"));
    assert!(
        !counted.is_empty(),
        "the test needs batches that succeeded before the quarantine"
    );
    drop(weft);

    // The file is read to its end already: the restart only restores.
    let weft = run_to_end(dir.path(), &source, &config, stream.events.len());
    assert_quarantined(&weft, &stream.events, "purchase");
    assert_eq!(
        counts_of(&weft.get("/api/plugins/faulty_always/query")),
        counted,
        "what the quarantined plugin counted, after a restart"
    );
}

#[test]
fn malformed_stage_output_is_dead_lettered_and_reaches_no_metric() {
    let (stream, booms) = stream_with_booms(29, 150);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let garbage = format!(
        "[[plugins]]\nname = \"garbage\"\nmodule = {:?}\n\n",
        fixture("garbage_stage").display().to_string()
    );
    let entries = [
        bundled("sessionizer"),
        garbage,
        bundled("core"),
        bundled("event_counts"),
    ]
    .concat();
    let config = write_config(dir.path(), LATENESS_MS, &entries);
    let weft = run_to_end(dir.path(), &source, &config, stream.events.len());

    let views = plugins(&weft);
    let view = &views["garbage"];
    assert_eq!(view["role"], "stage", "{view}");
    let letters = dead_letters(&weft, "garbage");
    assert_eq!(letters.len(), booms.len(), "one dead letter per `boom`");
    assert_letters(
        "garbage",
        &letters,
        "`process` returned a malformed batch: event 0 has no user or no event name",
        &view["digest"],
    );
    assert_recovered(view, booms.len());

    // The metrics saw exactly the batches the stage did not spoil.
    let dropped: BTreeSet<&str> = letter_events(&letters)
        .iter()
        .map(|e| e["id"].as_str().expect("an event id"))
        .collect();
    let kept: Vec<Event> = stream
        .events
        .iter()
        .filter(|e| !dropped.contains(e.id.as_str()))
        .cloned()
        .collect();
    assert_eq!(
        dropped.len() + kept.len(),
        stream.events.len(),
        "dead-lettered events are accepted events"
    );
    assert_eq!(
        weft.get("/api/plugins/event_counts/query"),
        reference::event_counts(&kept),
        "event_counts over the batches not dead-lettered"
    );
    // `core`'s per-event numbers too. Its session numbers are not those of
    // the kept events alone: the sessionizer, upstream of the failing stage,
    // had already folded the dropped events into its sessions.
    let core = weft.get("/api/plugins/core/query");
    let want = reference::core(&kept);
    for key in [
        "total_events",
        "active_users",
        "device_distribution",
        "browser_distribution",
        "popular_paths",
    ] {
        assert_eq!(
            core[key], want[key],
            "core's {key} over the batches not dead-lettered"
        );
    }
    for name in ["sessionizer", "core", "event_counts"] {
        let view = &views[name];
        assert_eq!(view["status"], "running", "{view}");
        assert_eq!(view["errors"], json!(0), "{view}");
    }
    // Still serving.
    assert_eq!(
        weft.get("/api/status")["events"]["accepted"],
        json!(stream.events.len())
    );
}

/// Runs `weft run` with a config whose one plugin is `module`, expecting it
/// to exit at startup; returns its stderr.
fn startup_error(dir: &Path, module: &Path) -> String {
    std::fs::create_dir_all(dir).expect("a directory");
    let config = dir.join("weft.toml");
    let text = format!(
        "[[plugins]]\nname = \"bad\"\nmodule = {:?}\n",
        module.display().to_string()
    );
    std::fs::write(&config, text).expect("write weft.toml");
    let log = dir.join("weft.log");
    let mut child = Command::new(binary())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--source")
        .arg("file:/dev/null")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("start weft");
    let status = wait_for("weft to exit", Duration::from_secs(120), || {
        child.try_wait().map_err(|e| e.to_string())
    });
    let stderr = std::fs::read_to_string(&log).expect("the log");
    assert!(
        !status.success(),
        "weft started with {}: {stderr}",
        module.display()
    );
    stderr
}

#[test]
fn modules_that_are_not_plugin_components_fail_at_startup() {
    let dir = tempfile::tempdir().expect("a temp dir");

    let text = dir.path().join("not-wasm.wasm");
    std::fs::write(&text, "this is not WebAssembly").expect("write");
    let err = startup_error(&dir.path().join("a"), &text);
    assert!(
        err.contains("plugin `bad`: cannot compile the component"),
        "{err}"
    );

    // An empty core module: WebAssembly, but not a component.
    let core = dir.path().join("core-module.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let err = startup_error(&dir.path().join("b"), &core);
    assert!(
        err.contains("plugin `bad`: cannot compile the component"),
        "{err}"
    );

    // A component, but of neither world.
    let err = startup_error(&dir.path().join("c"), &fixture("wrong_world"));
    assert!(
        err.contains("plugin `bad`: the component fits neither the `stage` nor the `metric` world"),
        "{err}"
    );
}
