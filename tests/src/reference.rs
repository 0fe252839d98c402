//! A plain reference implementation of the bundled plugins' answers,
//! written from their definitions and sharing no code with them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::clickstream::Truth;

pub const GAP_MS: i64 = 30 * 60 * 1000;
pub const FUNNEL: [&str; 4] = ["page_view", "add_to_cart", "checkout", "purchase"];

/// Sessions: per user, events in time order, split where consecutive
/// events are more than the gap apart.
pub fn sessions(events: &[Truth]) -> Vec<Vec<&Truth>> {
    let mut by_user: BTreeMap<&str, Vec<&Truth>> = BTreeMap::new();
    for e in events {
        by_user.entry(&e.user).or_default().push(e);
    }
    let mut sessions = Vec::new();
    for (_, mut evs) in by_user {
        evs.sort_by_key(|e| e.time);
        let mut current: Vec<&Truth> = Vec::new();
        for e in evs {
            if current
                .last()
                .is_some_and(|last| e.time - last.time > GAP_MS)
            {
                sessions.push(std::mem::take(&mut current));
            }
            current.push(e);
        }
        sessions.push(current);
    }
    sessions
}

fn count<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for k in keys.filter(|k| !k.is_empty()) {
        *m.entry(k.to_string()).or_insert(0) += 1;
    }
    m
}

/// `core`'s all-time answer.
pub fn core(events: &[Truth]) -> Value {
    let sessions = sessions(events);
    let n = sessions.len() as f64;
    let duration: i64 = sessions
        .iter()
        .map(|s| s.last().map_or(0, |l| l.time) - s[0].time)
        .sum();
    let depth = events.iter().filter(|e| e.name == "page_view").count();
    let users: std::collections::BTreeSet<&str> = events.iter().map(|e| e.user.as_str()).collect();
    let first_path = |s: &Vec<&Truth>| {
        s.iter()
            .find(|e| !e.path.is_empty())
            .map(|e| e.path.clone())
    };
    let last_path = |s: &Vec<&Truth>| {
        s.iter()
            .rev()
            .find(|e| !e.path.is_empty())
            .map(|e| e.path.clone())
    };
    let entries: Vec<String> = sessions.iter().filter_map(first_path).collect();
    let exits: Vec<String> = sessions.iter().filter_map(last_path).collect();
    json!({
        "active_users": users.len(),
        "session_count": sessions.len(),
        "total_events": events.len(),
        "avg_session_duration_ms": if n == 0.0 { 0.0 } else { duration as f64 / n },
        "avg_session_depth": if n == 0.0 { 0.0 } else { depth as f64 / n },
        "device_distribution": count(events.iter().map(|e| e.device.as_str())),
        "browser_distribution": count(events.iter().map(|e| e.browser.as_str())),
        "popular_paths": count(events.iter().filter(|e| e.name == "page_view").map(|e| e.path.as_str())),
        "entry_pages": count(entries.iter().map(String::as_str)),
        "exit_pages": count(exits.iter().map(String::as_str)),
    })
}

/// `event_counts`' answer.
pub fn event_counts(events: &[Truth]) -> Value {
    json!({ "counts": count(events.iter().map(|e| e.name.as_str())) })
}

/// `funnel`'s answer for the default steps.
pub fn funnel(events: &[Truth]) -> Value {
    let mut reached = [0u64; FUNNEL.len()];
    for s in sessions(events) {
        let mut k = 0;
        for e in s {
            if k < FUNNEL.len() && e.name == FUNNEL[k] {
                reached[k] += 1;
                k += 1;
            }
        }
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let steps: Vec<Value> = FUNNEL
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let prev = reached[i.saturating_sub(1)];
            json!({
                "name": name,
                "sessions": reached[i],
                "conversion_from_first": ratio(reached[i], reached[0]),
                "conversion_from_previous": ratio(reached[i], prev),
            })
        })
        .collect();
    json!({ "steps": steps })
}
