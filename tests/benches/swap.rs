//! The swap benchmark: how long the pipeline waits while a new version of a
//! plugin is swapped in, with events arriving as fast as it can take them.
//!
//! Two runs of the real `weft` binary over the same generated clickstream
//! file (the default pipeline: sessionizer, core, event_counts, funnel; a
//! file source reads as fast as the pipeline takes events):
//!
//! - **baseline**: no swaps; the time to ingest the whole file (run before
//!   and after the swapping run, and averaged);
//! - **swapping**: `core` is swapped through the admin API over and over
//!   until the file is done, alternating between two builds of the same
//!   logic (`core` and the `core_rebuilt` fixture). Every swap answers the
//!   pause the host measured: from the moment the pipeline stops taking
//!   batches to the moment the new version is in place (its `init` over the
//!   checkpointed state, and the swap).
//!
//! Reported: the pause's p50, p99 and maximum, against the mean time of one
//! `core` batch call in the same run (the pipeline waits for that as a matter
//! of course), and the ingest time with swaps against the baseline.
//!
//! Run with `cargo bench -p weft-tests --bench swap`. Prints a markdown table.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weft_tests::{clickstream::generate, process::Weft, wait_for};

const TOKEN: &str = "bench";
/// Generated users: about 15 events each.
const USERS: usize = 30_000;
/// Swaps not counted: the first use of each version compiles it.
const WARM_UP: usize = 2;

fn artifact(name: &str) -> Vec<u8> {
    let path = Path::new(weft::bundled::ARTIFACTS_DIR).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether the file is read and every event processed.
fn done(weft: &Weft, accepted: usize) -> bool {
    let status = weft.get("/api/status");
    status["source_running"] == json!(false)
        && status["buffered"] == json!(0)
        && status["events"]["accepted"] == json!(accepted)
}

struct Run {
    ingest: Duration,
    pauses: Vec<f64>,
    core_batch_ms: f64,
}

/// Runs weft over `source`, swapping `core` until the file is done if
/// `swap` is set.
fn run(dir: &Path, source: &str, config: &str, accepted: usize, swap: bool) -> Run {
    let weft = Weft::start(
        dir,
        &[
            "--source",
            source,
            "--config",
            config,
            "--admin-token",
            TOKEN,
        ],
    );
    let started = Instant::now();
    let versions = [artifact("core_rebuilt"), artifact("core")];
    let mut pauses = Vec::new();
    if swap {
        while !done(&weft, accepted) {
            let (status, body) = weft.send(
                "PUT",
                "/api/plugins/core",
                Some(TOKEN),
                &versions[pauses.len() % 2],
            );
            assert_eq!(status, 200, "{body}");
            pauses.push(body["pause_ms"].as_f64().expect("pause_ms"));
        }
    }
    wait_for("the file to be processed", Duration::from_secs(600), || {
        Ok(done(&weft, accepted).then_some(()))
    });
    let ingest = started.elapsed();
    let plugins: Value = weft.get("/api/plugins");
    let core_batch_ms = plugins
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "core")
        .and_then(|p| p["mean_batch_ms"].as_f64())
        .expect("core's mean batch time");
    Run {
        ingest,
        pauses: pauses.split_off(WARM_UP.min(pauses.len())),
        core_batch_ms,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    eprintln!("generating {USERS} users' events…");
    let stream = generate(7, USERS, 5_000);
    let source = stream.write_file(tmp.path());
    let config = tmp.path().join("weft.toml");
    // Frequent checkpoints: swaps wait for one, so more of them fit.
    std::fs::write(&config, "[pipeline]\ncheckpoint_interval_ms = 200\n").expect("weft.toml");
    let config = config.display().to_string();
    let accepted = stream.events.len();

    // Baseline, swaps, baseline again: the first run pays for a cold file
    // and module cache, so the baseline is the mean of one run on each side.
    eprintln!("baseline: {accepted} events without swaps…");
    let before = run(&tmp.path().join("a"), &source, &config, accepted, false);
    eprintln!("the same with swaps…");
    let swapping = run(&tmp.path().join("b"), &source, &config, accepted, true);
    eprintln!("the baseline again…");
    let after = run(&tmp.path().join("c"), &source, &config, accepted, false);
    let baseline = (before.ingest + after.ingest) / 2;

    let mut pauses = swapping.pauses;
    assert!(
        !pauses.is_empty(),
        "the file was done before any swap counted"
    );
    pauses.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&pauses, 50.0), percentile(&pauses, 99.0));
    let max = pauses[pauses.len() - 1];
    let batch = swapping.core_batch_ms;
    println!("| figure | value | ratio |");
    println!("|---|---:|---:|");
    for (name, ms) in [("p50", p50), ("p99", p99), ("max", max)] {
        println!(
            "| swap pause {name} | {ms:.3} ms | {:.3}× a `core` batch call |",
            ms / batch
        );
    }
    println!("| `core` batch call (mean, baseline) | {batch:.3} ms | 1× |");
    println!(
        "| ingest time, {} swaps | {:.2} s | {:.2}× without swaps ({:.2} s, {:.2} s) |",
        pauses.len() + WARM_UP,
        swapping.ingest.as_secs_f64(),
        swapping.ingest.as_secs_f64() / baseline.as_secs_f64(),
        before.ingest.as_secs_f64(),
        after.ingest.as_secs_f64()
    );
    println!();
    println!(
        "{accepted} events; {} swaps measured; target p99 ≤ 5 ms: {}",
        pauses.len(),
        if p99 <= 5.0 { "met" } else { "NOT met" }
    );
}
