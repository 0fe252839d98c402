//! What used to lose events, stop the host or strand a user, each tried
//! through the real `weft` binary, real HTTP and real files the way a new or
//! a hostile user would: an event dated in the future, a data directory
//! reused with another input, a quarantined stage, limits changed in
//! weft.toml, a query that traps, a plugin that fails every other batch, a
//! huge rejected message, a looping plugin at shutdown, idle connections,
//! foreign `Host` headers, bad plugin names, corrupt files, a full disk and
//! a crash-restart against Kafka with its default settings.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weft_tests::{
    broker::{brokers, create_topic, produce},
    clickstream::generate,
    process::{Weft, run_to_exit},
    reference, wait_for,
};

const TOKEN: &str = "robust-admin-token";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A component built by the plugins workspace.
fn artifact(name: &str) -> PathBuf {
    let path = Path::new(weft::bundled::ARTIFACTS_DIR).join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a file");
    path.display().to_string()
}

/// Writes JSON lines; returns the `--source` for them.
fn lines(dir: &Path, name: &str, events: &[Value]) -> String {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    format!("file:{}", write(dir, name, &text))
}

/// Waits until a file source has ended and everything is processed.
fn wait_ended(weft: &Weft, received: usize) -> Value {
    wait_for("the file to be processed", Duration::from_secs(120), || {
        let status = weft.try_get("/api/status")?;
        let done = status["source_running"] == json!(false)
            && status["buffered"] == json!(0)
            && status["events"]["received"] == json!(received);
        if done {
            Ok(Some(status))
        } else {
            Err(format!("status {status}"))
        }
    })
}

/// Events per name, as `event_counts` answers.
fn counts(names: impl IntoIterator<Item = String>) -> Value {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    json!({ "counts": counts })
}

/// One event per millisecond from `t0`, event `i` named `name(i)`. With
/// `lateness_ms = 0` and `batch_size = BATCH`, batch `j ≥ 1` holds events
/// `BATCH·j − 1 ..= BATCH·j + BATCH − 2` (the watermark trails the newest
/// event by nothing, so each poll of `BATCH` lines releases `BATCH` events).
fn sequential(t0: i64, n: usize, name: impl Fn(usize) -> &'static str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"event_id": format!("e{i}"), "ts": t0 + i as i64, "user_id": format!("u{}", i % 7),
                   "event": name(i), "path": "/"})
        })
        .collect()
}

const BATCH: usize = 16;

/// `batches` batches of [`sequential`] events, a `boom` in each batch `j`
/// for which `boom_in(j)`, written to `dir/events.jsonl`, and a weft.toml
/// that batches them so (`lateness_ms = 0`, `batch_size = BATCH`, one
/// partition) followed
/// by `plugins`; returns (events, `--source`, `--config`).
fn boom_batches(
    dir: &Path,
    batches: usize,
    boom_in: impl Fn(usize) -> bool,
    plugins: &str,
) -> (Vec<Value>, String, String) {
    let events = sequential(1_795_255_200_000, batches * BATCH, |i| {
        if boom_in(i / BATCH) && i % BATCH == BATCH / 2 {
            "boom"
        } else {
            "page_view"
        }
    });
    let source = lines(dir, "events.jsonl", &events);
    let config = write(
        dir,
        "weft.toml",
        // One partition, so the file's batches are the plugins' batches.
        &format!("[pipeline]\nlateness_ms = 0\nbatch_size = {BATCH}\npartitions = 1\n\n{plugins}"),
    );
    (events, source, config)
}

/// The value of the Prometheus sample `series` (name with labels), if any.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn an_event_dated_in_the_future_is_rejected_and_leaves_the_watermark_alone() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let t0 = now_ms() - 3_600_000;
    let event = |i: usize, ts: Value| json!({"event_id": format!("f{i}"), "ts": ts, "user_id": format!("u{}", i % 5), "event": "page_view", "path": "/"});
    let mut all = Vec::new();
    for i in 0..50 {
        all.push(event(i, json!(t0 + i as i64 * 100)));
    }
    all.push(event(50, json!(t0 + 365 * 86_400_000)));
    all.push(event(51, json!("9999-12-31T23:59:59Z")));
    for i in 0..100 {
        all.push(event(52 + i, json!(t0 + 50_000 + i as i64 * 100)));
    }
    let source = lines(dir.path(), "events.jsonl", &all);
    let data = dir.path().join("data");
    let weft = Weft::start(&data, &["--source", &source]);
    let status = wait_ended(&weft, all.len());
    assert_eq!(
        status["events"],
        json!({"received": 152, "accepted": 150, "rejected": 2, "duplicates": 0,
               "rejected_by_reason": {"future": 2}}),
        "{status}"
    );
    let watermark = status["watermark"].as_i64().expect("a watermark");
    assert!(watermark <= now_ms() + 300_000, "watermark {watermark}");
    let rejected = weft.get("/api/rejected");
    let reasons: Vec<&Value> = rejected["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| &r["reason"])
        .collect();
    assert_eq!(reasons, [&json!("future"), &json!("future")], "{rejected}");
    assert!(
        rejected["rejected"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_future_ms")),
        "{rejected}"
    );
    let want = counts((0..150).map(|_| "page_view".to_owned()));
    assert_eq!(weft.get("/api/plugins/event_counts/query"), want);
    drop(weft);

    // The checkpoint holds a sane watermark: a restart takes new events.
    let later: Vec<Value> = (0..10)
        .map(|i| event(200 + i, json!(t0 + 60_000 + i as i64 * 100)))
        .collect();
    all.extend(later);
    let source = lines(dir.path(), "events.jsonl", &all);
    let weft = Weft::start(&data, &["--source", &source]);
    let status = wait_ended(&weft, all.len());
    assert_eq!(status["events"]["accepted"], 160, "{status}");
}

#[test]
fn a_data_dir_reused_with_another_input_refuses_to_start_unless_told() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let t0 = 1_795_255_200_000;
    let event = |i: usize| json!({"event_id": format!("r{i}"), "ts": t0 + i as i64 * 10, "user_id": "u", "event": "page_view"});
    let a: Vec<Value> = (0..63).map(event).collect();
    let b: Vec<Value> = (100..200).map(event).collect();
    let source_a = lines(dir.path(), "a.jsonl", &a);
    let source_b = lines(dir.path(), "b.jsonl", &b);
    let data = dir.path().join("data");

    let weft = Weft::start(&data, &["--source", &source_a]);
    wait_ended(&weft, 63);
    drop(weft);

    // Another file: not a silent skip of its first 63 lines.
    let (status, log) = run_to_exit(&data, &["--source", &source_b], Duration::from_secs(60));
    assert!(!status.success(), "weft started on another input: {log}");
    assert!(
        log.contains("--reset-source") && log.contains("b.jsonl"),
        "{log}"
    );

    // Told to, it reads the new input from its beginning, keeping the state.
    let weft = Weft::start(&data, &["--source", &source_b, "--reset-source"]);
    let status = wait_ended(&weft, 163);
    assert_eq!(status["events"]["accepted"], 163, "{status}");
    let want = counts((0..163).map(|_| "page_view".to_owned()));
    assert_eq!(weft.get("/api/plugins/event_counts/query"), want);
    drop(weft);

    // The same input again, appended to, resumes after what was read.
    let mut grown = b.clone();
    grown.push(event(300));
    let source_b = lines(dir.path(), "b.jsonl", &grown);
    let weft = Weft::start(&data, &["--source", &source_b]);
    let status = wait_ended(&weft, 164);
    assert_eq!(status["events"]["accepted"], 164, "{status}");
}

#[test]
fn a_quarantined_stage_is_loud_and_a_reload_with_a_fixed_config_gets_it_out() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Batches 2, 3 and 4 each hold a `boom`: three failures in a row.
    let plugins = format!(
        "[[plugins]]\nname = \"garbage\"\nmodule = {:?}\n\n[[plugins]]\nname = \"event_counts\"\n",
        artifact("garbage_stage").display().to_string()
    );
    let (events, source, config) =
        boom_batches(dir.path(), 30, |j| [2, 3, 4].contains(&j), &plugins);
    let weft = Weft::start(
        &dir.path().join("data"),
        &[
            "--source",
            &source,
            "--config",
            &config,
            "--admin-token",
            TOKEN,
        ],
    );
    let status = wait_ended(&weft, events.len());
    let health = &status["health"];
    assert_eq!(
        health["degraded"],
        true,
        "{status}\n{}",
        weft.get("/api/plugins")
    );
    let problem = &health["problems"][0];
    assert_eq!(problem["plugin"], "garbage", "{health}");
    assert!(
        problem["effect"]
            .as_str()
            .is_some_and(|e| e.contains("no metric receives events")),
        "{problem}"
    );
    assert!(
        problem["fix"]
            .as_str()
            .is_some_and(|f| f.contains("POST /api/plugins/garbage/reload")),
        "{problem}"
    );
    let metrics = weft.metrics();
    assert_eq!(sample(&metrics, "weft_degraded"), Some(1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "weft_plugin_quarantined{plugin=\"garbage\"}"),
        Some(1.0)
    );

    // The way out: the same component, its config fixed.
    let (code, answer) = weft.send(
        "POST",
        "/api/plugins/garbage/reload?config=%7B%22on%22%3A%22nothing%22%7D",
        Some(TOKEN),
        b"",
    );
    assert_eq!(code, 200, "{answer}");
    let status = weft.get("/api/status");
    assert_eq!(status["health"]["degraded"], false, "{status}");
    let (code, replay) = weft.send(
        "POST",
        "/api/plugins/garbage/replay-dead-letters",
        Some(TOKEN),
        b"",
    );
    assert_eq!(code, 200, "{replay}");
    assert_eq!(replay["failed_again"], 0, "{replay}");
    let want = counts(
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned()),
    );
    assert_eq!(weft.get("/api/plugins/event_counts/query"), want);
    assert_eq!(sample(&weft.metrics(), "weft_degraded"), Some(0.0));
}

#[test]
fn limits_written_in_weft_toml_win_over_an_earlier_upload() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let stream = generate(5, 40, 5_000);
    let source = stream.write_file(dir.path());
    let data = dir.path().join("data");
    let core = weft::bundled::get("core").expect("core is bundled");
    let current = |weft: &Weft| {
        let versions = weft.get("/api/plugins/core/versions");
        let last = versions["versions"]
            .as_array()
            .and_then(|v| v.last())
            .cloned()
            .expect("a version");
        (last["limits"]["cpu_ms"].clone(), last["origin"].clone())
    };
    let start = |config: &str| {
        let config = write(dir.path(), "weft.toml", config);
        let weft = Weft::start(
            &data,
            &[
                "--source",
                &source,
                "--config",
                &config,
                "--admin-token",
                TOKEN,
            ],
        );
        wait_ended(&weft, stream.deliveries.len());
        weft
    };
    let plugins = |cpu_ms: u64| {
        format!(
            "[[plugins]]\nname = \"sessionizer\"\n[[plugins]]\nname = \"core\"\nlimits = {{ cpu_ms = {cpu_ms} }}\n"
        )
    };

    let weft = start(&plugins(200));
    let (code, answer) = weft.send("PUT", "/api/plugins/core?cpu_ms=300", Some(TOKEN), core);
    assert_eq!(code, 200, "{answer}");
    drop(weft);

    // The configuration changed since: it wins, and says so.
    let weft = start(&plugins(2_000));
    assert_eq!(current(&weft), (json!(2_000), json!("config")));
    assert!(
        weft.log().contains("The configuration changed"),
        "{}",
        weft.log()
    );
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(&stream.events)
    );
    let (code, answer) = weft.send("PUT", "/api/plugins/core?cpu_ms=400", Some(TOKEN), core);
    assert_eq!(code, 200, "{answer}");
    drop(weft);

    // Unchanged configuration: the upload runs on, and the start says why.
    let weft = start(&plugins(2_000));
    assert_eq!(current(&weft), (json!(400), json!("api")));
    assert!(
        weft.log().contains("Running the version loaded last"),
        "{}",
        weft.log()
    );
}

#[test]
fn a_failing_query_leaves_the_plugin_answering_and_huge_ranges_are_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let stream = generate(9, 60, 5_000);
    let source = stream.write_file(dir.path());
    let config = write(
        dir.path(),
        "weft.toml",
        &format!(
            "[[plugins]]\nname = \"sessionizer\"\n[[plugins]]\nname = \"core\"\n\
             [[plugins]]\nname = \"hog\"\nmodule = {:?}\nconfig = {{ fault = \"hog\" }}\nlimits = {{ memory_mib = 32 }}\n",
            artifact("faulty").display().to_string()
        ),
    );
    let weft = Weft::start(
        &dir.path().join("data"),
        &["--source", &source, "--config", &config],
    );
    wait_ended(&weft, stream.deliveries.len());
    let want = reference::event_counts(&stream.events);

    for round in 0..2 {
        let (code, answer) = weft.get_err("/api/plugins/hog/query?misbehave=1");
        assert_eq!(code, 422, "round {round}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("memory limit")),
            "{answer}"
        );
        // The next query is answered, by an instance with all the state.
        assert_eq!(weft.get("/api/plugins/hog/query"), want, "round {round}");
    }
    let hog = weft
        .get("/api/plugins")
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "hog").cloned())
        .expect("hog");
    assert_eq!(hog["query_errors"], 2, "{hog}");
    assert_eq!(hog["status"], "running", "{hog}");
    assert_eq!(
        sample(
            &weft.metrics(),
            "weft_plugin_query_errors_total{plugin=\"hog\"}"
        ),
        Some(2.0)
    );

    // A series of 4 billion points is refused before the work is done.
    let (code, answer) =
        weft.get_err("/api/plugins/core/query?bucket=1m&from=0&to=253402300799000");
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("points")),
        "{answer}"
    );
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(&stream.events)
    );
}

#[test]
fn a_plugin_failing_every_other_batch_is_quarantined() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // A `boom` in every odd batch: never three failures in a row.
    let plugins = format!(
        "[[plugins]]\nname = \"flaky\"\nmodule = {:?}\nconfig = {{ fault = \"error\" }}\n",
        artifact("faulty").display().to_string()
    );
    let (events, source, config) = boom_batches(dir.path(), 50, |j| j % 2 == 1, &plugins);
    let weft = Weft::start(
        &dir.path().join("data"),
        &["--source", &source, "--config", &config],
    );
    let status = wait_ended(&weft, events.len());
    let flaky = weft
        .get("/api/plugins")
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "flaky").cloned())
        .expect("flaky");
    assert_eq!(flaky["status"], "quarantined", "{flaky}");
    assert!(
        flaky["quarantined"]
            .as_str()
            .is_some_and(|q| q.contains("10 of its last 20 calls failed")),
        "{flaky}"
    );
    assert_eq!(status["health"]["degraded"], true, "{status}");
}

#[test]
fn a_huge_rejected_message_is_kept_as_a_prefix_with_its_length_and_digest() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let huge = format!("{{\"not json {}", "x".repeat(1 << 20));
    let path = write(dir.path(), "events.jsonl", &format!("{huge}\n"));
    let config = write(
        dir.path(),
        "weft.toml",
        "[pipeline]\nrejected_raw_limit = 1024\n",
    );
    let weft = Weft::start(
        &dir.path().join("data"),
        &["--source", &format!("file:{path}"), "--config", &config],
    );
    wait_ended(&weft, 1);
    let rejected = weft.get("/api/rejected");
    let record = &rejected["rejected"][0];
    assert_eq!(record["reason"], "not_json");
    assert_eq!(record["raw"], huge[..1024], "the prefix");
    assert_eq!(record["raw_len"], huge.len(), "{record:?}");
    assert_eq!(record["truncated"], true);
    assert_eq!(record["raw_sha256"], weft_runtime::digest(huge.as_bytes()));
}

#[test]
fn a_looping_plugin_does_not_hold_up_a_shutdown() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let events = sequential(1_795_255_200_000, 40, |i| {
        if i == 20 { "boom" } else { "page_view" }
    });
    let source = lines(dir.path(), "events.jsonl", &events);
    let config = write(
        dir.path(),
        "weft.toml",
        &format!(
            "[pipeline]\nmax_cpu_ms = 60000\n\n\
             [[plugins]]\nname = \"looping\"\nmodule = {:?}\nconfig = {{ fault = \"loop\" }}\nlimits = {{ cpu_ms = 60000 }}\n",
            artifact("faulty").display().to_string()
        ),
    );
    let weft = Weft::start(
        &dir.path().join("data"),
        &["--source", &source, "--config", &config],
    );
    wait_for("the plugin to loop", Duration::from_secs(60), || {
        Ok(weft.log().contains("faulty: looping").then_some(()))
    });
    let asked = Instant::now();
    let status = weft.terminate(Duration::from_secs(30));
    let took = asked.elapsed();
    // Five seconds to finish the step, then the call is interrupted.
    assert!(took < Duration::from_secs(15), "stopped after {took:?}");
    assert!(!status.success(), "{status}");
}

#[test]
fn plugin_limits_are_capped_by_the_host() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write(
        dir.path(),
        "weft.toml",
        "[[plugins]]\nname = \"event_counts\"\nlimits = { cpu_ms = 4294967295 }\n",
    );
    let (status, log) = run_to_exit(
        &dir.path().join("a"),
        &["--source", "file:/dev/null", "--config", &config],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("cpu_ms = 4294967295") && log.contains("max_cpu_ms"),
        "{log}"
    );

    let weft = Weft::start(
        &dir.path().join("b"),
        &["--source", "file:/dev/null", "--admin-token", TOKEN],
    );
    let counts = std::fs::read(artifact("event_counts")).expect("the component");
    for query in ["cpu_ms=4294967295", "memory_mib=4000000", "cpu_ms=0"] {
        let (code, answer) = weft.send(
            "PUT",
            &format!("/api/plugins/counts_copy?{query}"),
            Some(TOKEN),
            &counts,
        );
        assert_eq!(code, 400, "{query}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains("max_")),
            "{answer}"
        );
    }
}

/// Sends `request` as is and returns the whole answer (the server closes).
fn raw(base: &str, request: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn the_http_server_closes_idle_connections_checks_hosts_and_names() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write(
        dir.path(),
        "weft.toml",
        "[http]\nheader_timeout_ms = 1000\nmax_connections = 4\n",
    );
    let weft = Weft::start(
        &dir.path().join("data"),
        &[
            "--source",
            "file:/dev/null",
            "--config",
            &config,
            "--admin-token",
            TOKEN,
        ],
    );
    let addr = weft.base.trim_start_matches("http://").to_owned();

    // A connection that never sends a request is closed.
    let mut idle = TcpStream::connect(&addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).expect("an orderly close"), 0);

    // At most 4 at once: with 4 idle ones open, a request waits until the
    // header timeout has closed one of them.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let asked = Instant::now();
    let status = weft.get("/api/status");
    assert!(status["events"].is_object());
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "answered after {:?} while 4 connections were held",
        asked.elapsed()
    );
    drop(held);

    // Host names: loopback ones only, on a loopback listener.
    let get = |host: &str| {
        raw(
            &weft.base,
            &format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    let port = addr.rsplit(':').next().unwrap_or_default();
    for ok in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert!(get(&ok).starts_with("HTTP/1.1 200"), "{ok}: {}", get(&ok));
    }
    let refused = get("rebound.example.com");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("allowed_hosts"), "{refused}");

    // The page may not be framed and runs only its own code.
    let page = raw(
        &weft.base,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .to_ascii_lowercase();
    assert!(
        page.contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    assert!(page.contains("x-frame-options: deny"), "{page}");

    // The scheme is case-insensitive; names follow one rule; refused names
    // become no metric labels.
    let counts = std::fs::read(artifact("event_counts")).expect("the component");
    for name in ["Bad-Name", "UPPER", "1abc"] {
        let request = format!(
            "PUT /api/plugins/{name} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            counts.len()
        );
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        stream.write_all(&counts).expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
        assert!(answer.contains("not a valid plugin name"), "{answer}");
    }
    let metrics = weft.metrics();
    assert!(
        !metrics.contains("Bad-Name") && !metrics.contains("UPPER"),
        "{metrics}"
    );
}

#[test]
fn corrupt_compiled_modules_are_compiled_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let stream = generate(13, 40, 5_000);
    let source = stream.write_file(dir.path());
    let data = dir.path().join("data");
    let weft = Weft::start(&data, &["--source", &source]);
    wait_ended(&weft, stream.deliveries.len());
    drop(weft);

    let mut damaged = 0;
    for entry in std::fs::read_dir(data.join("modules")).expect("the module cache") {
        let path = entry.expect("an entry").path();
        let mut bytes = std::fs::read(&path).expect("a cached module");
        let len = bytes.len();
        for k in 0..200 {
            bytes[(k * 7919 + 4096) % len] ^= 0x5a;
        }
        std::fs::write(&path, bytes).expect("damage it");
        damaged += 1;
    }
    assert!(damaged >= 4, "{damaged} cached modules");
    let weft = Weft::start(&data, &["--source", &source]);
    wait_ended(&weft, stream.deliveries.len());
    assert!(
        weft.log().contains("Cached module is corrupt"),
        "{}",
        weft.log()
    );
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(&stream.events)
    );
}

#[test]
fn a_corrupt_state_store_is_a_clear_error_or_an_exact_recovery() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let events: Vec<Value> = (0..60_000)
        .map(|i| {
            json!({"event_id": format!("c{i}"), "ts": 1_795_255_200_000i64 + i * 10,
                   "user_id": format!("u{}", (i * 7919) % 20_000), "event": "page_view", "path": format!("/p/{}", i % 300)})
        })
        .collect();
    let source = lines(dir.path(), "events.jsonl", &events);
    let data = dir.path().join("data");
    let weft = Weft::start(&data, &["--source", &source]);
    wait_ended(&weft, events.len());
    let want = weft.get("/api/plugins/core/query");
    drop(weft);
    let db = std::fs::read(data.join("state/db")).expect("the store");

    // Damage at random places: sled either recovers to its last complete
    // write (a checkpoint: the answers are exact after re-reading from it),
    // or the start fails naming the file; never a panic, never a silent
    // empty start.
    let mut outcomes = Vec::new();
    for seed in 0..6u64 {
        let copy = dir.path().join(format!("copy-{seed}"));
        copy_dir(&data, &copy);
        let mut bytes = db.clone();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for _ in 0..50 + seed * 200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % bytes.len() as u64) as usize;
            bytes[at] ^= (x >> 32) as u8 | 1;
        }
        std::fs::write(copy.join("state/db"), bytes).expect("damage the store");
        match Weft::start_or_exit(&copy, &["--source", &source]) {
            Ok(weft) => {
                wait_ended(&weft, events.len());
                assert_eq!(weft.get("/api/plugins/core/query"), want, "seed {seed}");
                outcomes.push("recovered");
            }
            Err((status, log)) => {
                assert_eq!(status.code(), Some(1), "seed {seed}: {status}: {log}");
                assert!(
                    log.contains("state/db") || log.contains("state store at"),
                    "seed {seed}: {log}"
                );
                assert!(!log.contains("panicked"), "seed {seed}: {log}");
                outcomes.push("refused");
            }
        }
    }
    eprintln!("corrupt stores: {outcomes:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn a_host_killed_right_after_its_starts_resumes_quickly_with_default_kafka_settings() {
    let stream = generate(21, 200, 5_000);
    let topic = create_topic(4);
    produce(&topic, &stream.deliveries);
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let brokers = brokers();
    let group = format!("{topic}-defaults");
    // No [kafka_options]: librdkafka settings as shipped.
    let config = write(dir.path(), "weft.toml", "[pipeline]\nlateness_ms = 5000\n");
    let args = [
        "--source",
        "kafka",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--group",
        &group,
        "--config",
        &config,
    ];
    for _ in 0..3 {
        let weft = Weft::start(&data, &args);
        // The scenario: killed about a second after each start.
        std::thread::park_timeout(Duration::from_secs(1));
        weft.kill();
    }
    let weft = Weft::start(&data, &args);
    let started = Instant::now();
    wait_for(
        "every partition to be assigned",
        Duration::from_secs(300),
        || {
            let status = weft.try_get("/api/status")?;
            let assigned = status["source"]["partitions"]
                .as_array()
                .map_or(0, Vec::len);
            Ok((assigned == 4).then_some(()))
        },
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "partitions assigned after {took:?}"
    );
    let accepted = stream.events.len() as u64;
    weft.wait_until_processed(stream.deliveries.len() as u64, 0, accepted);
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(&stream.events)
    );
    assert_eq!(
        weft.get("/api/plugins/event_counts/query"),
        reference::event_counts(&stream.events)
    );
}

/// Mounts a tmpfs of `mib` MiB at `at` (needs root), or says why not.
fn tmpfs(at: &Path, mib: u32) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(at)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_weft_with_the_cause_and_a_restart_with_room_is_exact() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let disk = dir.path().join("tiny");
    if let Err(why) = tmpfs(&disk, 8) {
        // A tmpfs needs root (CI runs as root); elsewhere this cannot be tried.
        eprintln!("skipped: cannot mount a small tmpfs ({why})");
        return;
    }
    let _mounted = Mounted(disk.clone());
    let stream = generate(31, 4_000, 5_000);
    let source = stream.write_file(dir.path());
    let data = disk.join("data");
    let (status, log) = run_to_exit(&data, &["--source", &source], Duration::from_secs(120));
    assert_eq!(status.code(), Some(1), "{status}: {log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(
        log.contains(&data.join("state").display().to_string()),
        "{log}"
    );

    // Room again: it resumes from its last checkpoint, exactly.
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,size=512m"])
        .arg(&disk)
        .status()
        .expect("mount");
    assert!(remount.success());
    let weft = Weft::start(&data, &["--source", &source]);
    wait_ended(&weft, stream.deliveries.len());
    assert_eq!(
        weft.get("/api/plugins/core/query"),
        reference::core(&stream.events)
    );
    assert_eq!(
        weft.get("/api/plugins/event_counts/query"),
        reference::event_counts(&stream.events)
    );
}

/// CPU time (user + system) process `pid` has used.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // Linux reports these in USER_HZ, 100 per second on every platform it runs on.
    Duration::from_millis(ticks * 10)
}

#[test]
fn the_plugin_directory_reloads_only_what_changed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("the plugin directory");
    std::fs::copy(artifact("faulty"), plugins.join("flaky.wasm")).expect("copy");
    std::fs::write(plugins.join("flaky.toml"), "[config]\nfault = \"error\"\n").expect("manifest");
    // Three failing batches in a row quarantine `flaky`.
    let (events, source, config) = boom_batches(
        dir.path(),
        20,
        |j| [2, 3, 4].contains(&j),
        "[[plugins]]\nname = \"event_counts\"\n",
    );
    let plugin_dir = plugins.display().to_string();
    let weft = Weft::start(
        &dir.path().join("data"),
        &[
            "--source",
            &source,
            "--config",
            &config,
            "--plugins",
            &plugin_dir,
        ],
    );
    wait_ended(&weft, events.len());
    let flaky = || {
        weft.get("/api/plugins")
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "flaky").cloned())
            .expect("flaky runs")
    };
    assert_eq!(
        flaky()["status"],
        "quarantined",
        "{}\n{}",
        weft.get("/api/plugins"),
        weft.get("/api/status")
    );
    let versions = || {
        weft.get("/api/plugins/flaky/versions")["versions"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let junk_failures = || {
        sample(
            &weft.metrics(),
            "weft_plugin_reloads_total{outcome=\"failed\",plugin=\"junk\"}",
        )
    };
    let (versions_before, junk_before) = (versions(), junk_failures());
    assert_eq!(versions_before, 1);

    // Nothing changes for a while (this observes an absence, so it waits):
    // no reload, no retry of the junk, next to no CPU.
    let cpu_before = cpu_of(weft.pid());
    std::thread::park_timeout(Duration::from_secs(3));
    let cpu = cpu_of(weft.pid()) - cpu_before;
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU time while idle"
    );
    assert_eq!(versions(), versions_before);
    assert_eq!(junk_failures(), junk_before);
    assert_eq!(flaky()["status"], "quarantined");

    // The same bytes written again: still quarantined.
    std::fs::copy(artifact("faulty"), plugins.join("flaky.wasm")).expect("copy");
    std::thread::park_timeout(Duration::from_secs(1));
    assert_eq!(flaky()["status"], "quarantined");
    assert_eq!(versions(), versions_before);

    // A real change (its config) loads it again.
    std::fs::write(
        plugins.join("flaky.toml"),
        "[config]\nfault = \"error\"\non = \"nothing\"\n",
    )
    .expect("manifest");
    // (Its version record is written just after the swap, off the pipeline
    // thread.)
    wait_for(
        "the changed plugin to load",
        Duration::from_secs(30),
        || {
            let loaded = flaky()["status"] == "running" && versions() == versions_before + 1;
            Ok(loaded.then_some(()))
        },
    );
}

#[test]
fn plugin_test_compiles_a_component_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let events = write(
        dir.path(),
        "events.jsonl",
        "{\"user_id\": \"a\", \"event\": \"page_view\", \"ts\": 1795255200000}\n",
    );
    let component = artifact("event_counts");
    let cache = dir.path().join("cache");
    let run = || {
        let out = std::process::Command::new(weft_tests::process::binary())
            .args(["plugin", "test"])
            .arg(&component)
            .args(["--events", &events])
            .env("XDG_CACHE_HOME", &cache)
            .env("WEFT_LOG", "info")
            .output()
            .expect("run weft plugin test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = run();
    assert!(first.contains("Compiling the component"), "{first}");
    let second = run();
    assert!(
        !second.contains("Compiling the component"),
        "compiled again: {second}"
    );
    let cached = std::fs::read_dir(cache.join("weft/modules")).map_or(0, |d| d.count());
    assert!(
        cached >= 2,
        "{cached} cached modules (the plugin and the sessionizer)"
    );
}

#[test]
fn a_component_being_compiled_shows_as_loading() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let weft = Weft::start(
        &dir.path().join("data"),
        &["--source", "file:/dev/null", "--admin-token", TOKEN],
    );
    // A component this data directory never compiled: the load takes a while.
    let component = &std::fs::read(artifact("core_next")).expect("the component")[..];
    let seen = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let upload = s.spawn(|| weft.send("PUT", "/api/plugins/core_copy", Some(TOKEN), component));
        while !upload.is_finished() {
            if let Some(p) = weft
                .get("/api/plugins")
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "core_copy").cloned())
            {
                seen.lock().expect("the list").push(p);
            }
        }
        let (code, answer) = upload.join().expect("the upload");
        assert_eq!(code, 201, "{answer}");
    });
    let seen = seen.into_inner().expect("the list");
    let loading = seen
        .iter()
        .find(|p| p["status"] == "loading")
        .unwrap_or_else(|| panic!("never seen loading: {seen:?}"));
    assert_eq!(
        loading["loading"]["digest"],
        weft_runtime::digest(component)
    );
    assert_eq!(loading["loading"]["bytes"], component.len());
    assert!(
        weft.log()
            .contains("Compiled the component. plugin=\"core_copy\""),
        "{}",
        weft.log()
    );
}
