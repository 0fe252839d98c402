//! The benchmark harness: every speed figure of `BENCHMARKS.md` from one
//! command, on the same generated events, each the median of several runs
//! and each target a ratio against a baseline measured in the same run.
//!
//! ```sh
//! cargo bench -p weft-tests --bench harness            # full: about 25 minutes
//! cargo bench -p weft-tests --bench harness -- --smoke # CI: seconds, figures meaningless
//! cargo bench -p weft-tests --bench harness -- --only 9 # one item
//! ```
//!
//! Writes `target/weft-bench/results.md` and `results.json` and prints the
//! table. Each item runs in a process of its own (this program with `--only
//! ITEM`), as does each configuration of item 11; every timed pipeline run
//! must end with no plugin call failed, or the harness stops. The
//! measurements:
//!
//! 1. **decode limit**: `weft-normalize` (JSON parse, field candidates, time
//!    formats, user-agent enrichment, leftover properties) against the
//!    plainest decode of the same bytes into a struct of borrowed fields;
//! 2. **end to end**: the default pipeline (sessionizer → core,
//!    event_counts, funnel as WebAssembly components, checkpoints on) from a
//!    file, in process, against the plain decode rate (target ≥ 0.4);
//! 3. **WASM tax**: the default pipeline with the same plugins compiled
//!    natively (`weft_plugin::native`, `Runtime::with_native`) against the
//!    components (target WASM / native ≥ 0.8);
//! 4. **batching**: the pipeline with a no-op stage and a no-op metric, by
//!    batch size;
//! 5. **guards**: the default pipeline with the CPU guard (epoch
//!    interruption) on against off (target ≥ 0.9);
//! 6. **from Kafka**: the default pipeline from a 4-partition topic on the
//!    test broker (`WEFT_TEST_BROKERS`, default 127.0.0.1:9092; skipped with
//!    a message when none answers) against a raw rdkafka consumer draining the
//!    same topic (target ≥ 0.7);
//! 7. **peers**: Quix Streams and Bytewax (`tests/peers/`, Python) computing
//!    the same metrics (events per name, session count and duration with the
//!    30-minute gap) from the same clean 4-partition topic, each checked
//!    against a reference first: weft's rate over theirs (targets ≥ 20 and
//!    ≥ 30; skipped with a message without a broker or the Python packages);
//! 8. **memory**: the peak resident memory of a process running the default
//!    pipeline over 1M users' page views within 17 minutes (1M open
//!    sessions; a child process of its own), and sled's size on disk after
//!    the checkpoint against the logical size of what it stores;
//! 9. **query latency**: p50/p99 of `GET /api/plugins/core/query` over real
//!    HTTP while the default pipeline ingests the file at full speed, against
//!    the p99 with the pipeline idle (target p99 ≤ 20 ms);
//! 10. **restart**: from start (runtime, store, plugins, source) to the first
//!     event through every plugin, with the compiled-module cache warm
//!     against cold;
//! 11. **scaling**: the default pipeline over the same number of synthetic
//!     events spread across 10k, 100k and 1M distinct users, and the
//!     sessionizer with 1, 4 and 16 `core` instances;
//! 12. **workers**: the default pipeline over 8 partitions with `--workers
//!     2` against `--workers 1` (target ≥ 1.7 on 2 cores);
//! 13. **restore**: a host with an empty data directory taking over a
//!     partition holding 100k users' state (every user's open session,
//!     counters and distinct users) from the group's changelog: seconds and
//!     MB/s, against a raw rdkafka consumer draining the same changelog;
//! 14. **group query**: item 9's query asked of one of three `weft`
//!     processes in one consumer group (8 partitions), merged from all
//!     three, while they ingest the stream as it is produced;
//! - **languages**: the `page_stats` example in Rust, Python, JavaScript
//!   (QuickJS, SpiderMonkey) and C, built from source, each fed the whole
//!   sessionized stream in batches of 1024 through `ingest` with a checkpoint
//!   at the end: ns per event against the Rust build, and component sizes.

// The allocator `weft` ships with (host/cli/src/main.rs): figures are of
// the product as run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    borrow::Cow,
    ffi::OsStr,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};
use weft_normalize::{FieldMapping, Normalizer};
use weft_pipeline::{Pipeline, PluginSpec, Settings, Started, lifecycle::Origin};
use weft_runtime::{BatchBuilder, Limits, Plugin, Role, Runtime};
use weft_source::{KafkaConfig, SourceSpec};
use weft_state::Store;
use weft_tests::{
    clickstream::{Delivery, generate},
    languages::build_examples,
    peers::{self, Answer, Peer},
    reference::{GAP_MS, with_sessions},
};

/// One figure of the results table.
#[derive(Serialize, Deserialize)]
struct Figure {
    item: String,
    name: String,
    unit: String,
    /// One value per run.
    runs: Vec<f64>,
    /// The figure's ratio against its baseline, and the target, if any.
    ratio: Option<(f64, Option<f64>)>,
}

impl Figure {
    fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The plainest decode of a message: the fields weft reads, borrowed where
/// the JSON has no escapes, under each name the input shapes use.
#[derive(Deserialize)]
#[allow(dead_code)] // Decoded to be measured, never read.
struct Plain<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "timestamp", alias = "event_timestamp")]
    ts: Option<&'a RawValue>,
    #[serde(borrow, alias = "user")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, alias = "action")]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "page")]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    platform: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

struct Config {
    users: usize,
    runs: usize,
}

/// Runs `f` `runs` times; each returns its events per second.
fn repeat(runs: usize, mut f: impl FnMut() -> f64) -> Vec<f64> {
    (0..runs).map(|_| f()).collect()
}

/// Like [`repeat`] after one uncounted run (compiling modules into the
/// cache, warming the page cache).
fn warm_runs(runs: usize, mut f: impl FnMut() -> f64) -> Vec<f64> {
    f();
    repeat(runs, f)
}

fn per_second(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

/// Runs the pipeline over `file` with `plugins` until every event is
/// processed; returns messages per second.
fn pipeline_rate(
    dir: &Path,
    file: &Path,
    plugins: &[PluginSpec],
    settings: &Settings,
    runtime: &Runtime,
    messages: usize,
) -> f64 {
    let source = SourceSpec::File(file.to_path_buf());
    source_rate(dir, &source, plugins, settings, runtime, messages)
}

/// Runs the pipeline over `source` until its `messages` are read and every
/// event processed; returns messages per second.
fn source_rate(
    dir: &Path,
    source: &SourceSpec,
    plugins: &[PluginSpec],
    settings: &Settings,
    runtime: &Runtime,
    messages: usize,
) -> f64 {
    run_to_end(dir, source, plugins, settings, runtime, messages).0
}

/// Every metric's answer to a query without parameters after the pipeline
/// has processed `file`, by plugin name.
fn answers(
    dir: &Path,
    file: &Path,
    plugins: &[PluginSpec],
    runtime: &Runtime,
    messages: usize,
) -> Vec<(String, String)> {
    let source = SourceSpec::File(file.to_path_buf());
    let settings = Settings::default();
    let (_, started, _data) = run_to_end(dir, &source, plugins, &settings, runtime, messages);
    let shared = started.shared.clone();
    started.stop().expect("the pipeline stops");
    shared
        .plugin_infos()
        .into_iter()
        .filter(|info| info.role == Some(Role::Metric))
        .map(|info| {
            let answer = shared.query(&info.name, &[]).expect("the plugin's answer");
            (info.name, answer)
        })
        .collect()
}

/// Opens a pipeline over `spec`, joining its consumer group when it is
/// Kafka, as `weft run` does.
fn open_pipeline(
    settings: &Settings,
    spec: &SourceSpec,
    plugins: Vec<PluginSpec>,
    store: Store,
    runtime: &Runtime,
) -> Pipeline {
    let source = weft_source::open(spec).expect("the source");
    let pipeline =
        Pipeline::open(settings.clone(), source, plugins, store, runtime).expect("a pipeline");
    match spec {
        SourceSpec::Kafka(kafka) => {
            let group = weft_source::Group::open(kafka).expect("the consumer group");
            pipeline.join(group, &kafka.group, "bench", "http://127.0.0.1:0")
        }
        _ => pipeline,
    }
}

/// [`source_rate`], also returning the pipeline and its data directory.
fn run_to_end(
    dir: &Path,
    source: &SourceSpec,
    plugins: &[PluginSpec],
    settings: &Settings,
    runtime: &Runtime,
    messages: usize,
) -> (f64, Started, tempfile::TempDir) {
    let data = tempfile::tempdir_in(dir).expect("a data dir");
    let store = Store::open(&data.path().join("state")).expect("a store");
    let pipeline = open_pipeline(settings, source, plugins.to_vec(), store, runtime);
    let clock = Instant::now();
    let started = pipeline.start().expect("a started pipeline");
    await_pipeline(&started, "every message processed", || {
        let status = started.shared.status();
        assert!(
            status.source_running
                || status.buffered > 0
                || status.events.received as usize == messages,
            "the source ended after {} messages, not {messages}",
            status.events.received
        );
        (status.events.received as usize == messages && status.buffered == 0).then_some(())
    });
    let rate = per_second(messages, clock);
    assert_no_failures(&started.shared);
    (rate, started, data)
}

/// How long any timed pipeline run may take before the harness gives up.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// Polls `done` every 20 ms (figures are timed by it) until it gives
/// a value; fails if `started` stops by itself or after [`RUN_DEADLINE`].
fn await_pipeline<T>(started: &Started, what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(!started.is_finished(), "the pipeline failed before {what}");
        assert!(
            Instant::now() < deadline,
            "no {what} after {RUN_DEADLINE:?}: {:?}",
            started.shared.status().events
        );
        // Not more often: a status is a few milliseconds of work, and asking
        // for one every millisecond took a core from the pipeline measured.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Panics if a plugin failed a call: a figure of a pipeline whose plugins
/// did not take every batch means nothing.
fn assert_no_failures(shared: &weft_pipeline::Shared) {
    for info in shared.plugin_infos() {
        let stats = &info.stats;
        assert!(
            stats.errors == 0 && stats.dead_letters == 0,
            "{} failed {} calls ({} batches to its dead letters); the last: {:?}",
            info.name,
            stats.errors,
            stats.dead_letters,
            stats.last_error
        );
    }
}

/// A plain rdkafka consumer reading `topic` from the start until it has
/// seen `messages`: the whole topic through a fresh group, or only
/// `partition` by assignment (no group joined); messages per second.
fn read_rate(brokers: &str, topic: &str, partition: Option<i32>, messages: usize) -> f64 {
    use rdkafka::{
        ClientConfig, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
    };
    // librdkafka wants a group id even for an assignment.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("{topic}-raw-{:x}", rand::random::<u64>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let started = Instant::now();
    match partition {
        None => consumer.subscribe(&[topic]).expect("subscribe"),
        Some(p) => {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, p, Offset::Beginning)
                .expect("the partition");
            consumer.assign(&list).expect("assign");
        }
    }
    let mut seen = 0;
    while seen < messages {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.expect("a message");
            seen += 1;
        }
    }
    per_second(messages, started)
}

/// Whether any of `brokers` (`host:port,…`) accepts a TCP connection.
fn answers_tcp(brokers: &str) -> bool {
    brokers
        .split(',')
        .filter_map(|b| std::net::ToSocketAddrs::to_socket_addrs(b).ok())
        .flatten()
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// Item 11's runs of one configuration, in a process of its own (this
/// program with `--scaling`): see [`scaling_child`].
fn scaling_runs(file: &Path, events: usize, metrics: usize, runs: usize) -> Vec<f64> {
    let [events, metrics, runs] = [events, metrics, runs].map(|n| n.to_string());
    let args = [
        OsStr::new("--scaling"),
        file.as_ref(),
        events.as_ref(),
        metrics.as_ref(),
        runs.as_ref(),
    ];
    serde_json::from_value(child(&args)).expect("the rates")
}

/// The child of [`scaling_runs`]: over `file` (`events` messages), one
/// uncounted run and then `runs` timed runs of the default pipeline
/// (`metrics` 0) or of the sessionizer and `metrics` × `core`; prints the
/// rates as JSON.
fn scaling_child(file: &Path, events: usize, metrics: usize, runs: usize) {
    let dir = file.parent().expect("the events' directory");
    let runtime = Runtime::new(Some(dir.join("modules"))).expect("a runtime");
    let plugins = with_room(if metrics == 0 {
        default_plugins()
    } else {
        let core = weft::bundled::get("core").expect("bundled");
        std::iter::once(bundled("sessionizer"))
            .chain((0..metrics).map(|k| spec(&format!("core_{k}"), core)))
            .collect()
    });
    let settings = Settings::default();
    let rates = warm_runs(runs, || {
        pipeline_rate(dir, file, &plugins, &settings, &runtime, events)
    });
    println!("{}", json!(rates));
}

/// What item 8 measures.
struct Memory {
    /// The process's peak resident memory during the run.
    rss_mb: f64,
    /// Its resident memory once every event is processed, before the last
    /// checkpoint.
    processed_mb: f64,
    /// Each plugin's linear memory then, all its partitions' instances.
    plugins_mb: Vec<(String, f64)>,
    disk_mb: f64,
    logical_mb: f64,
}

/// The harness process's peak resident set (VmHWM), MB.
fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

/// A memory figure of this process's `/proc/self/status`, MB.
fn proc_status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `users` users, one page view each, all within 17 minutes of event time:
/// at the end every one of them has an open session (the gap is 30 minutes).
/// Runs in a child process of its own (this program again, with
/// `--open-sessions`), so the peak resident memory is the pipeline's alone.
fn open_sessions(dir: &Path, users: usize) -> Memory {
    let users = users.to_string();
    let answer = child(&[OsStr::new("--open-sessions"), users.as_ref(), dir.as_ref()]);
    let mb = |k: &str| answer[k].as_f64().expect("a number");
    let plugins = answer["plugins_mb"]
        .as_object()
        .expect("the plugins' memory");
    Memory {
        rss_mb: mb("rss_mb"),
        processed_mb: mb("processed_mb"),
        plugins_mb: plugins
            .iter()
            .map(|(name, v)| (name.clone(), v.as_f64().expect("a number")))
            .collect(),
        disk_mb: mb("disk_mb"),
        logical_mb: mb("logical_mb"),
    }
}

/// The child of [`open_sessions`]: writes the events, runs the default
/// pipeline over them, checkpoints, prints what it measured as JSON.
fn open_sessions_child(users: usize, dir: &Path) {
    let file = dir.join(format!("open-sessions-{users}.jsonl"));
    write_events(&file, users, 1, |i| i);
    let runtime = Runtime::new(Some(dir.join("modules"))).expect("a runtime");
    let plugins = with_room(default_plugins());
    let data = tempfile::tempdir_in(dir).expect("a data dir");
    let store = Store::open(&data.path().join("state")).expect("a store");
    let source = weft_source::open(&SourceSpec::File(file.clone())).expect("the file");
    let started = Pipeline::open(Settings::default(), source, plugins, store, &runtime)
        .expect("a pipeline")
        .start()
        .expect("a started pipeline");
    let shared = started.shared.clone();
    await_pipeline(&started, "the end of the file", || {
        started.is_done().then_some(())
    });
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let processed_mb = proc_status_mb("VmRSS:");
    let plugins_mb: serde_json::Map<String, Value> = shared
        .plugin_infos()
        .into_iter()
        .map(|info| (info.name, json!(mb(info.stats.memory_bytes))))
        .collect();
    started.stop().expect("a last checkpoint");
    assert_no_failures(&shared);
    shared.store.flush().expect("a flush");
    println!(
        "{}",
        json!({
            "rss_mb": peak_rss_mb(),
            "processed_mb": processed_mb,
            "plugins_mb": plugins_mb,
            "disk_mb": mb(shared.store.size_on_disk()),
            "logical_mb": mb(shared.store.logical_size()),
        })
    );
    let _ = std::fs::remove_file(file);
}

/// Writes `n` synthetic events to `file`, `spacing_ms` apart in event time,
/// event `i` by user `user(i)`, streamed (never all in memory): page views
/// on 100 paths with every fourth event another name.
fn write_events(file: &Path, n: usize, spacing_ms: i64, user: impl Fn(usize) -> usize) {
    use std::io::Write as _;
    let names = ["page_view", "page_view", "page_view", "add_to_cart"];
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).expect("the events file"));
    for i in 0..n {
        writeln!(
            out,
            r#"{{"event_id":"s{i}","ts":{},"user_id":"u{}","event":"{}","path":"/p/{}","platform":"web"}}"#,
            weft_tests::clickstream::START_MS + i as i64 * spacing_ms,
            user(i),
            names[i % names.len()],
            i % 100
        )
        .expect("write an event");
    }
    out.flush().expect("write the events");
}

/// Item 13, restore: one partition's state built by one host, then taken over
/// from the changelog by hosts with empty data directories, one per run.
fn restore(
    dir: &Path,
    plugins: &[PluginSpec],
    runtime: &Runtime,
    smoke: bool,
    runs: usize,
    figures: &mut Vec<Figure>,
) {
    let brokers = weft_tests::broker::brokers();
    if !answers_tcp(&brokers) {
        eprintln!(
            "13. restore: SKIPPED, no broker at {brokers} (set WEFT_TEST_BROKERS, or run scripts/test.sh, which starts one)"
        );
        return;
    }
    let users = if smoke { 2_000 } else { 100_000 };
    eprintln!("13. restore ({users} users' state, {brokers})…");
    let topic = weft_tests::broker::create_topic(1);
    let deliveries: Vec<Delivery> = (0..users)
        .map(|i| Delivery {
            key: format!("u{i}"),
            payload: format!(
                r#"{{"event_id":"r{i}","ts":{},"user_id":"u{i}","event":"page_view","path":"/p/{}","platform":"web"}}"#,
                weft_tests::clickstream::START_MS + i as i64 * 10,
                i % 100
            )
            .into_bytes(),
        })
        .collect();
    weft_tests::broker::produce(&topic, &deliveries);
    let kafka = KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        group: format!("{topic}-restore"),
        options: Default::default(),
        instance_id: None,
    };
    let source = SourceSpec::Kafka(kafka.clone());
    let settings = Settings {
        idle_ms: 100,
        ..Settings::default()
    };
    // The host that builds the state; its stop writes the last checkpoint.
    let (_, built, _data) = run_to_end(dir, &source, plugins, &settings, runtime, users);
    built.stop().expect("the pipeline stops");
    let changelog = weft_source::Group::open(&kafka)
        .expect("the consumer group")
        .changelog_topic()
        .to_owned();
    let (mut seconds, mut rates, mut raw, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let data = tempfile::tempdir_in(dir).expect("a data dir");
        let store = Store::open(&data.path().join("state")).expect("a store");
        let started = open_pipeline(&settings, &source, plugins.to_vec(), store, runtime)
            .start()
            .expect("a started pipeline");
        let done = await_pipeline(&started, "the partition restored", || {
            started.shared.status().group?.last_restore
        });
        assert!(
            done.keys as usize >= users,
            "restored {} keys of {users} users' state",
            done.keys
        );
        started.stop().expect("the pipeline stops");
        let s = done.ms.max(1) as f64 / 1000.0;
        seconds.push(s);
        rates.push(done.records as f64 / s);
        sizes.push(done.bytes as f64 / 1e6 / s);
        raw.push(read_rate(
            &brokers,
            &changelog,
            Some(0),
            done.records as usize,
        ));
    }
    let raw = Figure {
        item: "13".into(),
        name: "raw rdkafka consumer reading the same changelog partition".into(),
        unit: "records/s".into(),
        runs: raw,
        ratio: None,
    };
    figures.push(Figure {
        item: "13".into(),
        name: format!("restore of one partition with {users} users' state (vs raw)"),
        unit: "records/s".into(),
        ratio: Some((median(&rates) / raw.median(), None)),
        runs: rates,
    });
    figures.push(raw);
    figures.push(Figure {
        item: "13".into(),
        name: "restore time".into(),
        unit: "s".into(),
        runs: seconds,
        ratio: None,
    });
    figures.push(Figure {
        item: "13".into(),
        name: "restore throughput (keys and values)".into(),
        unit: "MB/s".into(),
        runs: sizes,
        ratio: None,
    });
}

/// Item `item`'s figures of query latency runs: p50 and p99 under ingest
/// (the p99's target 20 ms), against the p99 idle; `on` says where.
fn latency_figures(item: &str, on: &str, runs: &[Latencies], figures: &mut Vec<Figure>) {
    let pick = |f: fn(&Latencies) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let query = "`GET /api/plugins/core/query`";
    let idle = Figure {
        item: item.into(),
        name: format!("{query}{on} p99, pipeline idle (after the stream)"),
        unit: "ms".into(),
        runs: pick(|l| l.idle_p99),
        ratio: None,
    };
    let busy_p99 = pick(|l| l.busy_p99);
    let met = median(&busy_p99) <= 20.0;
    figures.push(Figure {
        item: item.into(),
        name: format!("{query}{on} p50, under full ingest"),
        unit: "ms".into(),
        ratio: Some((median(&pick(|l| l.busy_p50)) / idle.median(), None)),
        runs: pick(|l| l.busy_p50),
    });
    figures.push(Figure {
        item: item.into(),
        name: format!(
            "{query}{on} p99, under full ingest (target ≤ 20 ms: {})",
            if met { "met" } else { "NOT met" }
        ),
        unit: "ms".into(),
        ratio: Some((median(&busy_p99) / idle.median(), None)),
        runs: busy_p99,
    });
    figures.push(idle);
}

/// Item 14: a query merged over three `weft` hosts in one group (the real
/// binary, 8 partitions): asked of one host while the stream is produced
/// and all three ingest it, then idle. One run per fresh topic.
fn group_query(
    dir: &Path,
    stream: &weft_tests::clickstream::Stream,
    runs: usize,
    figures: &mut Vec<Figure>,
) {
    use weft_tests::{group, process::Weft};
    let brokers = weft_tests::broker::brokers();
    if !answers_tcp(&brokers) {
        eprintln!(
            "14. group query: SKIPPED, no broker at {brokers} (set WEFT_TEST_BROKERS, or run scripts/test.sh, which starts one)"
        );
        return;
    }
    eprintln!("14. a query merged over 3 hosts ({brokers})…");
    let messages = stream.deliveries.len() as u64;
    let latencies: Vec<Latencies> = (0..runs)
        .map(|run| {
            let topic = weft_tests::broker::create_topic(8);
            let name = format!("{topic}-hosts");
            let args = weft_tests::broker::kafka_args(&topic, &name, &brokers, None);
            let hosts: Vec<Weft> = ["a", "b", "c"]
                .iter()
                .map(|h| Weft::start(&dir.join(format!("group-{run}-{h}")), &args))
                .collect();
            let all: Vec<&Weft> = hosts.iter().collect();
            group::settled("three hosts to share the partitions", &all, 8);
            let url = format!("{}/api/plugins/core/query", hosts[0].base);
            let agent = ureq::agent();
            let ask = || {
                let started = Instant::now();
                let answer = agent.get(&url).call().expect("a whole answer");
                std::hint::black_box(answer.into_string().expect("an answer"));
                started.elapsed().as_secs_f64() * 1000.0
            };
            // Whole answers first: every host has heard of the others.
            weft_tests::wait_for("a whole answer", group::DEADLINE, || {
                Ok(agent.get(&url).call().is_ok().then_some(()))
            });
            let producer = {
                let (topic, deliveries) = (topic.clone(), stream.deliveries.clone());
                std::thread::spawn(move || weft_tests::broker::produce(&topic, &deliveries))
            };
            let deadline = Instant::now() + RUN_DEADLINE;
            let mut busy = Vec::new();
            loop {
                for _ in 0..20 {
                    busy.push(ask());
                }
                let received: u64 = all
                    .iter()
                    .map(|h| group::received(h).expect("a status"))
                    .sum();
                if received >= messages {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{received} of {messages} after {RUN_DEADLINE:?}"
                );
            }
            producer.join().expect("the producer");
            let mut idle: Vec<f64> = (0..100).map(|_| ask()).collect();
            for host in hosts {
                host.terminate(Duration::from_secs(120));
            }
            Latencies {
                busy_p50: percentile(&mut busy, 0.5),
                busy_p99: percentile(&mut busy, 0.99),
                idle_p99: percentile(&mut idle, 0.99),
            }
        })
        .collect();
    latency_figures("14", " merged over 3 hosts", &latencies, figures);
}

/// Query latencies of one run, in ms.
struct Latencies {
    busy_p50: f64,
    busy_p99: f64,
    idle_p99: f64,
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// Serves the HTTP API over a pipeline that ingests `file` at full speed on
/// its own thread, and asks `core` for its answer over and over until the
/// file is processed; then asks 100 times more with the pipeline idle.
fn query_latency(
    dir: &Path,
    file: &Path,
    plugins: &[PluginSpec],
    settings: &Settings,
    runtime: &Runtime,
) -> Latencies {
    let data = tempfile::tempdir_in(dir).expect("a data dir");
    let store = Store::open(&data.path().join("state")).expect("a store");
    let source = weft_source::open(&SourceSpec::File(file.to_path_buf())).expect("the file");
    let pipeline = Pipeline::open(settings.clone(), source, plugins.to_vec(), store, runtime)
        .expect("a pipeline");
    let shared = pipeline.shared();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let listener = tokio
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port");
    let url = format!(
        "http://{}/api/plugins/core/query",
        listener.local_addr().expect("an address")
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = weft_http::Options {
        admin: weft_http::Admin {
            token: None,
            upload_limit: weft_http::DEFAULT_UPLOAD_LIMIT,
        },
        plugin_dir: None,
        server: weft_http::Server::default(),
    };
    let server = tokio.spawn(weft_http::serve(listener, shared.clone(), options, async {
        let _ = stopped.await;
    }));
    let started = pipeline.start().expect("a started pipeline");
    let agent = ureq::agent();
    let ask = || {
        let started = Instant::now();
        let answer = agent.get(&url).call().expect("the query");
        std::hint::black_box(answer.into_string().expect("an answer"));
        started.elapsed().as_secs_f64() * 1000.0
    };
    let mut busy = Vec::new();
    while !started.is_done() {
        assert!(!started.is_finished(), "the pipeline failed");
        busy.push(ask());
    }
    started.stop().expect("the pipeline stops");
    let mut idle: Vec<f64> = (0..100).map(|_| ask()).collect();
    let _ = stop.send(());
    tokio
        .block_on(server)
        .expect("the server task")
        .expect("the server");
    Latencies {
        busy_p50: percentile(&mut busy, 0.5),
        busy_p99: percentile(&mut busy, 0.99),
        idle_p99: percentile(&mut idle, 0.99),
    }
}

/// The default pipeline: the sessionizer, then `core`, `event_counts` and
/// `funnel`.
fn default_plugins() -> Vec<PluginSpec> {
    ["sessionizer", "core", "event_counts", "funnel"]
        .iter()
        .map(|&n| bundled(n))
        .collect()
}

/// `plugins` with limits for a million users, as a deployment of that size
/// configures them: `core`'s all-time user set alone outgrows the default
/// 64 MiB there, and growing it (rehashing a million entries) can take
/// longer than the default 200 ms a call.
fn with_room(plugins: Vec<PluginSpec>) -> Vec<PluginSpec> {
    let limits = Limits {
        cpu_ms: 2_000,
        memory_mib: 1_024,
    };
    plugins
        .into_iter()
        .map(|plugin| PluginSpec { limits, ..plugin })
        .collect()
}

/// The bundled plugin `name` as `name`.
fn bundled(name: &str) -> PluginSpec {
    spec(name, weft::bundled::get(name).expect("bundled"))
}

fn spec(name: &str, wasm: &[u8]) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        wasm: Arc::from(wasm),
        config: json!({}),
        limits: Limits::default(),
        origin: Origin::Config,
        role: None,
    }
}

fn fixture(artifact: &str) -> Vec<u8> {
    let path = Path::new(weft::bundled::ARTIFACTS_DIR).join(format!("{artifact}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--open-sessions") {
        let users = args[i + 1].parse().expect("a user count");
        return open_sessions_child(users, Path::new(&args[i + 2]));
    }
    if let Some(i) = args.iter().position(|a| a == "--scaling") {
        let arg = |k: usize| args[i + k].as_str();
        let number = |k: usize| arg(k).parse().expect("a number");
        return scaling_child(Path::new(arg(1)), number(2), number(3), number(4));
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    // `--only ITEM` runs one item (items 1 and 2 run together: 2's baseline is 1).
    let Some(only) = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).expect("--only ITEM").as_str())
    else {
        return run_in_children(smoke);
    };
    let wanted = |items: &[&str]| items.contains(&only);
    let config = if smoke {
        Config {
            users: 300,
            runs: 1,
        }
    } else {
        Config {
            users: 30_000,
            runs: 5,
        }
    };
    let tmp = tempfile::tempdir().expect("a temp dir");
    eprintln!("generating {} users' events…", config.users);
    let stream = generate(7, config.users, 5_000);
    let file = PathBuf::from(stream.write_file(tmp.path()).trim_start_matches("file:"));
    let messages = stream.deliveries.len();
    let lines: Vec<&[u8]> = stream.deliveries.iter().map(|d| &d.payload[..]).collect();
    let mut figures = Vec::new();
    let runtime = Runtime::new(Some(tmp.path().join("modules"))).expect("a runtime");
    let default = default_plugins();
    // Each item runs in a fresh process: compile the default plugins into its
    // module cache first, so that no timed run includes compiling them.
    for plugin in &default {
        runtime
            .load(&plugin.name, &plugin.wasm)
            .expect("a bundled plugin compiles");
    }
    let settings = Settings::default();

    if wanted(&["1", "2"]) {
        // 1. The decode limit.
        eprintln!("1. decode limit…");
        let plain = repeat(config.runs, || {
            let started = Instant::now();
            for line in &lines {
                std::hint::black_box(serde_json::from_slice::<Plain>(line).ok());
            }
            per_second(lines.len(), started)
        });
        let normalize = repeat(config.runs, || {
            let mut normalizer = Normalizer::new(FieldMapping::default());
            let started = Instant::now();
            for line in &lines {
                std::hint::black_box(normalizer.normalize(line).ok());
            }
            per_second(lines.len(), started)
        });
        let plain = Figure {
            item: "1".into(),
            name: "plain decode (serde_json into a struct of borrowed fields)".into(),
            unit: "msg/s".into(),
            runs: plain,
            ratio: None,
        };
        let plain_rate = plain.median();
        let normalize = Figure {
            item: "1".into(),
            name: "normalize (weft-normalize)".into(),
            unit: "msg/s".into(),
            ratio: Some((median(&normalize) / plain_rate, None)),
            runs: normalize,
        };
        figures.extend([plain, normalize]);

        // 2. End to end, in process, from a file.
        eprintln!("2. end to end…");
        let e2e = warm_runs(config.runs, || {
            pipeline_rate(tmp.path(), &file, &default, &settings, &runtime, messages)
        });
        figures.push(Figure {
            item: "2".into(),
            name: "default pipeline, file → 4 components, checkpoints on".into(),
            unit: "msg/s".into(),
            ratio: Some((median(&e2e) / plain_rate, Some(0.4))),
            runs: e2e,
        });
    }

    if wanted(&["3"]) {
        // 3. The WASM tax: the same plugin code compiled natively, standing
        // in for the components in the same pipeline.
        eprintln!("3. WASM tax…");
        let bundled = |name| weft::bundled::get(name).expect("bundled");
        let native = Runtime::new(Some(tmp.path().join("modules")))
            .expect("a runtime")
            .with_native(bundled("sessionizer"), sessionizer::native_plugin)
            .with_native(bundled("core"), weft_core::native_plugin)
            .with_native(bundled("event_counts"), event_counts::native_plugin)
            .with_native(bundled("funnel"), funnel::native_plugin);
        // The same code must give the same answers, or the comparison means nothing.
        let wasm_answers = answers(tmp.path(), &file, &default, &runtime, messages);
        let native_answers = answers(tmp.path(), &file, &default, &native, messages);
        assert_eq!(
            wasm_answers, native_answers,
            "the native builds answer differently from the components"
        );
        // Alternating, so drift on a shared machine hits both alike.
        let (mut wasm, mut natively) = (Vec::new(), Vec::new());
        for _ in 0..config.runs {
            natively.push(pipeline_rate(
                tmp.path(),
                &file,
                &default,
                &settings,
                &native,
                messages,
            ));
            wasm.push(pipeline_rate(
                tmp.path(),
                &file,
                &default,
                &settings,
                &runtime,
                messages,
            ));
        }
        let natively = Figure {
            item: "3".into(),
            name: "default pipeline, the same plugins compiled natively".into(),
            unit: "msg/s".into(),
            runs: natively,
            ratio: None,
        };
        figures.push(Figure {
            item: "3".into(),
            name: "default pipeline, plugins as WebAssembly components".into(),
            unit: "msg/s".into(),
            ratio: Some((median(&wasm) / natively.median(), Some(0.8))),
            runs: wasm,
        });
        figures.push(natively);
    }

    if wanted(&["12"]) {
        // 12. Workers: the same pipeline and split (8 partitions), stepped
        // by one worker thread and by two, alternating.
        eprintln!("12. workers…");
        let with = |workers| Settings {
            workers,
            ..Settings::default()
        };
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..config.runs {
            one.push(pipeline_rate(
                tmp.path(),
                &file,
                &default,
                &with(1),
                &runtime,
                messages,
            ));
            two.push(pipeline_rate(
                tmp.path(),
                &file,
                &default,
                &with(2),
                &runtime,
                messages,
            ));
        }
        let one = Figure {
            item: "12".into(),
            name: "default pipeline, 8 partitions, --workers 1".into(),
            unit: "msg/s".into(),
            runs: one,
            ratio: None,
        };
        figures.push(Figure {
            item: "12".into(),
            name: "default pipeline, 8 partitions, --workers 2 (vs 1)".into(),
            unit: "msg/s".into(),
            ratio: Some((median(&two) / one.median(), Some(1.7))),
            runs: two,
        });
        figures.push(one);
    }

    if wanted(&["13"]) {
        restore(
            tmp.path(),
            &default,
            &runtime,
            smoke,
            config.runs,
            &mut figures,
        );
    }

    if wanted(&["5"]) {
        // 5. The CPU guard: epoch interruption on (what weft runs) and off.
        eprintln!("5. guards…");
        let unguarded =
            Runtime::with_cpu_budgets(Some(tmp.path().join("modules-unguarded")), false)
                .expect("a runtime");
        pipeline_rate(tmp.path(), &file, &default, &settings, &unguarded, messages);
        // Alternating, so drift on a shared machine hits both alike.
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..config.runs {
            off.push(pipeline_rate(
                tmp.path(),
                &file,
                &default,
                &settings,
                &unguarded,
                messages,
            ));
            on.push(pipeline_rate(
                tmp.path(),
                &file,
                &default,
                &settings,
                &runtime,
                messages,
            ));
        }
        let off = Figure {
            item: "5".into(),
            name: "default pipeline, CPU guard off".into(),
            unit: "msg/s".into(),
            runs: off,
            ratio: None,
        };
        figures.push(Figure {
            item: "5".into(),
            name: "default pipeline, CPU guard on (epoch interruption, 5 ms ticks)".into(),
            unit: "msg/s".into(),
            ratio: Some((median(&on) / off.median(), Some(0.9))),
            runs: on,
        });
        figures.push(off);
    }

    if wanted(&["6"]) {
        // 6. From Kafka: weft against a raw consumer draining the same topic.
        let brokers = weft_tests::broker::brokers();
        let reachable = answers_tcp(&brokers);
        if reachable {
            eprintln!("6. from Kafka ({brokers})…");
            let topic = weft_tests::broker::create_topic(4);
            weft_tests::broker::produce(&topic, &stream.deliveries);
            let kafka_settings = Settings {
                idle_ms: 100,
                ..Settings::default()
            };
            let (mut raw, mut weft) = (Vec::new(), Vec::new());
            for _ in 0..config.runs {
                raw.push(read_rate(&brokers, &topic, None, messages));
                let source = SourceSpec::Kafka(KafkaConfig {
                    brokers: brokers.clone(),
                    topic: topic.clone(),
                    group: format!("{topic}-weft-{:x}", rand::random::<u64>()),
                    options: Default::default(),
                    instance_id: None,
                });
                weft.push(source_rate(
                    tmp.path(),
                    &source,
                    &default,
                    &kafka_settings,
                    &runtime,
                    messages,
                ));
            }
            let raw = Figure {
                item: "6".into(),
                name: "raw rdkafka consumer draining the topic (4 partitions)".into(),
                unit: "msg/s".into(),
                runs: raw,
                ratio: None,
            };
            figures.push(Figure {
                item: "6".into(),
                name: "default pipeline from the same topic".into(),
                unit: "msg/s".into(),
                ratio: Some((median(&weft) / raw.median(), Some(0.7))),
                runs: weft,
            });
            figures.push(raw);
        } else {
            eprintln!(
                "6. from Kafka: SKIPPED, no broker at {brokers} (set WEFT_TEST_BROKERS, or run scripts/test.sh, which starts one)"
            );
        }
    }

    if wanted(&["7"]) {
        // 7. Peers: Quix Streams and Bytewax on the same clean topic, the same metrics.
        let brokers = weft_tests::broker::brokers();
        let reachable = answers_tcp(&brokers);
        let peer_targets = [(Peer::QuixStreams, 20.0), (Peer::Bytewax, 30.0)];
        let versions: Result<Vec<String>, String> = peer_targets
            .iter()
            .map(|(peer, _)| peer.version())
            .collect();
        match versions {
            _ if !reachable => eprintln!(
                "7. peers: SKIPPED, no broker at {brokers} (set WEFT_TEST_BROKERS, or run scripts/test.sh, which starts one)"
            ),
            Err(why) => eprintln!("7. peers: SKIPPED, {why}"),
            Ok(versions) => {
                let users = if smoke { 300 } else { 6_000 };
                let events = weft_tests::clickstream::events(7, users);
                let clean = events.len();
                eprintln!("7. peers ({clean} clean events of {users} users, {brokers})…");
                let topic = weft_tests::broker::create_topic_with(4, &peers::TOPIC_CONFIG);
                weft_tests::broker::produce(&topic, &peers::clean_deliveries(&events));
                let want = peers::reference(&events);
                let kafka_settings = Settings {
                    idle_ms: 100,
                    ..Settings::default()
                };
                let weft_source = || {
                    SourceSpec::Kafka(KafkaConfig {
                        brokers: brokers.clone(),
                        topic: topic.clone(),
                        group: format!("{topic}-weft-{:x}", rand::random::<u64>()),
                        options: Default::default(),
                        instance_id: None,
                    })
                };

                // Agreement before timing: weft's answer, then each peer's
                // (these runs also warm caches: they are not counted).
                let data = tempfile::tempdir_in(tmp.path()).expect("a data dir");
                let store = Store::open(&data.path().join("state")).expect("a store");
                let started = open_pipeline(
                    &kafka_settings,
                    &weft_source(),
                    default.clone(),
                    store,
                    &runtime,
                )
                .start()
                .expect("a started pipeline");
                let shared = started.shared.clone();
                let counters = await_pipeline(&started, "every clean message processed", || {
                    let status = shared.status();
                    (status.events.received as usize == clean && status.buffered == 0)
                        .then_some(status.events)
                });
                assert_eq!(
                    counters.accepted as usize, clean,
                    "weft rejected clean messages: {counters:?}"
                );
                let query = |name: &str| -> Value {
                    let answer = shared.query(name, &[]).expect("a query");
                    serde_json::from_str(&answer).expect("a JSON answer")
                };
                Answer::from_weft(&query("core"), &query("event_counts")).check("weft", &want);
                started.stop().expect("the pipeline stops");
                drop((shared, data));
                for (peer, _) in peer_targets {
                    peer.run(&brokers, &topic, clean)
                        .answer
                        .check(peer.name(), &want);
                }

                // Timed runs, alternating so drift on a shared machine hits all alike.
                let mut weft = Vec::new();
                let mut rates = vec![Vec::new(); peer_targets.len()];
                for _ in 0..config.runs {
                    weft.push(source_rate(
                        tmp.path(),
                        &weft_source(),
                        &default,
                        &kafka_settings,
                        &runtime,
                        clean,
                    ));
                    for ((peer, _), rates) in peer_targets.iter().zip(&mut rates) {
                        let run = peer.run(&brokers, &topic, clean);
                        run.answer.check(peer.name(), &want);
                        rates.push(clean as f64 / run.seconds);
                    }
                }
                let weft_rate = median(&weft);
                figures.push(Figure {
                    item: "7".into(),
                    name: format!(
                        "default pipeline from a topic of {clean} clean events ({users} users)"
                    ),
                    unit: "msg/s".into(),
                    runs: weft,
                    ratio: None,
                });
                // The ratio is weft's rate over the peer's, so "≥ 20" reads
                // as the target says: weft at least 20 × the peer.
                for (((peer, target), version), rates) in
                    peer_targets.iter().zip(versions).zip(rates)
                {
                    figures.push(Figure {
                        item: "7".into(),
                        name: format!(
                            "{} {version}, same topic, same metrics (weft ÷ {})",
                            peer.name(),
                            peer.name()
                        ),
                        unit: "msg/s".into(),
                        ratio: Some((weft_rate / median(&rates), Some(*target))),
                        runs: rates,
                    });
                }
            }
        }
    }

    if wanted(&["8"]) {
        // 8. Memory: open sessions held by the default pipeline, and sled's size.
        eprintln!("8. memory…");
        let users = if smoke { 10_000 } else { 1_000_000 };
        let memory = open_sessions(tmp.path(), users);
        figures.push(Figure {
        item: "8".into(),
        name: format!(
            "resident memory with {users} open sessions, default pipeline (target ≤ 300 MB: {})",
            if memory.rss_mb <= 300.0 {
                "met"
            } else {
                "NOT met"
            }
        ),
        unit: "MB".into(),
        runs: vec![memory.rss_mb],
        ratio: None,
    });
        figures.push(Figure {
            item: "8".into(),
            name: "of which resident once every event is processed, before the last checkpoint"
                .into(),
            unit: "MB".into(),
            runs: vec![memory.processed_mb],
            ratio: None,
        });
        for (plugin, mb) in &memory.plugins_mb {
            figures.push(Figure {
                item: "8".into(),
                name: format!("of which `{plugin}`'s linear memory (every partition's instance)"),
                unit: "MB".into(),
                runs: vec![*mb],
                ratio: None,
            });
        }
        figures.push(Figure {
        item: "8".into(),
        name: format!(
            "sled on disk after the checkpoint, vs the logical state ({:.0} MB) (target ≤ 3×: {})",
            memory.logical_mb,
            if memory.disk_mb <= 3.0 * memory.logical_mb {
                "met"
            } else {
                "NOT met"
            }
        ),
        unit: "MB".into(),
        ratio: Some((memory.disk_mb / memory.logical_mb, None)),
        runs: vec![memory.disk_mb],
    });
    }

    if wanted(&["11"]) {
        // 11. Scaling with work: distinct users, then metric plugins.
        eprintln!("11. scaling…");
        let events = if smoke { 5_000 } else { 300_000 };
        // Six configurations, the slowest (16 × `core`) a minute a run: three runs each.
        let runs = config.runs.min(3);
        let user_counts = if smoke {
            [100, 1_000, 10_000]
        } else {
            [10_000, 100_000, 1_000_000]
        };
        // Users drawn by a multiplicative hash of the event's index, 10 ms apart:
        // 50 minutes of event time, so sessions open and close along the way.
        let scattered = |users: usize| move |i: usize| i.wrapping_mul(2_654_435_761) % users;
        let mut by_users = Vec::new();
        for users in user_counts {
            let file = tmp.path().join(format!("scaling-{users}.jsonl"));
            write_events(&file, events, 10, scattered(users));
            by_users.push((users, scaling_runs(&file, events, 0, runs)));
        }
        let first = median(&by_users[0].1);
        for (users, runs) in by_users {
            figures.push(Figure {
                item: "11".into(),
                name: format!("default pipeline, {events} events over {users} distinct users"),
                unit: "msg/s".into(),
                ratio: Some((median(&runs) / first, None)),
                runs,
            });
        }
        let scaling_file = tmp.path().join(format!("scaling-{}.jsonl", user_counts[1]));
        let mut by_plugins = Vec::new();
        for metrics in [1, 4, 16] {
            let runs = scaling_runs(&scaling_file, events, metrics, runs);
            by_plugins.push((metrics, runs));
        }
        let first = median(&by_plugins[0].1);
        for (metrics, runs) in by_plugins {
            figures.push(Figure {
                item: "11".into(),
                name: format!(
                    "sessionizer + {metrics} × core, {events} events over {} users",
                    user_counts[1]
                ),
                unit: "msg/s".into(),
                ratio: Some((median(&runs) / first, None)),
                runs,
            });
        }
    }

    if wanted(&["9"]) {
        // 9. Query latency under full ingest, over real HTTP.
        eprintln!("9. query latency…");
        let runs: Vec<Latencies> = (0..config.runs)
            .map(|_| query_latency(tmp.path(), &file, &default, &settings, &runtime))
            .collect();
        latency_figures("9", "", &runs, &mut figures);
    }

    if wanted(&["14"]) {
        group_query(tmp.path(), &stream, config.runs, &mut figures);
    }

    if wanted(&["4"]) {
        // 4. Batching, with no-op plugins.
        eprintln!("4. batching…");
        let noop = vec![
            spec("noop_stage", &fixture("noop_stage")),
            spec("noop", &fixture("noop")),
        ];
        let mut by_size = Vec::new();
        for batch_size in [1, 16, 256, 1024, 4096] {
            let settings = Settings {
                batch_size,
                ..Settings::default()
            };
            let runs = warm_runs(config.runs, || {
                pipeline_rate(tmp.path(), &file, &noop, &settings, &runtime, messages)
            });
            by_size.push((batch_size, runs));
        }
        let best = by_size
            .iter()
            .map(|(_, runs)| median(runs))
            .fold(0.0, f64::max);
        for (batch_size, runs) in by_size {
            figures.push(Figure {
                item: "4".into(),
                name: format!("no-op stage + metric, batch_size {batch_size}"),
                unit: "msg/s".into(),
                ratio: Some((median(&runs) / best, None)),
                runs,
            });
        }
    }

    if wanted(&["10"]) {
        // 10. Restart: to the first processed event, cold and warm module cache.
        eprintln!("10. restart…");
        let cold = repeat(config.runs, || {
            let cache = tempfile::tempdir_in(tmp.path()).expect("a cold cache");
            first_event(tmp.path(), cache.path(), &file, &default)
        });
        let warm_cache = tmp.path().join("modules");
        let warm = repeat(config.runs, || {
            first_event(tmp.path(), &warm_cache, &file, &default)
        });
        let cold = Figure {
            item: "10".into(),
            name: "start to first processed event, cold module cache".into(),
            unit: "ms".into(),
            runs: cold,
            ratio: None,
        };
        figures.push(Figure {
            item: "10".into(),
            name: "start to first processed event, warm module cache".into(),
            unit: "ms".into(),
            ratio: Some((median(&warm) / cold.median(), None)),
            runs: warm,
        });
        figures.push(cold);
    }

    if wanted(&["languages"]) {
        // Languages: one example metric, five builds.
        eprintln!("languages: page_stats in every language…");
        let sessionized = with_sessions(&stream.events, GAP_MS);
        let batches: Vec<_> = sessionized
            .chunks(1024)
            .map(|chunk| {
                let mut builder = BatchBuilder::default();
                for event in chunk {
                    builder.push(event);
                }
                builder.finish()
            })
            .collect();
        let mut rust = None;
        for (example, path) in build_examples() {
            let instance = example.instance;
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let module = runtime.load(instance, &bytes).expect("the example loads");
            let runs = repeat(config.runs, || {
                let store =
                    Store::open(&tmp.path().join(format!("{instance}-state"))).expect("a store");
                let limits = Limits {
                    cpu_ms: 60_000,
                    memory_mib: 256,
                };
                let mut plugin = Plugin::start(
                    &runtime,
                    instance,
                    &module,
                    store.plugin_state(instance, 0),
                    "{}",
                    limits,
                )
                .expect("the example starts");
                let started = Instant::now();
                for batch in &batches {
                    plugin.ingest(batch).expect("ingest");
                }
                plugin.checkpoint().expect("checkpoint");
                started.elapsed().as_nanos() as f64 / sessionized.len() as f64
            });
            let ns = median(&runs);
            let size = bytes.len() as f64 / 1024.0;
            // The Rust build (the first) is the baseline of both figures.
            let (base_ns, base_size) = *rust.get_or_insert((ns, size));
            figures.push(Figure {
                item: "languages".into(),
                name: format!("{instance}: ingest per event, batches of 1024"),
                unit: "ns/event".into(),
                ratio: Some((ns / base_ns, None)),
                runs,
            });
            figures.push(Figure {
                item: "languages".into(),
                name: format!("{instance}: component size"),
                unit: "KB".into(),
                runs: vec![size],
                ratio: Some((size / base_size, None)),
            });
        }
    }

    if args.iter().any(|a| a == "--figures-json") {
        println!("{}", json!({ "messages": messages, "figures": figures }));
    } else {
        report(&figures, messages, smoke);
    }
}

/// Every item, in the order the full run takes them (`1` is items 1 and 2).
const ITEMS: [&str; 14] = [
    "1",
    "3",
    "5",
    "6",
    "7",
    "8",
    "11",
    "12",
    "13",
    "9",
    "14",
    "4",
    "10",
    "languages",
];

/// The full run: each item in a process of its own (this program with
/// `--only ITEM`), as `weft` runs one pipeline per process. In one process,
/// the memory the allocator keeps from dozens of pipelines opened and
/// dropped grew past this machine's 24 GB.
fn run_in_children(smoke: bool) {
    let (mut figures, mut messages) = (Vec::new(), 0);
    for item in ITEMS {
        let mut args = vec!["--only", item, "--figures-json"];
        if smoke {
            args.push("--smoke");
        }
        let mut answer = child(&args);
        messages = answer["messages"].as_u64().expect("a message count") as usize;
        let item_figures: Vec<Figure> =
            serde_json::from_value(answer["figures"].take()).expect("the child's figures");
        figures.extend(item_figures);
    }
    report(&figures, messages, smoke);
}

/// Runs this program again with `args`, its progress going to our stderr,
/// and returns the JSON it prints.
fn child<S: AsRef<OsStr>>(args: &[S]) -> Value {
    let exe = std::env::current_exe().expect("the harness's path");
    let out = std::process::Command::new(exe)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run a child harness");
    assert!(
        out.status.success(),
        "the child harness ({:?}) failed: {}",
        args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("the child's JSON")
}

/// Milliseconds from nothing (a new runtime over `cache`, a new store, the
/// source opened) to the first event through every plugin.
fn first_event(dir: &Path, cache: &Path, file: &Path, plugins: &[PluginSpec]) -> f64 {
    let started = Instant::now();
    let runtime = Runtime::new(Some(cache.to_path_buf())).expect("a runtime");
    let data = tempfile::tempdir_in(dir).expect("a data dir");
    let store = Store::open(&data.path().join("state")).expect("a store");
    let source = weft_source::open(&SourceSpec::File(file.to_path_buf())).expect("the file");
    let running = Pipeline::open(
        Settings::default(),
        source,
        plugins.to_vec(),
        store,
        &runtime,
    )
    .expect("a pipeline")
    .start()
    .expect("a started pipeline");
    let ms = await_pipeline(&running, "an event through every plugin", || {
        let infos = running.shared.plugin_infos();
        infos
            .iter()
            .all(|p| p.stats.events_in > 0)
            .then(|| started.elapsed().as_secs_f64() * 1e3)
    });
    running.stop().expect("the pipeline stops");
    ms
}

fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints the table and writes it, with the raw runs, to `target/weft-bench/`.
fn report(figures: &[Figure], messages: usize, smoke: bool) {
    let mut md = format!(
        "{messages} messages per run{}; median of runs (min–max); ratios against the baseline named in BENCHMARKS.md\n\n\
         | item | figure | median | min–max | ratio | target |\n|---|---|---:|---:|---:|---:|\n",
        if smoke {
            " (SMOKE: not a measurement)"
        } else {
            ""
        }
    );
    let mut json = Vec::new();
    for f in figures {
        let (ratio, target) = match f.ratio {
            Some((r, Some(t))) => (
                format!("{r:.3}"),
                format!("≥ {t} {}", if r >= t { "met" } else { "NOT met" }),
            ),
            Some((r, None)) => (format!("{r:.3}"), String::new()),
            None => ("baseline".into(), String::new()),
        };
        // Small figures (latencies in ms, µs per event) keep two decimals.
        let show = |v: f64| {
            if v.abs() < 100.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {}–{} | {ratio} | {target} |",
            f.item,
            f.name,
            show(f.median()),
            f.unit,
            show(f.min()),
            show(f.max())
        );
        json.push(json!({
            "item": f.item, "figure": f.name, "unit": f.unit, "runs": f.runs,
            "median": f.median(), "ratio": f.ratio.map(|r| r.0), "target": f.ratio.and_then(|r| r.1),
        }));
    }
    println!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/weft-bench");
    std::fs::create_dir_all(&out).expect("target/weft-bench");
    std::fs::write(out.join("results.md"), &md).expect("results.md");
    let json = Value::Array(json);
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json).expect("JSON"),
    )
    .expect("results.json");
    eprintln!("written to {}", out.display());
}
