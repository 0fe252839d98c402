//! A plain reference implementation of the bundled plugins' answers,
//! written from their definitions (the docs of `plugins/sessionizer`,
//! `plugins/core` and `plugins/funnel`) and sharing no code with them.
//!
//! Sessions are always worked out here from users and times: an event's own
//! `session` is ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use weft_normalize::Event;

/// The sessionizer's (and the metrics') default gap: 30 minutes.
pub const GAP_MS: i64 = 30 * 60 * 1000;
/// `core`'s default bucket resolution: 1 minute.
pub const BUCKET_MS: i64 = 60_000;
/// The funnel plugin's default steps.
pub const FUNNEL: [&str; 4] = ["page_view", "add_to_cart", "checkout", "purchase"];

/// Session ids by definition: a user's events in time order (events sharing
/// a time in the order given) split wherever two consecutive ones are more
/// than `gap` apart; a session's id is `USER:START_MS`, START_MS its first
/// event's time. One id per event, in the order of `events`.
pub fn session_ids(events: &[Event], gap: i64) -> Vec<String> {
    let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        by_user.entry(&e.user).or_default().push(i);
    }
    let mut ids = vec![String::new(); events.len()];
    for (user, mut indices) in by_user {
        indices.sort_by_key(|&i| events[i].time);
        let mut start = events[indices[0]].time;
        let mut last = start;
        for i in indices {
            let time = events[i].time;
            if time - last > gap {
                start = time;
            }
            last = time;
            ids[i] = format!("{user}:{start}");
        }
    }
    ids
}

/// Copies of `events` carrying the reference session ids: what the
/// sessionizer must make of them.
pub fn with_sessions(events: &[Event], gap: i64) -> Vec<Event> {
    events
        .iter()
        .zip(session_ids(events, gap))
        .map(|(e, session)| Event {
            session,
            ..e.clone()
        })
        .collect()
}

/// The sessions of the default gap, each its events in time order.
fn sessions(events: &[Event]) -> Vec<Vec<&Event>> {
    let ids = session_ids(events, GAP_MS);
    let mut in_time_order: Vec<usize> = (0..events.len()).collect();
    in_time_order.sort_by_key(|&i| events[i].time);
    let mut sessions: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for i in in_time_order {
        sessions.entry(&ids[i]).or_default().push(&events[i]);
    }
    sessions.into_values().collect()
}

/// Non-empty values and how often each occurs.
fn count<'a>(values: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, u64> {
    let mut counts = BTreeMap::new();
    for v in values.filter(|v| !v.is_empty()) {
        *counts.entry(v).or_default() += 1;
    }
    counts
}

/// `core`'s report over the events whose time `counts`, and the whole
/// sessions whose first event's time does.
fn core_report(events: &[Event], counts: impl Fn(i64) -> bool) -> Value {
    let events_in: Vec<&Event> = events.iter().filter(|e| counts(e.time)).collect();
    let sessions_in: Vec<Vec<&Event>> = sessions(events)
        .into_iter()
        .filter(|s| counts(s[0].time))
        .collect();
    let n = sessions_in.len();
    let average = |sum: f64| if n == 0 { 0.0 } else { sum / n as f64 };
    let duration: i64 = sessions_in
        .iter()
        .map(|s| s[s.len() - 1].time - s[0].time)
        .sum();
    let page_views = |s: &Vec<&Event>| s.iter().filter(|e| e.name == "page_view").count() as u64;
    let depth: u64 = sessions_in.iter().map(page_views).sum();
    /// A session's non-empty paths, in time order.
    fn paths<'a>(s: &[&'a Event]) -> Vec<&'a str> {
        s.iter()
            .map(|e| e.path.as_str())
            .filter(|p| !p.is_empty())
            .collect()
    }
    let users: BTreeSet<&str> = events_in.iter().map(|e| e.user.as_str()).collect();
    json!({
        "active_users": users.len(),
        "session_count": n,
        "total_events": events_in.len(),
        "avg_session_duration_ms": average(duration as f64),
        "avg_session_depth": average(depth as f64),
        "device_distribution": count(events_in.iter().map(|e| e.device.as_str())),
        "browser_distribution": count(events_in.iter().map(|e| e.browser.as_str())),
        "popular_paths": count(events_in.iter().filter(|e| e.name == "page_view").map(|e| e.path.as_str())),
        "entry_pages": count(sessions_in.iter().filter_map(|s| paths(s).first().copied())),
        "exit_pages": count(sessions_in.iter().filter_map(|s| paths(s).last().copied())),
    })
}

/// The start of the bucket holding `time`.
pub fn bucket(time: i64) -> i64 {
    time.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// `core`'s all-time answer.
pub fn core(events: &[Event]) -> Value {
    core_report(events, |_| true)
}

/// `core`'s answer to `from` (and `to`, if given): the whole buckets from
/// the one holding `from` to the last one starting before `to`.
pub fn core_range(events: &[Event], from: i64, to: Option<i64>) -> Value {
    let mut report = core_report(events, |t| {
        bucket(t) >= bucket(from) && to.is_none_or(|to| bucket(t) < to)
    });
    report["from"] = from.into();
    report["to"] = to.into();
    report
}

/// `core`'s answer to `bucket=1m`: one point per bucket from the oldest
/// event's to the newest's.
pub fn core_series(events: &[Event]) -> Value {
    let (Some(oldest), Some(newest)) = (
        events.iter().map(|e| e.time).min(),
        events.iter().map(|e| e.time).max(),
    ) else {
        return json!({ "bucket_ms": BUCKET_MS, "series": [] });
    };
    let series: Vec<Value> = (bucket(oldest)..=bucket(newest))
        .step_by(BUCKET_MS as usize)
        .map(|t| {
            let mut point = core_report(events, |time| bucket(time) == t);
            point["t"] = t.into();
            point
        })
        .collect();
    json!({ "bucket_ms": BUCKET_MS, "series": series })
}

/// `event_counts`' answer.
pub fn event_counts(events: &[Event]) -> Value {
    json!({ "counts": count(events.iter().map(|e| e.name.as_str())) })
}

/// `funnel`'s answer for the default steps: a session reaches step k when
/// its event names contain steps 1..=k as a subsequence (in order, not
/// necessarily adjacent).
pub fn funnel(events: &[Event]) -> Value {
    let names: Vec<Vec<&str>> = sessions(events)
        .iter()
        .map(|s| s.iter().map(|e| e.name.as_str()).collect())
        .collect();
    let is_subsequence = |steps: &[&str], names: &[&str]| {
        let mut rest = names.iter();
        steps.iter().all(|step| rest.any(|n| n == step))
    };
    let reached: Vec<u64> = (1..=FUNNEL.len())
        .map(|k| {
            names
                .iter()
                .filter(|n| is_subsequence(&FUNNEL[..k], n))
                .count() as u64
        })
        .collect();
    let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let steps: Vec<Value> = FUNNEL
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "name": name,
                "sessions": reached[i],
                "conversion_from_first": ratio(reached[i], reached[0]),
                "conversion_from_previous": ratio(reached[i], reached[i.saturating_sub(1)]),
            })
        })
        .collect();
    json!({ "steps": steps })
}
