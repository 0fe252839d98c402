//! The crossing benchmark: what it costs to hand a batch of events to a
//! WebAssembly plugin, per event, against what the host spends building the
//! batch in the first place.
//!
//! Three figures per batch size (1, 64, 1024, 4096 events per call):
//! - **build**: `BatchBuilder::push` for every event, then `finish` — the
//!   host's own cost, the baseline;
//! - **ingest**: `Plugin::ingest` of a built batch into the `noop` metric
//!   fixture (lowering the batch into guest memory, the guest SDK's view of
//!   it, the call and return);
//! - **stage**: `Plugin::process` of a built batch through the `noop-stage`
//!   fixture, which pushes every event on unchanged, plus `apply` of its
//!   output (both directions of the crossing and the host's validation).
//!
//! Each figure is the median over [`RUNS`] timed runs (min–max alongside) of
//! ns per event; each run repeats the call until it has lasted about
//! [`RUN_TARGET`]. The events look like real clickstream: seven strings (user,
//! event name, session, path, device, browser, OS) and two properties, drawn
//! from small vocabularies (about 100 users, 10 paths, 5 event names, 3
//! browsers) so the per-batch string table dedups the way it does in
//! production.
//!
//! Run with `cargo bench -p weft-runtime --bench crossing` after `cargo build
//! -p weft` has built the plugin fixtures. Prints a markdown table.

use std::{
    hint::black_box,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use weft_normalize::Event;
use weft_runtime::{Batch, BatchBuilder, DurableState, Limits, Plugin, Runtime, apply};

const SIZES: [usize; 4] = [1, 64, 1024, 4096];
/// Timed runs per figure; the median is reported.
const RUNS: usize = 9;
/// How long one timed run lasts, roughly.
const RUN_TARGET: Duration = Duration::from_millis(100);
/// The target for a no-op Rust plugin at 1024 events per call.
const TARGET_NS: f64 = 100.0;

/// The fixtures keep no state: reads find nothing.
struct NoState;

impl DurableState for NoState {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, weft_state::StateError> {
        Ok(None)
    }
    fn scan(
        &self,
        _: &[u8],
        _: Option<&[u8]>,
        _: usize,
    ) -> Result<weft_state::Entries, weft_state::StateError> {
        Ok(Vec::new())
    }
}

/// The bytes of fixture `artifact`, as the plugins workspace builds it.
fn component(artifact: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target/wasm32-wasip2/release");
    let path = dir.join(format!("{artifact}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the plugin fixture {} ({e}). Build the plugins first: `cargo build -p weft`.",
            path.display()
        )
    })
}

/// `n` events shaped like production clickstream, in time order.
fn clickstream(n: usize) -> Vec<Event> {
    const NAMES: [&str; 5] = ["page_view", "page_view", "click", "add_to_cart", "purchase"];
    const PATHS: [&str; 10] = [
        "/",
        "/products",
        "/products/42",
        "/products/77",
        "/products/1031",
        "/search",
        "/cart",
        "/checkout",
        "/account",
        "/help/shipping",
    ];
    const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
    const BROWSERS: [&str; 3] = ["Chrome", "Safari", "Firefox"];
    const OSES: [&str; 4] = ["Windows", "macOS", "iOS", "Android"];
    const REFERRERS: [&str; 6] = [
        "https://www.google.com/",
        "https://news.ycombinator.com/",
        "direct",
        "newsletter",
        "https://t.co/",
        "ads",
    ];
    const CAMPAIGNS: [&str; 4] = ["spring_sale", "retarget_q4", "brand", "none"];
    // A fixed LCG: the same events every run.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |below: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % below
    };
    let start = 1_763_805_600_000i64;
    (0..n)
        .map(|i| {
            let user = next(100);
            let time = start + i as i64 * 37;
            Event {
                id: String::new(),
                time,
                user: format!("user-{user:05}"),
                name: NAMES[next(NAMES.len())].into(),
                // About one and a half sessions per user.
                session: format!("user-{user:05}:{}", start + (user as i64 % 2) * 1_800_000),
                path: PATHS[next(PATHS.len())].into(),
                device: DEVICES[user % DEVICES.len()].into(),
                browser: BROWSERS[user % BROWSERS.len()].into(),
                os: OSES[user % OSES.len()].into(),
                props: vec![
                    ("campaign".into(), CAMPAIGNS[next(CAMPAIGNS.len())].into()),
                    ("referrer".into(), REFERRERS[next(REFERRERS.len())].into()),
                ],
            }
        })
        .collect()
}

/// One figure: ns per event, median and range over the runs.
struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

impl Figure {
    fn cell(&self) -> String {
        format!("{:.1} ({:.1}–{:.1})", self.median, self.min, self.max)
    }
}

/// Times `call` (one call = one batch of `n` events): finds how many calls
/// make a run of about [`RUN_TARGET`], warms up, then takes [`RUNS`] runs.
fn measure(n: usize, mut call: impl FnMut()) -> Figure {
    let mut run = |calls: u64| {
        let started = Instant::now();
        for _ in 0..calls {
            call();
        }
        started.elapsed()
    };
    let mut calls = 1u64;
    loop {
        let took = run(calls);
        if took >= RUN_TARGET / 4 {
            let scale = RUN_TARGET.as_secs_f64() / took.as_secs_f64();
            calls = ((calls as f64 * scale).ceil() as u64).max(1);
            break;
        }
        calls *= 2;
    }
    let mut per_event: Vec<f64> = (0..RUNS)
        .map(|_| run(calls).as_nanos() as f64 / (calls as f64 * n as f64))
        .collect();
    per_event.sort_by(f64::total_cmp);
    Figure {
        median: per_event[RUNS / 2],
        min: per_event[0],
        max: per_event[RUNS - 1],
    }
}

fn main() {
    let runtime = Runtime::new(None).expect("wasmtime engine");
    let start = |name: &str, artifact: &str| {
        let module = runtime
            .load(name, &component(artifact))
            .unwrap_or_else(|e| panic!("{e}"));
        Plugin::start(
            &runtime,
            name,
            &module,
            Arc::new(NoState),
            "{}",
            Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut metric = start("noop", "noop");
    let mut stage = start("noop_stage", "noop_stage");

    let mut rows = Vec::new();
    for n in SIZES {
        let events = clickstream(n);
        let mut builder = BatchBuilder::default();
        let build = measure(n, || {
            for e in &events {
                builder.push(e);
            }
            black_box(builder.finish());
        });

        let batch: Batch = {
            for e in &events {
                builder.push(e);
            }
            builder.finish()
        };
        let ingest = measure(n, || metric.ingest(black_box(&batch)).expect("ingest"));

        // The identity stage adds no strings or props and returns the same
        // events, so applying its output leaves the batch as it was: one
        // batch serves every call.
        let mut staged = batch.clone();
        let process = measure(n, || {
            let out = stage.process(black_box(&staged)).expect("process");
            apply(&mut staged, out).expect("apply");
        });
        assert_eq!(staged.events.len(), n);
        assert_eq!(
            (staged.text.len(), staged.ends.len()),
            (batch.text.len(), batch.ends.len())
        );

        eprintln!(
            "batch of {n}: build {}, ingest {}, stage {}",
            build.cell(),
            ingest.cell(),
            process.cell()
        );
        rows.push((n, batch.ends.len() - 1, build, ingest, process));
    }

    println!(
        "ns per event, median of {RUNS} runs (min–max); ratio = crossing / building the batch\n\n\
         | events per call | distinct strings | build (host baseline) | `ingest` → noop | ratio | `process` + `apply` → noop-stage | ratio |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    for (n, strings, build, ingest, process) in &rows {
        println!(
            "| {n} | {strings} | {} | {} | {:.1}× | {} | {:.1}× |",
            build.cell(),
            ingest.cell(),
            ingest.median / build.median,
            process.cell(),
            process.median / build.median,
        );
    }
    if let Some((_, _, _, ingest, _)) = rows.iter().find(|r| r.0 == 1024) {
        let verdict = if ingest.median <= TARGET_NS {
            "met"
        } else {
            "missed"
        };
        println!(
            "\nTarget: a no-op plugin costs ≤ {TARGET_NS} ns per event at 1024 events per call: \
             {:.1} ns — {verdict}.",
            ingest.median
        );
    }
}
