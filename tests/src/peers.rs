//! Peers for the benchmark harness's item 7: Quix Streams and Bytewax
//! computing what weft's `event_counts` and `core` report (events per name,
//! session count and duration with the 30-minute gap) from the same topic.
//!
//! - [`clean_deliveries`]: the stream all three read, one plain JSON message
//!   per ground-truth event (no duplicates, nothing malformed, in event-time
//!   order), keyed by user;
//! - [`reference`]: the answer, worked out here from the events;
//! - [`Peer::run`]: a peer's pipeline (`tests/peers/*.py`) as a subprocess,
//!   its processing time and its answer;
//! - [`Answer::from_weft`]: weft's answer, from its plugins' query results.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};
use weft_normalize::Event;

use crate::{clickstream::Delivery, reference::GAP_MS};

/// Settings for the topic the peers read. Quix Streams derives its internal
/// topics from the input topic's `retention.ms`; Kafka reports every topic
/// setting, tansu only those the topic was created with.
pub const TOPIC_CONFIG: [(&str, &str); 2] = [("retention.ms", "-1"), ("retention.bytes", "-1")];

/// The longest a peer may take over one run before it counts as hung.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// Events per name, and sessions (a new one when two consecutive events of a
/// user are more than 30 minutes apart; duration = last − first event time,
/// sessions still open at the end included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub counts: BTreeMap<String, u64>,
    pub session_count: u64,
    pub session_duration_sum_ms: i64,
}

impl Answer {
    /// weft's answer from the all-time results of `core` and `event_counts`.
    ///
    /// `core` counts a session when it opens and adds to its duration as it
    /// grows, so open sessions are in `session_count` like closed ones: the
    /// same definition as the reference's. It reports the mean duration,
    /// `sum as f64 / count as f64`; the sum is recovered by multiplying back
    /// and rounding, which is exact while the sum is far below 2^52 ms (a sum
    /// off by one would move the mean by 1/count, far more than the rounding).
    pub fn from_weft(core: &Value, event_counts: &Value) -> Answer {
        let session_count = core["session_count"]
            .as_u64()
            .expect("core's session_count");
        let mean = core["avg_session_duration_ms"]
            .as_f64()
            .expect("core's avg_session_duration_ms");
        Answer {
            counts: serde_json::from_value(event_counts["counts"].clone())
                .expect("event_counts' counts"),
            session_count,
            session_duration_sum_ms: (mean * session_count as f64).round() as i64,
        }
    }

    /// Panics, showing both answers, unless `self` (what `who` answered)
    /// equals `want`.
    pub fn check(&self, who: &str, want: &Answer) {
        assert_eq!(
            self, want,
            "{who} disagrees with the reference (left: {who}, right: the reference)"
        );
    }
}

/// Each event as one plain JSON object weft reads out of the box (`ts` in
/// epoch ms), keyed by its user, in the order of `events`.
pub fn clean_deliveries(events: &[Event]) -> Vec<Delivery> {
    events
        .iter()
        .map(|e| Delivery {
            key: e.user.clone(),
            payload: serde_json::to_vec(&json!({
                "event_id": e.id,
                "user_id": e.user,
                "event": e.name,
                "ts": e.time,
                "path": e.path,
            }))
            .expect("JSON"),
        })
        .collect()
}

/// The answer, by definition, from the events themselves.
pub fn reference(events: &[Event]) -> Answer {
    let mut counts = BTreeMap::new();
    let mut times: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in events {
        *counts.entry(e.name.clone()).or_default() += 1;
        times.entry(&e.user).or_default().push(e.time);
    }
    let (mut session_count, mut session_duration_sum_ms) = (0, 0);
    for times in times.values_mut() {
        times.sort_unstable();
        let mut start = times[0];
        for pair in times.windows(2) {
            if pair[1] - pair[0] > GAP_MS {
                session_count += 1;
                session_duration_sum_ms += pair[0] - start;
                start = pair[1];
            }
        }
        session_count += 1;
        session_duration_sum_ms += times[times.len() - 1] - start;
    }
    Answer {
        counts,
        session_count,
        session_duration_sum_ms,
    }
}

/// A peer's timed run: its own measure of processing time, and its answer.
pub struct Run {
    pub seconds: f64,
    pub answer: Answer,
}

#[derive(Debug, Clone, Copy)]
pub enum Peer {
    QuixStreams,
    Bytewax,
}

impl Peer {
    /// The PyPI distribution.
    pub fn package(self) -> &'static str {
        match self {
            Peer::QuixStreams => "quixstreams",
            Peer::Bytewax => "bytewax",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Peer::QuixStreams => "Quix Streams",
            Peer::Bytewax => "Bytewax",
        }
    }

    fn script(self) -> PathBuf {
        let file = match self {
            Peer::QuixStreams => "quix_pipeline.py",
            Peer::Bytewax => "bytewax_pipeline.py",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("peers")
            .join(file)
    }

    /// The installed version, or why the peer cannot run (with how to
    /// install it).
    pub fn version(self) -> Result<String, String> {
        let program = format!(
            "import {0}, importlib.metadata as m; print(m.version('{0}'))",
            self.package()
        );
        let install =
            "install the peers with `python3 -m pip install -r tests/peers/requirements.txt`";
        let out = Command::new("python3")
            .args(["-c", &program])
            .output()
            .map_err(|e| format!("cannot run python3 ({e}); {install}"))?;
        if !out.status.success() {
            return Err(format!(
                "python3 cannot import {} ({}); {install}",
                self.package(),
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs the peer's pipeline over `topic` (holding `messages` messages)
    /// in a fresh consumer group, until it has processed them all.
    pub fn run(self, brokers: &str, topic: &str, messages: usize) -> Run {
        let child = Command::new("python3")
            .arg(self.script())
            .args([brokers, topic, &messages.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 for {}: {e}", self.name()));
        let pid = child.id();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output()));
        let out = match finished.recv_timeout(RUN_DEADLINE) {
            Ok(out) => out.unwrap_or_else(|e| panic!("{}: {e}", self.name())),
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("{} did not finish within {RUN_DEADLINE:?}", self.name());
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}\n{stdout}",
            self.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().last().unwrap_or_default();
        let answer: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{} printed no JSON line ({e}): {stdout}", self.name()));
        Run {
            seconds: answer["seconds"].as_f64().expect("seconds"),
            answer: Answer {
                counts: serde_json::from_value(answer["counts"].clone()).expect("counts"),
                session_count: answer["session_count"].as_u64().expect("session_count"),
                session_duration_sum_ms: answer["session_duration_sum_ms"]
                    .as_i64()
                    .expect("session_duration_sum_ms"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, name: &str, time: i64) -> Event {
        Event {
            id: String::new(),
            time,
            user: user.into(),
            name: name.into(),
            session: String::new(),
            path: String::new(),
            device: String::new(),
            browser: String::new(),
            os: String::new(),
            props: Vec::new(),
        }
    }

    #[test]
    fn sessions_split_only_beyond_the_gap() {
        let events = [
            event("a", "page_view", 0),
            event("a", "click", GAP_MS), // exactly the gap: same session
            event("a", "page_view", 2 * GAP_MS + 1), // more: a new one
            event("b", "page_view", 5),
        ];
        let answer = reference(&events);
        assert_eq!(answer.session_count, 3);
        assert_eq!(answer.session_duration_sum_ms, GAP_MS);
        assert_eq!(answer.counts["page_view"], 3);
    }
}
