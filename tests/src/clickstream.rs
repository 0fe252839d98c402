//! A generated clickstream with known ground truth.
//!
//! Users have a fixed client (device, user agent) and one to three sessions
//! separated by more than the 30-minute gap (sometimes by exactly one second
//! more); within a session events are seconds to minutes apart, a few share
//! a time, and funnel steps drop off. Every event is encoded in one of the
//! input shapes weft accepts out of the box, and its ground truth is the
//! [`Event`] normalization must make of that message. Delivery adds bounded
//! disorder, duplicate deliveries and malformed messages.

use std::{collections::BTreeMap, path::Path};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Map, Value, json};
pub use weft_normalize::Event;

/// A message to deliver, keyed by user.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub key: String,
    pub payload: Vec<u8>,
}

/// Why a malformed message must be rejected.
pub const MALFORMED_REASONS: [&str; 5] = [
    "not_json",
    "not_object",
    "missing_user",
    "missing_event",
    "bad_time",
];

pub struct Stream {
    /// Accepted events, in event-time order: what normalization must make of
    /// the messages (before the sessionizer sets `session`).
    pub events: Vec<Event>,
    pub deliveries: Vec<Delivery>,
    pub duplicates: u64,
    /// Rejected messages by reason.
    pub malformed: BTreeMap<String, u64>,
    /// Each delivery's event time (none for a malformed one).
    times: Vec<Option<i64>>,
}

impl Stream {
    /// The first index from `near` on where the deliveries are in event-time
    /// order: every event before it is older than every event from it on
    /// (so none of a duplicated pair is on each side). A stream produced in
    /// slices cut there loses nothing to a pause between them: a host that
    /// has been quiet for `idle_ms` releases all it buffered, and an event
    /// older than those is late.
    pub fn in_order_cut(&self, near: usize) -> usize {
        let mut newest_after = vec![i64::MAX; self.times.len() + 1];
        for (i, t) in self.times.iter().enumerate().rev() {
            newest_after[i] = newest_after[i + 1].min(t.unwrap_or(i64::MAX));
        }
        let mut newest_before = i64::MIN;
        for (i, t) in self.times.iter().enumerate() {
            if i >= near && newest_before < newest_after[i] {
                return i;
            }
            newest_before = newest_before.max(t.unwrap_or(i64::MIN));
        }
        self.times.len()
    }

    /// Writes the deliveries, in order, to `dir/events.jsonl`; returns the
    /// `--source` of it, `file:PATH`.
    pub fn write_file(&self, dir: &Path) -> String {
        let path = dir.join("events.jsonl");
        let mut lines = Vec::new();
        for d in &self.deliveries {
            lines.extend_from_slice(&d.payload);
            lines.push(b'\n');
        }
        std::fs::write(&path, lines).expect("write the events file");
        format!("file:{}", path.display())
    }
}

/// A user agent and what its enrichment must give (checked by weft-normalize's tests).
struct Agent {
    user_agent: &'static str,
    browser: &'static str,
    os: &'static str,
    device: &'static str,
}

const AGENTS: [Agent; 3] = [
    Agent {
        user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        browser: "Chrome",
        os: "Windows 10",
        device: "desktop",
    },
    Agent {
        user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        browser: "Safari",
        os: "iPhone",
        device: "mobile",
    },
    Agent {
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        browser: "Firefox",
        os: "Linux",
        device: "desktop",
    },
];

/// What a user's client sends besides the event itself.
struct Client {
    /// An explicit platform, which wins over the agent's device class.
    platform: Option<&'static str>,
    agent: Option<&'static Agent>,
}

/// How a shape writes the event time.
#[derive(Clone, Copy)]
enum TimeFormat {
    EpochMs,
    EpochSecs,
    Rfc3339,
    /// `YYYY-MM-DD HH:MM:SS.mmm`, read as UTC.
    Naive,
}

impl TimeFormat {
    fn encode(self, ms: i64) -> Value {
        let utc = chrono::DateTime::from_timestamp_millis(ms).expect("a valid time");
        match self {
            TimeFormat::EpochMs => json!(ms),
            TimeFormat::EpochSecs => json!(ms / 1000),
            TimeFormat::Rfc3339 => json!(utc.to_rfc3339()),
            TimeFormat::Naive => json!(utc.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
        }
    }
}

/// One input shape: where each field goes (dotted keys nest under
/// objects), plus what else the message carries.
struct Shape {
    time: &'static str,
    time_format: TimeFormat,
    user: &'static str,
    /// The user id as a JSON number (the ids are numeric).
    user_as_number: bool,
    name: &'static str,
    path: &'static str,
    platform: &'static str,
    /// A `session_id` from the input, "" for none.
    session: &'static str,
    /// Top-level keys weft does not consume: they become props.
    extra: &'static [(&'static str, &'static str)],
    /// Entries of a `properties` object weft does not consume: props too.
    properties: &'static [(&'static str, &'static str)],
}

/// Segment-like: `ts`, a session id, an IP and properties.
const TRACK: Shape = Shape {
    time: "ts",
    time_format: TimeFormat::EpochMs,
    user: "user_id",
    user_as_number: false,
    name: "event",
    path: "path",
    platform: "platform",
    session: "ignored",
    extra: &[("ip", "10.0.0.1")],
    properties: &[("referrer", "https://example.com")],
};

const SHAPES: [Shape; 6] = [
    TRACK,
    Shape {
        time_format: TimeFormat::Rfc3339,
        ..TRACK
    },
    Shape {
        time: "timestamp",
        path: "properties.page",
        session: "",
        extra: &[],
        properties: &[("plan", "free")],
        ..TRACK
    },
    Shape {
        time: "timestamp",
        time_format: TimeFormat::EpochSecs,
        user_as_number: true,
        name: "action",
        session: "",
        extra: &[("ip", "10.0.0.2")],
        properties: &[],
        ..TRACK
    },
    Shape {
        time: "event_timestamp",
        time_format: TimeFormat::Naive,
        user: "user",
        path: "page",
        session: "",
        extra: &[],
        properties: &[],
        ..TRACK
    },
    Shape {
        time: "event_time",
        user: "person_code",
        platform: "event_platform",
        session: "s",
        extra: &[],
        properties: &[],
        ..TRACK
    },
];

impl Shape {
    /// The props normalization leaves: the unconsumed top-level keys and
    /// `properties` entries (a top-level key wins), sorted by key.
    fn props(&self) -> Vec<(String, String)> {
        let mut props = BTreeMap::new();
        for &(k, v) in self.properties.iter().chain(self.extra) {
            props.insert(k.to_owned(), v.to_owned());
        }
        props.into_iter().collect()
    }

    fn encode(&self, e: &Event, client: &Client) -> Vec<u8> {
        let mut o = Map::new();
        let user = if self.user_as_number {
            json!(e.user.parse::<u64>().expect("numeric user ids"))
        } else {
            json!(e.user)
        };
        insert(&mut o, "event_id", json!(e.id));
        insert(&mut o, self.time, self.time_format.encode(e.time));
        insert(&mut o, self.user, user);
        insert(&mut o, self.name, json!(e.name));
        if !e.path.is_empty() {
            insert(&mut o, self.path, json!(e.path));
        }
        if let Some(platform) = client.platform {
            insert(&mut o, self.platform, json!(platform));
        }
        if let Some(agent) = client.agent {
            insert(&mut o, "user_agent", json!(agent.user_agent));
        }
        if !self.session.is_empty() {
            insert(&mut o, "session_id", json!(self.session));
        }
        for &(k, v) in self.extra {
            insert(&mut o, k, json!(v));
        }
        for &(k, v) in self.properties {
            insert(&mut o, &format!("properties.{k}"), json!(v));
        }
        serde_json::to_vec(&o).expect("JSON")
    }
}

/// Sets `value` at a dotted key, creating the objects on the way.
fn insert(o: &mut Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            o.insert(key.to_owned(), value);
        }
        Some((parent, rest)) => {
            let child = o.entry(parent).or_insert_with(|| json!({}));
            insert(child.as_object_mut().expect("an object"), rest, value);
        }
    }
}

const PATHS: [&str; 8] = [
    "/",
    "/products",
    "/products/1",
    "/products/2",
    "/products/3",
    "/blog/a",
    "/blog/b",
    "/about",
];
const FUNNEL: [&str; 4] = ["page_view", "add_to_cart", "checkout", "purchase"];
const OTHER: [&str; 3] = ["click", "search", "scroll"];

/// 2026-01-01T00:00:00Z.
pub const START_MS: i64 = 1_767_225_600_000;

/// The accepted events of `users` users, in event-time order, each with the
/// message that carries it.
fn messages(seed: u64, users: usize) -> Vec<(Event, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<(Event, Vec<u8>)> = Vec::new();
    for u in 0..users {
        let user = format!("{}", 1000 + u);
        // Every third user reports its platform; half of those send no agent.
        let platform = (u % 3 == 0).then_some(if u % 2 == 0 { "ios" } else { "android" });
        let client = Client {
            platform,
            agent: (u % 6 != 0).then_some(&AGENTS[u % AGENTS.len()]),
        };
        let mut push = |rng: &mut StdRng, time: i64, name: &str, path: &str| {
            let shape = SHAPES.choose(rng).expect("shapes");
            let agent = |field: fn(&Agent) -> &'static str| client.agent.map_or("", field);
            let event = Event {
                id: format!("e{}", out.len()),
                time,
                user: user.clone(),
                name: name.to_owned(),
                session: shape.session.to_owned(),
                path: path.to_owned(),
                device: client.platform.unwrap_or(agent(|a| a.device)).to_owned(),
                browser: agent(|a| a.browser).to_owned(),
                os: agent(|a| a.os).to_owned(),
                props: shape.props(),
            };
            let payload = shape.encode(&event, &client);
            out.push((event, payload));
        };
        let mut t = START_MS + 1000 * rng.random_range(0..3600);
        for _session in 0..rng.random_range(1..=3) {
            let steps = rng.random_range(1..=12);
            let mut funnel_at = 0;
            for _ in 0..steps {
                let name = if rng.random_bool(0.5) && funnel_at < FUNNEL.len() {
                    funnel_at += 1;
                    FUNNEL[funnel_at - 1]
                } else if rng.random_bool(0.6) {
                    "page_view"
                } else {
                    OTHER.choose(&mut rng).copied().unwrap_or("click")
                };
                // Some events carry no path (their device still counts).
                let path = if name == "scroll" {
                    ""
                } else {
                    PATHS.choose(&mut rng).copied().unwrap_or("/")
                };
                push(&mut rng, t, name, path);
                // Sometimes a scroll at the same time: no path and no funnel
                // step, so no answer depends on the order of the two.
                if rng.random_bool(0.1) {
                    push(&mut rng, t, "scroll", "");
                }
                // Whole seconds, so the epoch-seconds shape can carry them.
                t += 1000 * rng.random_range(1..=600);
            }
            // Next session after more than the 30-minute gap (sometimes exactly at it + 1 s).
            t += if rng.random_bool(0.1) {
                1_800_000 + 1000
            } else {
                1000 * rng.random_range(1801..=20_000)
            };
        }
    }
    // Stable: events sharing a time and a user keep their order.
    out.sort_by(|(a, _), (b, _)| (a.time, &a.user).cmp(&(b.time, &b.user)));
    out
}

/// The accepted events of [`generate`]`(seed, users, _)`, without delivering them.
pub fn events(seed: u64, users: usize) -> Vec<Event> {
    messages(seed, users).into_iter().map(|(e, _)| e).collect()
}

pub fn generate(seed: u64, users: usize, lateness_ms: i64) -> Stream {
    let messages = messages(seed, users);
    // Delivery draws from its own stream, so `events` needs no lateness.
    let mut rng = StdRng::seed_from_u64(!seed);

    // Deliver in a disorder bounded by the lateness.
    let mut deliveries: Vec<(i64, Delivery)> = messages
        .iter()
        .map(|(e, payload)| {
            let jitter = rng.random_range(0..lateness_ms.max(1) - 500);
            let delivery = Delivery {
                key: e.user.clone(),
                payload: payload.clone(),
            };
            (e.time + jitter, delivery)
        })
        .collect();
    deliveries.sort_by_key(|(t, _)| *t);
    let times: BTreeMap<&[u8], i64> = messages
        .iter()
        .map(|(e, payload)| (payload.as_slice(), e.time))
        .collect();
    let mut out: Vec<Delivery> = Vec::with_capacity(deliveries.len() * 11 / 10);
    let mut out_times = Vec::with_capacity(out.capacity());
    let mut duplicates = 0;
    let mut malformed = BTreeMap::new();
    for (i, (_, d)) in deliveries.into_iter().enumerate() {
        let time = times.get(d.payload.as_slice()).copied();
        out.push(d.clone());
        out_times.push(time);
        if rng.random_bool(0.03) {
            duplicates += 1;
            out.push(d);
            out_times.push(time);
        }
        if i % 50 == 7 {
            let reason = MALFORMED_REASONS[(i / 50) % MALFORMED_REASONS.len()];
            *malformed.entry(reason.to_string()).or_insert(0) += 1;
            out_times.push(None);
            out.push(Delivery {
                key: format!("bad{i}"),
                payload: malformed_payload(reason, i).into_bytes(),
            });
        }
    }
    Stream {
        events: messages.into_iter().map(|(e, _)| e).collect(),
        deliveries: out,
        duplicates,
        malformed,
        times: out_times,
    }
}

fn malformed_payload(reason: &str, i: usize) -> String {
    match reason {
        "not_json" => format!("{{\"event\": \"page_view\", broken {i}"),
        "not_object" => format!("[{i}, 2, 3]"),
        "missing_user" => {
            format!("{{\"event_id\":\"m{i}\",\"event\":\"page_view\",\"ts\":{START_MS}}}")
        }
        "missing_event" => format!("{{\"event_id\":\"m{i}\",\"user_id\":\"x\",\"ts\":{START_MS}}}"),
        _ => format!(
            "{{\"event_id\":\"m{i}\",\"user_id\":\"x\",\"event\":\"e\",\"ts\":\"yesterday\"}}"
        ),
    }
}
