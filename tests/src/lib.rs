//! Support for weft's end-to-end tests: a clickstream generator with known
//! ground truth, a plain reference implementation of the bundled metrics,
//! and helpers to drive a real broker and a real `weft` process.
//!
//! Layout:
//! - [`clickstream`]: generated users, sessions and events, and the messages
//!   that deliver them (several input shapes, disorder, duplicates, malformed);
//! - [`reference`]: what `core`, `event_counts` and `funnel` must answer;
//! - [`broker`]: topics and producing on the Kafka-protocol test broker;
//! - [`process`]: starting, polling and killing the `weft` binary;
//! - [`group`]: a host's view of its consumer group, and waiting for it to settle;
//! - [`languages`]: the `page_stats` example in every language, built from source;
//! - [`peers`]: Quix Streams and Bytewax on the same metrics, for the harness.

pub mod broker;
pub mod clickstream;
pub mod group;
pub mod languages;
pub mod peers;
pub mod process;
pub mod reference;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or fails after `deadline` with the
/// last observation.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> T {
    let started = Instant::now();
    let mut last = String::from("nothing observed yet");
    loop {
        match check() {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = e,
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}; last: {last}"
        );
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(20));
    }
}
