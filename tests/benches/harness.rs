//! The benchmark harness: every speed figure of `BENCHMARKS.md` from one
//! command, on the same generated events, each the median of several runs
//! and each target a ratio against a baseline measured in the same run.
//!
//! ```sh
//! cargo bench -p weft-tests --bench harness            # full: about 3 minutes
//! cargo bench -p weft-tests --bench harness -- --smoke # CI: seconds, figures meaningless
//! ```
//!
//! Writes `target/weft-bench/results.md` and `results.json` and prints the
//! table. Measurements so far:
//!
//! 1. **decode limit**: `weft-normalize` (JSON parse, field candidates, time
//!    formats, user-agent enrichment, leftover properties) against the
//!    plainest decode of the same bytes into a struct of borrowed fields;
//! 2. **end to end**: the default pipeline (sessionizer → core,
//!    event_counts, funnel as WebAssembly components, checkpoints on) from a
//!    file, in process, against the plain decode rate (target ≥ 0.4);
//! 4. **batching**: the pipeline with a no-op stage and a no-op metric, by
//!    batch size;
//! 10. **restart**: from start (runtime, store, plugins, source) to the first
//!     event through every plugin, with the compiled-module cache warm
//!     against cold;
//! - **languages**: the `page_stats` example in Rust, Python, JavaScript
//!   (QuickJS, SpiderMonkey) and C, built from source, each fed the whole
//!   sessionized stream in batches of 1024 through `ingest` with a checkpoint
//!   at the end: ns per event against the Rust build, and component sizes.

use std::{
    borrow::Cow,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};
use weft_normalize::{FieldMapping, Normalizer};
use weft_pipeline::{Pipeline, PluginSpec, Settings, lifecycle::Origin};
use weft_runtime::{BatchBuilder, Limits, Plugin, Runtime};
use weft_source::SourceSpec;
use weft_state::Store;
use weft_tests::{
    clickstream::generate,
    languages::build_examples,
    reference::{GAP_MS, with_sessions},
};

/// One figure of the results table.
struct Figure {
    item: &'static str,
    name: String,
    unit: &'static str,
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
    let data = tempfile::tempdir_in(dir).expect("a data dir");
    let store = Store::open(&data.path().join("state")).expect("a store");
    let source = weft_source::open(&SourceSpec::File(file.to_path_buf())).expect("the file");
    let started = Instant::now();
    let mut pipeline = Pipeline::open(settings.clone(), source, plugins.to_vec(), store, runtime)
        .expect("a pipeline");
    let shared = pipeline.shared();
    loop {
        pipeline.step().expect("a pipeline step");
        let status = shared.status();
        if !status.source_running && status.buffered == 0 {
            assert_eq!(status.events.received as usize, messages);
            return per_second(messages, started);
        }
    }
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
    let smoke = std::env::args().any(|a| a == "--smoke");
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
        item: "1",
        name: "plain decode (serde_json into a struct of borrowed fields)".into(),
        unit: "msg/s",
        runs: plain,
        ratio: None,
    };
    let plain_rate = plain.median();
    let normalize = Figure {
        item: "1",
        name: "normalize (weft-normalize)".into(),
        unit: "msg/s",
        ratio: Some((median(&normalize) / plain_rate, None)),
        runs: normalize,
    };
    figures.extend([plain, normalize]);

    // 2. End to end, in process, from a file.
    eprintln!("2. end to end…");
    let runtime = Runtime::new(Some(tmp.path().join("modules"))).expect("a runtime");
    let default: Vec<PluginSpec> = ["sessionizer", "core", "event_counts", "funnel"]
        .iter()
        .map(|n| spec(n, weft::bundled::get(n).expect("bundled")))
        .collect();
    let settings = Settings::default();
    // A first run compiles the modules into the cache; it is not counted.
    pipeline_rate(tmp.path(), &file, &default, &settings, &runtime, messages);
    let e2e = repeat(config.runs, || {
        pipeline_rate(tmp.path(), &file, &default, &settings, &runtime, messages)
    });
    figures.push(Figure {
        item: "2",
        name: "default pipeline, file → 4 components, checkpoints on".into(),
        unit: "msg/s",
        ratio: Some((median(&e2e) / plain_rate, Some(0.4))),
        runs: e2e,
    });

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
        pipeline_rate(tmp.path(), &file, &noop, &settings, &runtime, messages);
        let runs = repeat(config.runs, || {
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
            item: "4",
            name: format!("no-op stage + metric, batch_size {batch_size}"),
            unit: "msg/s",
            ratio: Some((median(&runs) / best, None)),
            runs,
        });
    }

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
        item: "10",
        name: "start to first processed event, cold module cache".into(),
        unit: "ms",
        runs: cold,
        ratio: None,
    };
    figures.push(Figure {
        item: "10",
        name: "start to first processed event, warm module cache".into(),
        unit: "ms",
        ratio: Some((median(&warm) / cold.median(), None)),
        runs: warm,
    });
    figures.push(cold);

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
                store.plugin_state(instance),
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
            item: "languages",
            name: format!("{instance}: ingest per event, batches of 1024"),
            unit: "ns/event",
            ratio: Some((ns / base_ns, None)),
            runs,
        });
        figures.push(Figure {
            item: "languages",
            name: format!("{instance}: component size"),
            unit: "KB",
            runs: vec![size],
            ratio: Some((size / base_size, None)),
        });
    }

    report(&figures, messages, smoke);
}

/// Milliseconds from nothing (a new runtime over `cache`, a new store, the
/// source opened) to the first event through every plugin.
fn first_event(dir: &Path, cache: &Path, file: &Path, plugins: &[PluginSpec]) -> f64 {
    let started = Instant::now();
    let runtime = Runtime::new(Some(cache.to_path_buf())).expect("a runtime");
    let data = tempfile::tempdir_in(dir).expect("a data dir");
    let store = Store::open(&data.path().join("state")).expect("a store");
    let source = weft_source::open(&SourceSpec::File(file.to_path_buf())).expect("the file");
    let mut pipeline = Pipeline::open(
        Settings::default(),
        source,
        plugins.to_vec(),
        store,
        &runtime,
    )
    .expect("a pipeline");
    let shared = pipeline.shared();
    loop {
        pipeline.step().expect("a pipeline step");
        let all = shared.plugins();
        if all
            .iter()
            .all(|p| weft_pipeline::lock(&p.stats).events_in > 0)
        {
            return started.elapsed().as_secs_f64() * 1e3;
        }
    }
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
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} {} | {:.0}–{:.0} | {ratio} | {target} |",
            f.item,
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
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
