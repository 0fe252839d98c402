//! A generated clickstream with known ground truth.
//!
//! Users have a fixed device and user agent and several sessions separated
//! by more than the 30-minute gap; within a session events are seconds to
//! minutes apart, with funnel steps that drop off. Every event is encoded in
//! one of the five accepted input shapes. Delivery adds bounded disorder,
//! duplicate deliveries and malformed messages.

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::json;

/// What weft should make of an accepted event (the ground truth).
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub id: String,
    pub time: i64,
    pub user: String,
    pub name: String,
    pub path: String,
    pub device: String,
    pub browser: String,
}

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
    /// Accepted events, in event-time order.
    pub events: Vec<Truth>,
    pub deliveries: Vec<Delivery>,
    pub duplicates: u64,
    /// Rejected messages by reason.
    pub malformed: std::collections::BTreeMap<String, u64>,
}

/// User agents whose enrichment is known (checked by weft-normalize's tests).
const AGENTS: [(&str, &str, &str); 3] = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Chrome",
        "desktop",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "Safari",
        "mobile",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        "Firefox",
        "desktop",
    ),
];

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

pub fn generate(seed: u64, users: usize, lateness_ms: i64) -> Stream {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    for u in 0..users {
        let user = format!("{}", 1000 + u);
        let (_, browser, ua_device) = AGENTS[u % AGENTS.len()];
        // Every third user reports its platform, which wins over the agent.
        let platform = (u % 3 == 0).then_some(if u % 2 == 0 { "ios" } else { "android" });
        let device = platform.unwrap_or(ua_device).to_string();
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
                events.push(Truth {
                    id: format!("e{}", events.len()),
                    time: t,
                    user: user.clone(),
                    name: name.to_string(),
                    path: path.to_string(),
                    device: device.clone(),
                    browser: if platform.is_some() && u % 2 == 0 {
                        String::new()
                    } else {
                        browser.to_string()
                    },
                });
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
    events.sort_by(|a, b| (a.time, &a.user).cmp(&(b.time, &b.user)));

    // Encode, then deliver in a disorder bounded by the lateness.
    let mut deliveries: Vec<(i64, Delivery)> = events
        .iter()
        .map(|e| {
            let jitter = rng.random_range(0..lateness_ms.max(1) - 500);
            (
                e.time + jitter,
                Delivery {
                    key: e.user.clone(),
                    payload: encode(e, &mut rng, &AGENTS),
                },
            )
        })
        .collect();
    deliveries.sort_by_key(|(t, _)| *t);
    let mut out: Vec<Delivery> = Vec::with_capacity(deliveries.len() * 11 / 10);
    let mut duplicates = 0;
    let mut malformed = std::collections::BTreeMap::new();
    for (i, (_, d)) in deliveries.into_iter().enumerate() {
        out.push(d.clone());
        if rng.random_bool(0.03) {
            duplicates += 1;
            out.push(d);
        }
        if i % 50 == 7 {
            let reason = MALFORMED_REASONS[(i / 50) % MALFORMED_REASONS.len()];
            *malformed.entry(reason.to_string()).or_insert(0) += 1;
            out.push(Delivery {
                key: format!("bad{i}"),
                payload: malformed_payload(reason, i).into_bytes(),
            });
        }
    }
    Stream {
        events,
        deliveries: out,
        duplicates,
        malformed,
    }
}

fn encode(e: &Truth, rng: &mut StdRng, agents: &[(&str, &str, &str)]) -> Vec<u8> {
    let agent = agents
        .iter()
        .find(|(_, b, _)| *b == e.browser)
        .map(|(a, _, _)| *a);
    let platform = matches!(e.device.as_str(), "ios" | "android").then_some(e.device.as_str());
    let path = (!e.path.is_empty()).then_some(e.path.as_str());
    let secs = e.time / 1000;
    let naive = chrono::DateTime::from_timestamp_millis(e.time)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let rfc3339 = chrono::DateTime::from_timestamp_millis(e.time)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    // Shapes without a user agent field can only carry users that need none.
    let shape = if agent.is_some() {
        rng.random_range(1..=5)
    } else {
        1
    };
    let mut v = match shape {
        1 => json!({
            "event_id": e.id, "ts": if rng.random_bool(0.5) { json!(e.time) } else { json!(rfc3339) },
            "user_id": e.user, "event": e.name, "ip": "10.0.0.1", "session_id": "ignored",
            "properties": { "referrer": "https://example.com" }
        }),
        2 => json!({
            "event_id": e.id, "event": e.name, "timestamp": e.time, "user_id": e.user,
            "properties": { "plan": "free" }
        }),
        3 => json!({
            "event_id": e.id, "user_id": e.user.parse::<u64>().unwrap_or_default(), "action": e.name,
            "timestamp": secs, "ip": "10.0.0.2"
        }),
        4 => json!({ "event_id": e.id, "event_timestamp": naive, "user": e.user, "event": e.name }),
        _ => json!({
            "event_id": e.id, "person_code": e.user, "session_id": "s", "event_time": e.time, "event": e.name
        }),
    };
    let o = v.as_object_mut().expect("an object");
    if let Some(path) = path {
        match shape {
            2 => {
                o["properties"]["page"] = json!(path);
            }
            4 => {
                o.insert("page".into(), json!(path));
            }
            _ => {
                o.insert("path".into(), json!(path));
            }
        }
    }
    if let Some(agent) = agent {
        o.insert("user_agent".into(), json!(agent));
    }
    if let Some(p) = platform {
        o.insert(
            if shape == 5 {
                "event_platform"
            } else {
                "platform"
            }
            .into(),
            json!(p),
        );
    }
    serde_json::to_vec(&v).expect("JSON")
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
