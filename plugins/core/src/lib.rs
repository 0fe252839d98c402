//! `core` (metric): the seed pipeline's metrics.
//!
//! - `active_users`: distinct users;
//! - `session_count`, `total_events`;
//! - `avg_session_duration_ms`: last − first event time per session, averaged;
//! - `avg_session_depth`: page_view events per session, averaged;
//! - `device_distribution`, `browser_distribution`: events per value;
//! - `popular_paths`: page_view events per path;
//! - `entry_pages` / `exit_pages`: sessions per path of their first / last
//!   event that has a path.
//!
//! Queries: all time (no parameters); `from` / `to` (epoch ms or RFC 3339;
//! half-open); `window=5m` (ending at the newest event time); `bucket=1m`
//! (a time series). Ranges resolve to whole buckets of `resolution_ms`
//! (default 1 min): an event counts in the bucket of its time, a session in
//! the bucket of its first event.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use weft_plugin::{Batch, Cell, Config, Error, Map, Metric, Query, Result, serde_json};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    resolution_ms: i64,
    /// Must be at least the sessionizer's gap: a session idle this long is closed.
    gap_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resolution_ms: 60_000,
            gap_ms: 30 * 60 * 1000,
        }
    }
}

/// Counts over a span of event time (all time, or one bucket).
#[derive(Serialize, Deserialize, Default, Clone)]
struct Agg {
    events: u64,
    sessions: u64,
    duration_sum: i64,
    depth_sum: u64,
    devices: BTreeMap<String, u64>,
    browsers: BTreeMap<String, u64>,
    paths: BTreeMap<String, u64>,
    entry: BTreeMap<String, u64>,
    exit: BTreeMap<String, u64>,
    /// Distinct users: kept per bucket; all time counts `users` instead.
    users: BTreeSet<String>,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, by: i64) {
    if key.is_empty() {
        return;
    }
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            map.remove(key);
        }
    } else if by > 0 {
        map.insert(key.to_owned(), by as u64);
    }
}

impl Agg {
    fn merge(&mut self, other: &Agg) {
        self.events += other.events;
        self.sessions += other.sessions;
        self.duration_sum += other.duration_sum;
        self.depth_sum += other.depth_sum;
        for (mine, theirs) in [
            (&mut self.devices, &other.devices),
            (&mut self.browsers, &other.browsers),
            (&mut self.paths, &other.paths),
            (&mut self.entry, &other.entry),
            (&mut self.exit, &other.exit),
        ] {
            for (k, n) in theirs {
                *mine.entry(k.clone()).or_default() += n;
            }
        }
        self.users.extend(other.users.iter().cloned());
    }

    fn report(&self, active_users: u64) -> serde_json::Value {
        #[cfg_attr(not(feature = "sessions-per-user"), allow(unused_mut))]
        let mut report = self.fields(active_users);
        #[cfg(feature = "sessions-per-user")]
        {
            report["sessions_per_user"] = if active_users == 0 {
                0.0
            } else {
                self.sessions as f64 / active_users as f64
            }
            .into();
        }
        report
    }

    fn fields(&self, active_users: u64) -> serde_json::Value {
        let avg = |sum: f64| {
            if self.sessions == 0 {
                0.0
            } else {
                sum / self.sessions as f64
            }
        };
        serde_json::json!({
            "active_users": active_users,
            "session_count": self.sessions,
            "total_events": self.events,
            "avg_session_duration_ms": avg(self.duration_sum as f64),
            "avg_session_depth": avg(self.depth_sum as f64),
            "device_distribution": self.devices,
            "browser_distribution": self.browsers,
            "popular_paths": self.paths,
            "entry_pages": self.entry,
            "exit_pages": self.exit,
        })
    }
}

/// An open session.
#[derive(Serialize, Deserialize, Clone)]
struct Session {
    start: i64,
    end: i64,
    entry: String,
    exit: String,
}

/// How one event changes the aggregates, applied to all time and to buckets.
struct Change<'a> {
    event: &'a weft_plugin::EventRef<'a>,
    new_session: bool,
    duration: i64,
    page_view: bool,
    entry: Option<&'a str>,
    exit: Option<(&'a str, &'a str)>,
}

impl Change<'_> {
    fn session_part(&self, agg: &mut Agg) {
        agg.sessions += u64::from(self.new_session);
        agg.duration_sum += self.duration;
        agg.depth_sum += u64::from(self.page_view);
        if let Some(entry) = self.entry {
            bump(&mut agg.entry, entry, 1);
        }
        if let Some((old, new)) = self.exit {
            bump(&mut agg.exit, old, -1);
            bump(&mut agg.exit, new, 1);
        }
    }

    fn event_part(&self, agg: &mut Agg) {
        let e = self.event;
        agg.events += 1;
        bump(&mut agg.devices, e.device(), 1);
        bump(&mut agg.browsers, e.browser(), 1);
        if self.page_view {
            bump(&mut agg.paths, e.path(), 1);
        }
    }
}

struct Core {
    resolution: i64,
    gap: i64,
    total: Cell<Agg>,
    active_users: Cell<u64>,
    users: Map<()>,
    sessions: Map<Session>,
    /// Aggregates per bucket, keyed by the bucket's start (ms).
    buckets: Map<Agg>,
    bucket_starts: Cell<BTreeSet<i64>>,
    newest: Cell<i64>,
}

impl Core {
    fn bucket(&self, time: i64) -> i64 {
        time.div_euclid(self.resolution) * self.resolution
    }

    fn with_bucket(&self, start: i64, f: impl FnOnce(&mut Agg)) {
        self.buckets.with(
            &start.to_string(),
            |b| f(b.get_or_insert_with(Agg::default)),
        );
        self.bucket_starts.update(|s| s.insert(start));
    }

    /// Merged aggregates of the buckets starting in `[from, to)`.
    fn range(&self, from: i64, to: i64) -> Agg {
        let starts: Vec<i64> = self
            .bucket_starts
            .read(|s| s.range(self.bucket(from)..to).copied().collect());
        let mut agg = Agg::default();
        for start in starts {
            if let Some(b) = self.buckets.get(&start.to_string()) {
                agg.merge(&b);
            }
        }
        agg
    }
}

impl Metric for Core {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.get()?;
        if settings.resolution_ms <= 0 {
            return Err("resolution_ms must be positive".into());
        }
        Ok(Core {
            resolution: settings.resolution_ms,
            gap: settings.gap_ms,
            total: Cell::new("total"),
            active_users: Cell::new("active_users"),
            users: Map::new("users"),
            sessions: Map::new("sessions"),
            buckets: Map::new("buckets"),
            bucket_starts: Cell::new("bucket_starts"),
            newest: Cell::new("newest"),
        })
    }

    fn ingest(&mut self, batch: &Batch) -> Result<()> {
        for event in batch.events() {
            let time = event.time();
            if self.users.get(event.user()).is_none() {
                self.users.insert(event.user(), ());
                self.active_users.update(|n| *n += 1);
            }
            let page_view = event.name() == "page_view";
            let path = event.path();
            let (session_start, change) = self.sessions.with(event.session(), |s| match s {
                None => {
                    *s = Some(Session {
                        start: time,
                        end: time,
                        entry: path.to_owned(),
                        exit: path.to_owned(),
                    });
                    let entry = (!path.is_empty()).then_some(path);
                    (time, (true, 0, entry, entry.map(|p| (String::new(), p))))
                }
                Some(s) => {
                    let duration = time.max(s.end) - s.end;
                    s.end = s.end.max(time);
                    let mut entry = None;
                    let mut exit = None;
                    if !path.is_empty() {
                        if s.entry.is_empty() {
                            s.entry = path.to_owned();
                            entry = Some(path);
                        }
                        if s.exit != path {
                            let old = std::mem::replace(&mut s.exit, path.to_owned());
                            exit = Some((old, path));
                        }
                    }
                    (s.start, (false, duration, entry, exit))
                }
            });
            let (new_session, duration, entry, exit) = change;
            let change = Change {
                event: &event,
                new_session,
                duration,
                page_view,
                entry,
                exit: exit.as_ref().map(|(old, new)| (old.as_ref(), *new)),
            };
            self.total.update(|t| {
                change.session_part(t);
                change.event_part(t);
            });
            let event_bucket = self.bucket(time);
            let session_bucket = self.bucket(session_start);
            self.with_bucket(event_bucket, |b| {
                change.event_part(b);
                if !b.users.contains(event.user()) {
                    b.users.insert(event.user().to_owned());
                }
            });
            self.with_bucket(session_bucket, |b| change.session_part(b));
            self.newest.update(|n| *n = (*n).max(time));
        }
        Ok(())
    }

    fn tick(&mut self, watermark: i64) -> Result<()> {
        self.sessions.retain(|_, s| watermark - s.end <= self.gap);
        Ok(())
    }

    fn query(&mut self, query: &Query) -> Result<serde_json::Value> {
        let bucket = query.get("bucket").map(parse_duration).transpose()?;
        let window = query.get("window").map(parse_duration).transpose()?;
        let from = query.get("from").map(parse_time).transpose()?;
        let to = query.get("to").map(parse_time).transpose()?;
        if window.is_some() && (from.is_some() || to.is_some()) {
            return Err("give either `window` or `from`/`to`, not both".into());
        }
        let newest = self.newest.get();
        let (from, to) = match window {
            Some(w) => (Some(newest - w), Some(newest + 1)),
            None => (from, to),
        };
        if let Some(step) = bucket {
            let step = (step / self.resolution).max(1) * self.resolution;
            let first = self.bucket_starts.read(|s| s.first().copied()).unwrap_or(0);
            let (from, to) = (from.unwrap_or(first), to.unwrap_or(newest + 1));
            let start = from.div_euclid(step) * step;
            let points = (i128::from(to) - i128::from(start)).max(0) / i128::from(step);
            if points > MAX_POINTS {
                return Err(Error(format!(
                    "`bucket` over this range gives {points} points, more than {MAX_POINTS}: use a larger bucket or a shorter range"
                )));
            }
            let mut series = Vec::new();
            let mut t = start;
            while t < to {
                let agg = self.range(t.max(from), t.saturating_add(step).min(to));
                let mut point = agg.report(agg.users.len() as u64);
                point["t"] = t.into();
                series.push(point);
                t = t.saturating_add(step);
            }
            return Ok(serde_json::json!({ "bucket_ms": step, "series": series }));
        }
        match (from, to) {
            (None, None) => Ok(self.total.read(|t| t.report(self.active_users.get()))),
            (from, to) => {
                let agg = self.range(from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
                let mut report = agg.report(agg.users.len() as u64);
                report["from"] = from.into();
                report["to"] = to.into();
                Ok(report)
            }
        }
    }
}

/// The most points one `bucket` query answers: the work (and the memory)
/// one query may ask for is bounded before it is done.
const MAX_POINTS: i128 = 10_000;

/// `90s`, `5m`, `1h`, `1d`, or plain milliseconds.
fn parse_duration(text: &str) -> Result<i64> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = digits
        .parse()
        .map_err(|_| Error(format!("`{text}` is not a duration like 5m, 1h or 30s")))?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(Error(format!(
                "`{text}` has an unknown unit (use ms, s, m, h or d)"
            )));
        }
    };
    match n.checked_mul(scale) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(Error(format!("`{text}` must be a positive duration"))),
    }
}

/// Epoch milliseconds or RFC 3339 (`2026-11-21T10:00:00Z`).
fn parse_time(text: &str) -> Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| Error(format!("`{text}` is neither epoch ms nor an RFC 3339 time")))
}

weft_plugin::export_metric!(Core);
