//! CPU budgets measure a plugin call's own CPU time, not the wall clock: on
//! a machine whose cores are busy with other work, a call that fits its
//! budget when the machine is idle still fits it. A replay of calls that
//! succeeded before runs without a budget; a stopping host interrupts a call
//! in progress. The `faulty` fixture's `burn` spins a given number of times
//! (a known amount of CPU work) and `loop` spins for ever.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use weft_normalize::Event;
use weft_runtime::{Batch, BatchBuilder, Error, Limits, Plugin, Runtime};
use weft_state::Store;

fn faulty() -> Vec<u8> {
    let path = PathBuf::from(weft::bundled::ARTIFACTS_DIR).join("faulty.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A batch of one event named `name`.
fn batch(name: &str) -> Batch {
    let mut builder = BatchBuilder::default();
    builder.push(&Event {
        id: String::new(),
        time: 1,
        user: "u".into(),
        name: name.into(),
        session: String::new(),
        path: String::new(),
        device: String::new(),
        browser: String::new(),
        os: String::new(),
        props: Vec::new(),
    });
    builder.finish()
}

/// A `faulty` instance misbehaving with `config` under `limits`.
fn start(runtime: &Runtime, store: &Store, config: &str, limits: Limits) -> Plugin {
    let module = runtime
        .load("faulty", &faulty())
        .expect("the fixture loads");
    Plugin::start(
        runtime,
        "faulty",
        &module,
        store.plugin_state("faulty", 0),
        config,
        limits,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The CPU time this thread has used.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// How many `burn` iterations take at least `at_least` of CPU time.
fn calibrate(runtime: &Runtime, store: &Store, at_least: Duration) -> u64 {
    let mut iterations = 1 << 16;
    loop {
        let config = format!(r#"{{"fault": "burn", "iterations": {iterations}}}"#);
        let mut plugin = start(runtime, store, &config, Limits::default());
        let started = cpu_time();
        plugin
            .ingest(&batch("boom"))
            .expect("a burn within the default budget");
        if cpu_time() - started >= at_least {
            return iterations;
        }
        iterations *= 2;
    }
}

/// Threads that keep every core busy until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(0u64);
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn a_busy_machine_does_not_fail_calls_that_fit_their_budget() {
    let runtime = Runtime::new(None).expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(dir.path()).expect("a store");
    // A call of 15 to 30 ms of CPU time under a 40 ms budget: on an idle
    // machine it fits.
    let iterations = calibrate(&runtime, &store, Duration::from_millis(15));
    let config = format!(r#"{{"fault": "burn", "iterations": {iterations}}}"#);
    let limits = Limits {
        cpu_ms: 40,
        memory_mib: 64,
    };
    let mut plugin = start(&runtime, &store, &config, limits);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Three busy threads per core: the plugin's thread gets about a quarter
    // of a core, so each call takes about four times its CPU time in wall
    // time, well past the budget.
    let _load = Load::start(3 * cores);
    let mut slowest = Duration::ZERO;
    for call in 0..10 {
        let started = Instant::now();
        plugin
            .ingest(&batch("boom"))
            .unwrap_or_else(|e| panic!("call {call} (after {:?}): {e}", started.elapsed()));
        slowest = slowest.max(started.elapsed());
    }
    // Only meaningful if the load really stretched the calls past the budget.
    assert!(
        slowest > Duration::from_millis(40),
        "the load did not slow the calls down (slowest {slowest:?}): the test proves nothing"
    );
}

#[test]
fn a_call_over_its_budget_fails_and_an_unmetered_replay_of_it_does_not() {
    let runtime = Runtime::new(None).expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(dir.path()).expect("a store");
    let iterations = calibrate(&runtime, &store, Duration::from_millis(60));
    let config = format!(r#"{{"fault": "burn", "iterations": {iterations}}}"#);
    let limits = Limits {
        cpu_ms: 10,
        memory_mib: 64,
    };
    let mut plugin = start(&runtime, &store, &config, limits);
    match plugin.ingest(&batch("boom")) {
        Err(Error::Budget {
            limit_ms, used_ms, ..
        }) => {
            assert_eq!(limit_ms, 10);
            assert!(used_ms >= 10, "interrupted after {used_ms} ms of CPU time");
        }
        other => panic!("expected the budget to stop the call, got {other:?}"),
    }
    plugin.restart().expect("a restart");
    plugin
        .unmetered(|p| p.ingest(&batch("boom")))
        .unwrap_or_else(|e| panic!("the unmetered replay failed: {e}"));
    // Metering is back on for the calls after.
    assert!(matches!(
        plugin.ingest(&batch("boom")),
        Err(Error::Budget { .. })
    ));
}

#[test]
fn a_stopping_host_interrupts_a_call_in_progress() {
    let runtime = Runtime::new(None).expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(dir.path()).expect("a store");
    let limits = Limits {
        cpu_ms: 60_000,
        memory_mib: 64,
    };
    let mut plugin = start(&runtime, &store, r#"{"fault": "loop"}"#, limits);
    let stopper = runtime.clone();
    let interrupted_at = std::thread::spawn(move || {
        // Whether the call is already looping or not yet entered, it ends
        // with `Interrupted`: entered calls are interrupted, new ones refused.
        std::thread::park_timeout(Duration::from_millis(200));
        stopper.interrupt_calls();
        Instant::now()
    });
    let result = plugin.ingest(&batch("boom"));
    let ended = Instant::now();
    let interrupted_at = interrupted_at.join().expect("the stopper");
    assert!(
        matches!(result, Err(Error::Interrupted { .. })),
        "expected an interrupt, got {result:?}"
    );
    let late = ended.saturating_duration_since(interrupted_at);
    assert!(late < Duration::from_secs(2), "the call ran on {late:?}");
    // And nothing more is entered.
    assert!(matches!(
        plugin.ingest(&batch("boom")),
        Err(Error::Interrupted { .. })
    ));
}
