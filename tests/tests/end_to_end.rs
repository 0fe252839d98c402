//! End to end, through the real `weft` binary and real HTTP: a generated
//! clickstream with disorder, duplicate deliveries and malformed messages;
//! every number of `core`, `event_counts` and `funnel` and the status
//! counters must equal the plain reference implementation.
//!
//! - From a real Kafka-protocol broker over TCP (produced keyed by user):
//!   uninterrupted, and again with `kill -9` in the middle of the stream and
//!   restarts.
//! - From a JSON-lines file, with a straggler beyond the allowed lateness
//!   (rejected as `late`), and a restart that must not read the file again.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::{Value, json};
use weft_normalize::{FieldMapping, Normalizer};
use weft_tests::{
    broker::{brokers, create_topic, kafka_args, produce},
    clickstream::{Delivery, START_MS, Stream, generate},
    process::Weft,
    reference, wait_for,
};

const LATENESS_MS: i64 = 5_000;

struct Expected {
    messages: u64,
    counters: Value,
    core: Value,
    event_counts: Value,
    funnel: Value,
}

fn expected(stream: &Stream) -> Expected {
    let rejected: u64 = stream.malformed.values().sum();
    Expected {
        messages: stream.deliveries.len() as u64,
        counters: json!({
            "received": stream.deliveries.len(),
            "accepted": stream.events.len(),
            "rejected": rejected,
            "duplicates": stream.duplicates,
            "rejected_by_reason": stream.malformed,
        }),
        core: reference::core(&stream.events),
        event_counts: reference::event_counts(&stream.events),
        funnel: reference::funnel(&stream.events),
    }
}

fn received(weft: &Weft) -> Result<u64, String> {
    let status = weft.try_get("/api/status")?;
    status["events"]["received"]
        .as_u64()
        .ok_or_else(|| format!("no received count in {status}"))
}

/// Waits until every message is read and every accepted event processed.
fn wait_until_done(weft: &Weft, want: &Expected) {
    let accepted = want.counters["accepted"].as_u64().unwrap_or_default();
    weft.wait_until_processed(want.messages, 0, accepted);
}

/// Starts weft on `data`, `kill -9`s it once it has read `at` messages, and
/// returns how many it had read.
fn kill_when_read<S: AsRef<str>>(data: &Path, args: &[S], at: u64) -> u64 {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let weft = Weft::start(data, &args);
    let seen = wait_for(
        "weft to read into the input",
        Duration::from_secs(300),
        || {
            let n = received(&weft)?;
            Ok((n >= at).then_some(n))
        },
    );
    weft.kill();
    seen
}

fn check_results(weft: &Weft, want: &Expected) {
    let status = weft.get("/api/status");
    assert_eq!(status["events"], want.counters, "status counters");
    assert_eq!(weft.get("/api/plugins/core/query"), want.core, "core");
    assert_eq!(
        weft.get("/api/plugins/event_counts/query"),
        want.event_counts,
        "event_counts"
    );
    assert_eq!(weft.get("/api/plugins/funnel/query"), want.funnel, "funnel");
}

fn write_config(dir: &Path, checkpoint_interval_ms: u64) -> String {
    let path = dir.join("weft.toml");
    let text = format!(
        "[pipeline]\nlateness_ms = {LATENESS_MS}\ncheckpoint_interval_ms = {checkpoint_interval_ms}\nbatch_size = 256\n"
    );
    std::fs::write(&path, text).expect("write weft.toml");
    path.display().to_string()
}

#[test]
fn kafka_stream_gives_exact_results_and_survives_kill_9() {
    let stream = generate(7, 400, LATENESS_MS);
    let want = expected(&stream);
    let topic = create_topic(4);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("a temp dir");

    // 1. kill -9 twice mid-stream, restarting on the same data directory.
    // A third of the stream is there at the start, the rest comes while
    // weft is killed: every kill falls before the end of the stream,
    // however fast weft reads.
    let third = stream.deliveries.len() / 3;
    produce(&topic, &stream.deliveries[..third]);
    let config = write_config(dir.path(), 50);
    let data = dir.path().join("b");
    let group_b = format!("{topic}-b");
    let args = kafka_args(&topic, &group_b, &brokers, Some(&config));
    for (fraction, produced, next) in [
        (0.2, third, 2 * third),
        (0.5, 2 * third, stream.deliveries.len()),
    ] {
        kill_when_read(&data, &args, (want.messages as f64 * fraction) as u64);
        produce(&topic, &stream.deliveries[produced..next]);
    }
    let weft = Weft::start(&data, &args);
    wait_until_done(&weft, &want);
    check_results(&weft, &want);
    drop(weft);

    // 2. Uninterrupted, in another group.
    let config = write_config(dir.path(), 1_000);
    let group_a = format!("{topic}-a");
    let weft = Weft::start(
        &dir.path().join("a"),
        &kafka_args(&topic, &group_a, &brokers, Some(&config)),
    );
    wait_until_done(&weft, &want);
    check_results(&weft, &want);
    check_api(&weft, &stream);
    let health = &weft.get("/api/status")["health"];
    assert_eq!(health["problems"], json!([]), "keyed by user: {health}");
}

/// A topic keyed by something other than the user splits users (and
/// duplicate deliveries) across partitions: weft says so in the status
/// health and in `/metrics`.
#[test]
fn a_topic_not_keyed_by_user_is_reported() {
    let mut stream = generate(19, 60, LATENESS_MS);
    for (i, d) in stream.deliveries.iter_mut().enumerate() {
        d.key = format!("k{i}");
    }
    let want = expected(&stream);
    let topic = create_topic(2);
    produce(&topic, &stream.deliveries);
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path(), 1_000);
    let group = format!("{topic}-unkeyed");
    let weft = Weft::start(
        &dir.path().join("u"),
        &kafka_args(&topic, &group, &brokers(), Some(&config)),
    );
    // Not exact, which is the point: duplicates with different keys land in
    // different partitions, each deduplicating alone.
    wait_for("weft to read the stream", Duration::from_secs(300), || {
        Ok((received(&weft)? == want.messages).then_some(()))
    });
    // Every message that normalizes has a user, and a key that is not it.
    let unkeyed = want.counters["accepted"].as_u64().unwrap() + stream.duplicates;
    let said = format!("not keyed by user: {unkeyed} messages");
    let health = wait_for(
        "the status to count them all",
        Duration::from_secs(30),
        || {
            let health = weft.try_get("/api/status")?["health"].clone();
            let what = health["problems"][0]["what"].as_str().unwrap_or_default();
            Ok(what.contains(&said).then_some(health))
        },
    );
    assert_eq!(health["degraded"], json!(true), "{health}");
    assert!(
        weft.metrics()
            .contains(&format!("weft_unkeyed_messages_total {unkeyed}")),
        "{}",
        weft.metrics()
    );
}

#[test]
fn file_source_gives_exact_results_rejects_late_events_and_resumes() {
    let mut stream = generate(11, 150, LATENESS_MS);
    // A straggler from long before the watermark, arriving last.
    let straggler = json!({"event_id": "late-1", "ts": START_MS, "user_id": "straggler", "event": "page_view", "path": "/"});
    stream.deliveries.push(Delivery {
        key: "straggler".into(),
        payload: straggler.to_string().into_bytes(),
    });
    *stream.malformed.entry("late".into()).or_default() += 1;
    let want = expected(&stream);

    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let config = write_config(dir.path(), 1_000);
    let args = ["--source", source.as_str(), "--config", config.as_str()];
    let data = dir.path().join("f");

    let weft = Weft::start(&data, &args);
    wait_until_done(&weft, &want);
    check_results(&weft, &want);
    let status = weft.get("/api/status");
    assert_eq!(
        status["source_running"],
        json!(false),
        "the file has ended: {status}"
    );
    let rejected = weft.get("/api/rejected?limit=1000");
    let late: Vec<&Value> = rejected["rejected"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["reason"] == "late")
        .collect();
    assert_eq!(late.len(), 1, "{rejected}");
    assert!(
        late[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("watermark"),
        "{}",
        late[0]
    );
    assert_eq!(late[0]["offset"], json!(stream.deliveries.len() - 1));
    drop(weft);
    let compiled = std::fs::read_dir(data.join("modules"))
        .expect("the compiled-module cache")
        .count();
    assert_eq!(
        compiled, 4,
        "each bundled plugin compiled once and cached for the restart"
    );

    // A restart resumes after the last line: nothing is read or counted again.
    let weft = Weft::start(&data, &args);
    wait_for(
        "the restarted weft to find the file ended",
        Duration::from_secs(60),
        || {
            let status = weft.try_get("/api/status")?;
            Ok((status["source_running"] == json!(false)).then_some(()))
        },
    );
    check_results(&weft, &want);
}

/// The API around the results: rejected messages, errors, metrics.
fn check_api(weft: &Weft, stream: &Stream) {
    let rejected = weft.get("/api/rejected?limit=1000");
    let records = rejected["rejected"].as_array().expect("a list");
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        *by_reason
            .entry(r["reason"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
        assert!(
            !r["detail"].as_str().unwrap_or_default().is_empty(),
            "a reason detail in {r}"
        );
        assert!(
            r["offset"].as_i64().is_some() && r["partition"].as_i64().is_some(),
            "a position in {r}"
        );
    }
    assert_eq!(
        by_reason, stream.malformed,
        "rejected messages kept with their reasons"
    );
    let raws: Vec<&str> = records.iter().filter_map(|r| r["raw"].as_str()).collect();
    assert!(raws.iter().any(|r| r.starts_with('[')), "raw bytes kept");

    let (code, body) = weft.get_err("/api/plugins/nope/query");
    assert_eq!(code, 404);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("nope"),
        "{body}"
    );
    let (code, body) = weft.get_err("/api/plugins/core/query?window=soon");
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("soon"),
        "{body}"
    );
    let (code, _) = weft.get_err("/api/rejected?limit=0");
    assert_eq!(code, 400);

    let metrics = weft.metrics();
    let received = stream.deliveries.len();
    assert!(
        metrics.contains(&format!(
            "weft_events_total{{outcome=\"received\"}} {received}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_plugin_batch_seconds_count{plugin=\"core\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_checkpoint_seconds_count"),
        "{metrics}"
    );
}

/// The generator's ground truth is what normalization makes of its
/// messages: every accepted event exactly (device, browser, OS, session,
/// props), duplicates by event id, and the malformed ones rejected for their
/// reasons. Needs no broker.
#[test]
fn generated_messages_normalize_to_the_ground_truth() {
    let stream = generate(7, 400, LATENESS_MS);
    let mut normalizer = Normalizer::new(FieldMapping::default());
    let mut accepted = BTreeMap::new();
    let mut duplicates = 0;
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    for d in &stream.deliveries {
        match normalizer.normalize(&d.payload) {
            Ok(e) => {
                if let Some(first) = accepted.insert(e.id.clone(), e.clone()) {
                    assert_eq!(first, e, "a duplicate delivery is the same event");
                    duplicates += 1;
                }
            }
            Err(r) => *rejected.entry(r.reason.code().to_owned()).or_default() += 1,
        }
    }
    for truth in &stream.events {
        let payload = accepted.remove(&truth.id);
        assert_eq!(payload.as_ref(), Some(truth), "event {}", truth.id);
    }
    assert!(accepted.is_empty(), "events beyond the truth: {accepted:?}");
    assert_eq!(duplicates, stream.duplicates);
    assert_eq!(rejected, stream.malformed);
}

/// Answers depend on how the input is split into partitions, never on how
/// many workers step them: `--workers 1`, `2` and `4` over the same file
/// give the reference's answers, and the status shows every partition.
#[test]
fn workers_share_the_partitions_and_do_not_change_answers() {
    let stream = generate(13, 300, LATENESS_MS);
    let want = expected(&stream);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let config = write_config(dir.path(), 1_000);
    for workers in ["1", "2", "4"] {
        let args = [
            "--source",
            source.as_str(),
            "--config",
            config.as_str(),
            "--workers",
            workers,
        ];
        let weft = Weft::start(&dir.path().join(format!("w{workers}")), &args);
        wait_until_done(&weft, &want);
        check_results(&weft, &want);
        let status = weft.get("/api/status");
        assert_eq!(status["workers"], json!(workers.parse::<u64>().unwrap()));
        let partitions = status["partitions"].as_array().expect("partitions");
        assert_eq!(partitions.len(), 8, "the default split: {status}");
        let received: u64 = partitions
            .iter()
            .map(|p| p["events"]["received"].as_u64().unwrap_or_default())
            .sum();
        assert_eq!(received, want.messages, "each message in one partition");
        assert!(
            partitions
                .iter()
                .all(|p| p["events"]["accepted"].as_u64() > Some(0)),
            "300 users reach every one of 8 partitions: {status}"
        );
        let plugins = weft.get("/api/plugins");
        let core = plugins
            .as_array()
            .expect("a list")
            .iter()
            .find(|p| p["name"] == "core")
            .expect("core runs");
        let per_partition = core["partitions"].as_array().expect("per partition");
        assert_eq!(per_partition.len(), 8);
        let events_in: u64 = per_partition
            .iter()
            .map(|p| p["events_in"].as_u64().unwrap_or_default())
            .sum();
        assert_eq!(core["events_in"].as_u64(), Some(events_in), "{core}");
        // Every instance reports its linear memory (a Rust plugin has at
        // least one 64 KiB page), and the plugin's figure is their sum.
        let memory: Vec<u64> = per_partition
            .iter()
            .map(|p| p["memory_bytes"].as_u64().unwrap_or_default())
            .collect();
        assert!(memory.iter().all(|&m| m >= 64 << 10), "{core}");
        assert_eq!(
            core["memory_bytes"].as_u64(),
            Some(memory.iter().sum()),
            "{core}"
        );
    }
}

/// `kill -9` while a file is read into partitions that checkpoint on their
/// own: the restart reads from the earliest position any partition needs,
/// each skips what it had, and the answers are exact.
#[test]
fn partitions_of_a_file_resume_exactly_after_kill_9() {
    let stream = generate(17, 3_000, LATENESS_MS);
    let want = expected(&stream);
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = stream.write_file(dir.path());
    let config = write_config(dir.path(), 50);
    let args = [
        "--source",
        source.as_str(),
        "--config",
        config.as_str(),
        "--workers",
        "2",
    ];
    let data = dir.path().join("k");
    for fraction in [0.3, 0.6] {
        let seen = kill_when_read(&data, &args, (want.messages as f64 * fraction) as u64);
        assert!(
            seen < want.messages,
            "weft read the whole file before the kill; make it longer"
        );
    }
    let weft = Weft::start(&data, &args);
    wait_until_done(&weft, &want);
    check_results(&weft, &want);
}
