//! Plugin lifecycle end to end, through the real `weft` binary, real HTTP,
//! a real plugin directory and the real broker:
//!
//! - hot reload under load: `core` is swapped ten times for other builds of
//!   itself (one with an added field) through the plugin directory and the
//!   admin API while events stream in from Kafka; the final results equal
//!   the reference exactly, and the added field is there when its version
//!   runs;
//! - broken uploads (not wasm, the wrong world, a trap in `init`, the wrong
//!   role) leave the old version running with unchanged results, and are
//!   reported; the admin API refuses requests without or with a wrong token
//!   (401), without a configured token (403), and oversized uploads (413);
//! - versions and rollback, unload, and what a restart brings back;
//! - dead letters replayed into a fixed version, and quarantine cleared by a
//!   reload.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};
use weft_tests::{
    broker::{brokers, create_topic, kafka_args, produce},
    clickstream::{Delivery, Event, generate},
    process::Weft,
    reference, wait_for,
};

const LATENESS_MS: i64 = 5_000;
const TOKEN: &str = "s3cret-admin-token";

/// A component built by the plugins workspace.
fn artifact(name: &str) -> Vec<u8> {
    let path = Path::new(weft::bundled::ARTIFACTS_DIR).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn digest(bytes: &[u8]) -> String {
    weft_runtime::digest(bytes)
}

/// `core`'s reference answer, plus the field `core_next` adds, computed the
/// same way: sessions per active user.
fn core_with_sessions_per_user(events: &[Event]) -> Value {
    let mut want = reference::core(events);
    let sessions = want["session_count"].as_u64().expect("session_count");
    let users = want["active_users"].as_u64().expect("active_users");
    want["sessions_per_user"] = json!(if users == 0 {
        0.0
    } else {
        sessions as f64 / users as f64
    });
    want
}

/// The running version of plugin `name`, if it runs.
fn running(weft: &Weft, name: &str) -> Option<Value> {
    weft.get("/api/plugins")
        .as_array()
        .expect("a list of plugins")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

fn wait_for_digest(weft: &Weft, name: &str, digest: &str) {
    wait_for(
        &format!("`{name}` to run {digest}"),
        Duration::from_secs(60),
        || {
            let view = running(weft, name);
            match &view {
                Some(v) if v["digest"] == digest => Ok(Some(())),
                _ => Err(format!("{view:?}")),
            }
        },
    );
}

/// `GET /api/plugins/{name}/versions` once `done` holds for it.
fn recorded_versions(weft: &Weft, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        &format!("`{name}`'s version record"),
        Duration::from_secs(30),
        || {
            let versions = weft.try_get(&format!("/api/plugins/{name}/versions"))?;
            if done(&versions) {
                Ok(Some(versions))
            } else {
                Err(versions.to_string())
            }
        },
    )
}

/// Writes `bytes` to `path` in two parts a moment apart, as a compiler
/// would: the debounce must load only the whole file.
fn write_in_parts(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::File::create(path).expect("create the component file");
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    file.write_all(first).expect("write");
    file.sync_all().expect("sync");
    std::thread::park_timeout(Duration::from_millis(40));
    file.write_all(rest).expect("write");
}

fn put(weft: &Weft, name: &str, query: &str, bytes: &[u8]) -> (u16, Value) {
    weft.send(
        "PUT",
        &format!("/api/plugins/{name}{query}"),
        Some(TOKEN),
        bytes,
    )
}

/// A PUT announcing a `length`-byte body, over a raw connection: the limit
/// is checked against `Content-Length` before the body is read, so the
/// answer comes without sending it (a client streaming the body could be cut
/// off mid-write by the early answer).
fn oversized_put(weft: &Weft, length: usize) -> (u16, Value) {
    let addr = weft.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "PUT /api/plugins/core HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request head");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("the answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (status, json)
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("weft.toml");
    std::fs::write(&path, text).expect("write weft.toml");
    path.display().to_string()
}

#[test]
fn hot_reload_under_load_is_exact() {
    let stream = generate(31, 300, LATENESS_MS);
    // One partition: the stream's hours of event time go by in seconds, so
    // with several partitions read while they are written, a few
    // milliseconds between their fetches would be minutes of event time and
    // make events late (end_to_end.rs covers several partitions, produced
    // up front).
    let topic = create_topic(1);
    let dir = tempfile::tempdir().expect("a temp dir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("the plugin directory");
    let core_file = plugin_dir.join("core.wasm");
    let original = artifact("core");
    std::fs::write(&core_file, &original).expect("core.wasm");
    // Nothing is released for being idle: the run ends with a sentinel event
    // far ahead that moves the watermark past every real one.
    let config = write_config(
        dir.path(),
        &format!(
            "\
             [pipeline]\nlateness_ms = {LATENESS_MS}\nidle_ms = 3600000\ncheckpoint_interval_ms = 200\nbatch_size = 128\n\n\
             [[plugins]]\nname = \"sessionizer\"\n[[plugins]]\nname = \"event_counts\"\n[[plugins]]\nname = \"funnel\"\n"
        ),
    );
    let brokers = brokers();
    let plugin_dir_arg = plugin_dir.display().to_string();
    let group = format!("{topic}-reload");
    let mut args = kafka_args(&topic, &group, &brokers, Some(&config));
    args.extend(["--plugins", &plugin_dir_arg, "--admin-token", TOKEN]);
    let weft = Weft::start(&dir.path().join("data"), &args);
    assert_eq!(
        running(&weft, "core").expect("core from the directory")["digest"],
        digest(&original)
    );

    let newest = stream.events.iter().map(|e| e.time).max().expect("events");
    let sentinel = Delivery {
        key: "sentinel".into(),
        payload: json!({
            "event_id": "sentinel", "user_id": "sentinel", "event": "page_view",
            "ts": newest + 10 * LATENESS_MS,
        })
        .to_string()
        .into_bytes(),
    };
    const SWAPS: usize = 10;
    let n = stream.deliveries.len();
    let mut chunks: Vec<Vec<Delivery>> = (0..=SWAPS)
        .map(|i| stream.deliveries[i * n / (SWAPS + 1)..(i + 1) * n / (SWAPS + 1)].to_vec())
        .collect();
    chunks.last_mut().expect("chunks").push(sentinel);
    produce(&topic, &chunks[0]);

    // (artifact, whether it adds `sessions_per_user`); the last swap is the
    // version with the added field.
    const VARIANTS: [(&str, bool); 3] = [
        ("core_next", true),
        ("core", false),
        ("core_rebuilt", false),
    ];
    // Under load from the first swap on: the partition is open and busy.
    let first = chunks[0].len() as u64;
    wait_for(
        "weft to read the first chunk",
        Duration::from_secs(120),
        || {
            let status = weft.try_get("/api/status")?;
            Ok((status["events"]["received"].as_u64() >= Some(first)).then_some(()))
        },
    );
    let mut expected_digests = vec![digest(&original)];
    for (k, chunk) in chunks[1..].iter().enumerate() {
        let (name, adds_field) = VARIANTS[k % VARIANTS.len()];
        let bytes = artifact(name);
        let wanted = digest(&bytes);
        assert_ne!(expected_digests.last(), Some(&wanted), "a real swap");
        std::thread::scope(|s| {
            // Events flow in while the new version is validated and swapped.
            let producing = s.spawn(|| produce(&topic, chunk));
            if k % 2 == 0 {
                write_in_parts(&core_file, &bytes);
            } else {
                let (status, applied) = put(&weft, "core", "", &bytes);
                assert_eq!(status, 200, "{applied}");
                assert_eq!(applied["digest"], wanted, "{applied}");
                assert_eq!(&applied["replaced"], &json!(expected_digests.last()));
                assert!(applied["pause_ms"].as_f64().is_some(), "{applied}");
            }
            wait_for_digest(&weft, "core", &wanted);
            producing.join().expect("the producer");
        });
        let view = running(&weft, "core").expect("core");
        assert_eq!(view["reload_error"], Value::Null, "{view}");
        assert!(view["last_swap_pause_ms"].as_f64().is_some(), "{view}");
        let answer = weft.get("/api/plugins/core/query");
        assert_eq!(
            answer.get("sessions_per_user").is_some(),
            adds_field,
            "{name}: {answer}"
        );
        expected_digests.push(wanted);
    }

    let accepted = stream.events.len() as u64;
    // The sentinel stays buffered.
    weft.wait_until_processed(stream.deliveries.len() as u64 + 1, 1, accepted);
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        core_with_sessions_per_user(&stream.events),
        "core after {SWAPS} swaps"
    );
    assert_eq!(
        weft.get("/api/plugins/event_counts/query"),
        reference::event_counts(&stream.events)
    );
    assert_eq!(
        weft.get("/api/plugins/funnel/query"),
        reference::funnel(&stream.events)
    );
    let status = weft.get("/api/status");
    assert_eq!(
        status["events"]["accepted"],
        json!(accepted + 1),
        "{status}"
    );
    assert_eq!(status["events"]["duplicates"], json!(stream.duplicates));

    // Every version is on record, each replaced by the next.
    let versions = recorded_versions(&weft, "core", |v| {
        v["versions"].as_array().map(Vec::len) == Some(expected_digests.len())
    });
    let list = versions["versions"].as_array().expect("versions");
    let digests: Vec<&str> = list.iter().map(|v| v["digest"].as_str().unwrap()).collect();
    assert_eq!(digests, expected_digests, "{versions}");
    let origins: Vec<&str> = list.iter().map(|v| v["origin"].as_str().unwrap()).collect();
    let mut want_origins = vec!["directory"];
    want_origins.extend((0..SWAPS).map(|k| if k % 2 == 0 { "directory" } else { "api" }));
    assert_eq!(origins, want_origins);
    for pair in list.windows(2) {
        assert_eq!(pair[0]["replaced_by"], pair[1]["digest"], "{versions}");
    }
    assert_eq!(versions["current"], json!(expected_digests.last()));
    let metrics = weft.metrics();
    assert!(
        metrics.contains(&format!(
            "weft_plugin_reloads_total{{outcome=\"ok\",plugin=\"core\"}} {SWAPS}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("weft_plugin_swap_pause_seconds_count {SWAPS}")));
}

/// A file source's events, a config with the bundled metrics plus `extra`,
/// run to the end of the file.
struct FileRun {
    dir: tempfile::TempDir,
    events: Vec<Event>,
    source: String,
    config: String,
}

impl FileRun {
    fn new(seed: u64, extra: &str) -> FileRun {
        let stream = generate(seed, 120, LATENESS_MS);
        let dir = tempfile::tempdir().expect("a temp dir");
        let source = stream.write_file(dir.path());
        let config = write_config(
            dir.path(),
            &format!(
                "upload_limit_mib = 1\n[pipeline]\nlateness_ms = {LATENESS_MS}\nbatch_size = 64\n\n\
                 [[plugins]]\nname = \"sessionizer\"\n[[plugins]]\nname = \"core\"\n[[plugins]]\nname = \"event_counts\"\n{extra}"
            ),
        );
        FileRun {
            events: stream.events,
            source,
            config,
            dir,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts weft with `args` and waits until the file is processed.
    fn start(&self, args: &[&str]) -> Weft {
        let mut all = vec![
            "--source",
            self.source.as_str(),
            "--config",
            self.config.as_str(),
        ];
        all.extend_from_slice(args);
        let weft = Weft::start(&self.data(), &all);
        let accepted = self.events.len();
        wait_for("the file to be processed", Duration::from_secs(120), || {
            let status = weft.try_get("/api/status")?;
            let done = status["source_running"] == json!(false)
                && status["buffered"] == json!(0)
                && status["events"]["accepted"] == json!(accepted);
            Ok(done.then_some(()))
        });
        weft
    }

    fn assert_exact(&self, weft: &Weft) {
        assert_eq!(
            weft.get("/api/plugins/core/query"),
            reference::core(&self.events)
        );
        assert_eq!(
            weft.get("/api/plugins/event_counts/query"),
            reference::event_counts(&self.events)
        );
    }
}

#[test]
fn broken_uploads_leave_the_old_version_running() {
    let run = FileRun::new(41, "");
    let weft = run.start(&["--admin-token", TOKEN]);
    run.assert_exact(&weft);
    let core = artifact("core");
    let before = running(&weft, "core").expect("core");
    assert_eq!(before["digest"], digest(&core));

    // Not a token, a wrong one: 401, answered before the body is read (so
    // these send none: a client still writing one would be cut off); a
    // token but too big: 413.
    let (status, body) = weft.send("PUT", "/api/plugins/core", None, b"");
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, body) = weft.send("PUT", "/api/plugins/core", Some("nope"), b"");
    assert_eq!((status, &body["error"]), (401, &json!("wrong admin token")));
    for (method, path) in [
        ("DELETE", "/api/plugins/core"),
        ("POST", "/api/plugins/core/rollback"),
        ("POST", "/api/plugins/core/replay-dead-letters"),
    ] {
        assert_eq!(
            weft.send(method, path, Some("nope"), b"").0,
            401,
            "{method} {path}"
        );
    }
    let (status, body) = oversized_put(&weft, (1 << 20) + 1);
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("upload limit"),
        "{body}"
    );

    // Broken builds: refused with the reason, the old version stays.
    let faulty = artifact("faulty");
    let cases: [(&[u8], &str, u16, &str); 5] = [
        (b"\0asm but not really", "", 422, "cannot compile"),
        (&artifact("wrong_world"), "", 422, "fits neither"),
        (
            &faulty,
            "?config=%7B%22fault%22%3A%22init%22%7D",
            422,
            "told to trap in `init`",
        ),
        (&faulty, "?config=not-json", 400, "not JSON"),
        (&artifact("noop_stage"), "", 409, "runs as a metric"),
    ];
    for (bytes, query, want_status, want_error) in cases {
        let (status, body) = put(&weft, "core", query, bytes);
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(status, want_status, "{want_error}: {body}");
        assert!(
            error.contains(want_error),
            "expected `{want_error}` in: {error}"
        );
        let view = running(&weft, "core").expect("core still runs");
        assert_eq!(view["digest"], before["digest"], "{view}");
        assert_eq!(view["status"], "running", "{view}");
        run.assert_exact(&weft);
    }
    // The failures are reported: the plugin's status, and the counter (the
    // bad config never reached the pipeline's lifecycle: it is the caller's).
    let view = running(&weft, "core").expect("core");
    assert!(
        view["reload_error"]
            .as_str()
            .unwrap()
            .contains("runs as a metric"),
        "{view}"
    );
    let metrics = weft.metrics();
    assert!(
        metrics.contains("weft_plugin_reloads_total{outcome=\"failed\",plugin=\"core\"} 4"),
        "{metrics}"
    );
    let versions = weft.get("/api/plugins/core/versions");
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );

    // A good upload, then rollback: the state carries across both swaps.
    let rebuilt = artifact("core_rebuilt");
    let (status, applied) = put(&weft, "core", "", &rebuilt);
    assert_eq!(status, 200, "{applied}");
    assert_eq!(running(&weft, "core").unwrap()["reload_error"], Value::Null);
    run.assert_exact(&weft);
    let (status, applied) = weft.send("POST", "/api/plugins/core/rollback", Some(TOKEN), b"");
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["digest"], digest(&core), "{applied}");
    assert_eq!(applied["replaced"], digest(&rebuilt), "{applied}");
    run.assert_exact(&weft);
    let versions = weft.get("/api/plugins/core/versions");
    let origins: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["config", "api", "rollback"], "{versions}");

    // A new instance through the API, then unloaded.
    let (status, applied) = put(
        &weft,
        "counts_copy",
        "?role=metric",
        &artifact("event_counts"),
    );
    assert_eq!(status, 201, "{applied}");
    assert_eq!(applied["role"], "metric");
    assert_eq!(
        weft.get("/api/plugins/counts_copy/query")["counts"],
        json!({})
    );
    let (status, _) = weft.send("DELETE", "/api/plugins/counts_copy", Some(TOKEN), b"");
    assert_eq!(status, 200);
    assert!(running(&weft, "counts_copy").is_none());
    assert_eq!(weft.get_err("/api/plugins/counts_copy/query").0, 404);
    let (status, body) = put(&weft, &"x".repeat(65), "", &core);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a valid plugin name"),
        "{body}"
    );
    let (status, body) = put(&weft, "core", "?role=stage", &core);
    assert_eq!(status, 422, "{body}");
    drop(weft);

    // Without a token the admin API is refused outright.
    let weft = run.start(&[]);
    let (status, body) = put(&weft, "core", "", b"");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
}

#[test]
fn the_plugin_directory_loads_swaps_and_unloads() {
    let run = FileRun::new(53, "");
    let plugin_dir = run.dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("the plugin directory");
    let dir_arg = plugin_dir.display().to_string();
    let weft = run.start(&["--plugins", &dir_arg]);
    let counts = artifact("event_counts");

    // A new component with its manifest: a new instance, given the state it
    // had under that name (none) and the config.
    std::fs::write(
        plugin_dir.join("copy.toml"),
        "role = \"metric\"\n[limits]\ncpu_ms = 100\n",
    )
    .expect("manifest");
    std::fs::write(plugin_dir.join("copy.wasm"), &counts).expect("component");
    wait_for_digest(&weft, "copy", &digest(&counts));
    // The version record is written right after the swap, off the pipeline
    // thread: it may trail the instance's appearance by a moment.
    let versions = recorded_versions(&weft, "copy", |v| v["versions"][0].is_object());
    assert_eq!(
        versions["versions"][0]["limits"]["cpu_ms"], 100,
        "{versions}"
    );
    assert_eq!(versions["versions"][0]["origin"], "directory", "{versions}");

    // A manifest that does not fit: reported, the running version stays.
    std::fs::write(plugin_dir.join("copy.toml"), "role = \"stage\"\n").expect("manifest");
    wait_for("the failed reload to show", Duration::from_secs(30), || {
        let view = running(&weft, "copy").ok_or("copy is gone")?;
        let error = view["reload_error"].as_str().unwrap_or_default().to_owned();
        Ok(error.contains("the manifest says stage").then_some(()))
    });
    assert_eq!(running(&weft, "copy").unwrap()["digest"], digest(&counts));

    // Removing the component unloads the instance; the others are untouched.
    std::fs::remove_file(plugin_dir.join("copy.wasm")).expect("remove");
    wait_for("copy to be unloaded", Duration::from_secs(30), || {
        Ok(running(&weft, "copy").is_none().then_some(()))
    });
    run.assert_exact(&weft);
    let versions = recorded_versions(&weft, "copy", |v| v["versions"][0]["replaced_at"].is_u64());
    assert_eq!(versions["current"], Value::Null, "{versions}");
}

#[test]
fn a_restart_brings_back_what_ran() {
    let run = FileRun::new(43, "");
    let weft = run.start(&["--admin-token", TOKEN]);
    let rebuilt = artifact("core_rebuilt");
    assert_eq!(put(&weft, "core", "", &rebuilt).0, 200);
    assert_eq!(put(&weft, "copy", "", &artifact("event_counts")).0, 201);
    assert_eq!(
        weft.send("DELETE", "/api/plugins/event_counts", Some(TOKEN), b"")
            .0,
        200
    );
    drop(weft);

    // The uploaded versions come back; the unloaded instance does not.
    let weft = run.start(&[]);
    assert_eq!(running(&weft, "core").unwrap()["digest"], digest(&rebuilt));
    assert!(running(&weft, "copy").is_some());
    assert!(running(&weft, "event_counts").is_none());
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(&run.events)
    );
}

#[test]
fn dead_letters_replay_into_a_fixed_version_and_reload_ends_quarantine() {
    let faulty = artifact("faulty");
    let faulty_path = Path::new(weft::bundled::ARTIFACTS_DIR).join("faulty.wasm");
    // Fails on every batch with a page_view: quarantined after three.
    let run = FileRun::new(
        47,
        &format!(
            "[[plugins]]\nname = \"flaky\"\nmodule = {:?}\nconfig = {{ fault = \"error\", on = \"page_view\" }}\n",
            faulty_path.display().to_string()
        ),
    );
    let weft = run.start(&["--admin-token", TOKEN]);
    run.assert_exact(&weft);
    let view = running(&weft, "flaky").expect("flaky");
    assert_eq!(view["status"], "quarantined", "{view}");
    let letters = view["dead_letters"].as_u64().unwrap();
    assert!(letters > 3, "{view}");

    // Replaying into the quarantined version is refused.
    let (status, body) = weft.send(
        "POST",
        "/api/plugins/flaky/replay-dead-letters",
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 409, "{body}");

    // The fix: the same module, told to fail on nothing. Reloading ends the
    // quarantine; the replay counts every dead-lettered event once.
    let (status, applied) = put(
        &weft,
        "flaky",
        "?config=%7B%22fault%22%3A%22error%22%2C%22on%22%3A%22nothing%22%7D",
        &faulty,
    );
    assert_eq!(status, 200, "{applied}");
    let view = running(&weft, "flaky").unwrap();
    assert_eq!(
        (&view["status"], &view["quarantined"]),
        (&json!("running"), &Value::Null)
    );
    let (status, applied) = weft.send(
        "POST",
        "/api/plugins/flaky/replay-dead-letters",
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["replayed"], json!(letters), "{applied}");
    assert_eq!(applied["failed_again"], json!(0), "{applied}");
    assert_eq!(
        weft.get("/api/plugins/flaky/query"),
        reference::event_counts(&run.events),
        "nothing lost, nothing twice"
    );
    assert_eq!(running(&weft, "flaky").unwrap()["dead_letters"], json!(0));
    let page = weft.get("/api/plugins/flaky/dead-letters");
    assert_eq!(page["dead_letters"], json!([]), "{page}");
    drop(weft);

    // Durable: after a restart the counts hold and no letter comes back.
    let weft = run.start(&[]);
    assert_eq!(
        weft.get("/api/plugins/flaky/query"),
        reference::event_counts(&run.events)
    );
    assert_eq!(running(&weft, "flaky").unwrap()["dead_letters"], json!(0));
}
