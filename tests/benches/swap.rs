//! The swap benchmark: how long the pipeline waits while a new version of a
//! plugin is swapped in, with events arriving as fast as it can take them.
//!
//! The real `weft` binary runs the default pipeline (sessionizer, core,
//! event_counts, funnel) on the built-in demo source at a rate above what the
//! pipeline can process, so it ingests at full speed. `core` is then swapped
//! [`SWAPS`] times through the admin API, alternating between two builds of
//! the same logic (`core` and the `core_rebuilt` fixture). Every swap
//! answers the pause the host measured: from the moment the pipeline stops
//! taking batches to the moment the new version is in place (instantiating
//! it over the checkpointed state, `init`, the swap, the version record).
//!
//! Baselines from the same run: the mean time of one `core` batch call and
//! of one checkpoint (the pipeline waits for both as a matter of course), and
//! the ingest rate in an equally long window without swaps.
//!
//! Run with `cargo bench -p weft-tests --bench swap`. Prints a markdown table.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{process::Weft, wait_for};

const SWAPS: usize = 60;
const TOKEN: &str = "bench";
/// Events per second the demo source offers: more than the pipeline takes.
const OFFERED_RATE: u32 = 400_000;

fn artifact(name: &str) -> Vec<u8> {
    let path = Path::new(weft::bundled::ARTIFACTS_DIR).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn received(weft: &Weft) -> u64 {
    weft.get("/api/status")["events"]["received"]
        .as_u64()
        .expect("a received count")
}

/// `sum / count` of a Prometheus histogram in the exposition `text`.
fn histogram_mean(text: &str, name: &str) -> f64 {
    let value = |suffix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}_{suffix} in /metrics"))
    };
    value("sum") / value("count")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("weft.toml");
    std::fs::write(
        &config,
        format!("[demo]\nrate = {OFFERED_RATE}\nusers = 20000\n"),
    )
    .expect("weft.toml");
    let config = config.display().to_string();
    let weft = Weft::start(
        &dir.path().join("data"),
        &[
            "--source",
            "demo",
            "--config",
            &config,
            "--admin-token",
            TOKEN,
        ],
    );
    let versions = [artifact("core_rebuilt"), artifact("core")];
    eprintln!("warming up (both versions compiled and cached, 100k events in)…");
    for wasm in &versions {
        let (status, body) = weft.send("PUT", "/api/plugins/core", Some(TOKEN), wasm);
        assert_eq!(status, 200, "{body}");
    }
    wait_for("100k events", Duration::from_secs(120), || {
        Ok((received(&weft) > 100_000).then_some(()))
    });

    // Baseline window: as long as the swaps will take, without swaps.
    let started = Instant::now();
    let before = received(&weft);
    let mut pauses = Vec::with_capacity(SWAPS);
    for i in 0..SWAPS {
        let (status, body) = weft.send("PUT", "/api/plugins/core", Some(TOKEN), &versions[i % 2]);
        assert_eq!(status, 200, "{body}");
        pauses.push(body["pause_ms"].as_f64().expect("pause_ms"));
    }
    let swapping = started.elapsed();
    let with_swaps = (received(&weft) - before) as f64 / swapping.as_secs_f64();
    eprintln!("{SWAPS} swaps in {swapping:.1?}; now the same time without swaps…");
    let before = received(&weft);
    let quiet_started = Instant::now();
    while quiet_started.elapsed() < swapping {
        std::thread::park_timeout(swapping - quiet_started.elapsed());
    }
    let without_swaps = (received(&weft) - before) as f64 / quiet_started.elapsed().as_secs_f64();

    let plugins = weft.get("/api/plugins");
    let core_batch_ms = plugins
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "core")
        .and_then(|p| p["mean_batch_ms"].as_f64())
        .expect("core's mean batch time");
    let metrics = ureq::get(&format!("{}/metrics", weft.base))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    let checkpoint_ms = histogram_mean(&metrics, "weft_checkpoint_seconds") * 1e3;
    let status: Value = weft.get("/api/status");
    assert_eq!(status["source_running"], true, "the demo never ends");

    pauses.sort_by(f64::total_cmp);
    let p50 = percentile(&pauses, 50.0);
    let p99 = percentile(&pauses, 99.0);
    let max = pauses[pauses.len() - 1];
    println!("| figure | value | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| swap pause p50 | {p50:.2} ms | {:.1}× a core batch call |",
        p50 / core_batch_ms
    );
    println!(
        "| swap pause p99 | {p99:.2} ms | {:.1}× a core batch call |",
        p99 / core_batch_ms
    );
    println!(
        "| swap pause max | {max:.2} ms | {:.2}× a checkpoint |",
        max / checkpoint_ms
    );
    println!("| core batch call (mean, baseline) | {core_batch_ms:.2} ms | 1× |");
    println!("| checkpoint (mean, baseline) | {checkpoint_ms:.2} ms | |");
    println!(
        "| ingest rate while swapping | {with_swaps:.0} ev/s | {:.2}× without swaps ({without_swaps:.0} ev/s) |",
        with_swaps / without_swaps
    );
    println!();
    println!(
        "{SWAPS} swaps of `core` in {swapping:.1?}; target p99 ≤ 5 ms: {}",
        if p99 <= 5.0 { "met" } else { "NOT met" }
    );
}
