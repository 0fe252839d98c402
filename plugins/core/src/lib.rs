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
//!
//! Over partitions (each a set of users): a partition's `query` answers the
//! sums its events give (a `Partial`), and `merge` adds them up and works
//! out the averages, distinct users and the series. For a window or a
//! series (whose range may depend on every partition's newest or first
//! event) a partition carries per-bucket sums, and per bucket how many users
//! were last seen there.

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

/// What adds up over a span of event time (all time, or one bucket), and
/// over partitions.
#[derive(Serialize, Deserialize, Default, Clone)]
struct Sums {
    events: u64,
    sessions: u64,
    duration_sum: i64,
    depth_sum: u64,
    devices: BTreeMap<String, u64>,
    browsers: BTreeMap<String, u64>,
    paths: BTreeMap<String, u64>,
    entry: BTreeMap<String, u64>,
    exit: BTreeMap<String, u64>,
}

/// Counts over a span of event time (all time, or one bucket). Stored with
/// postcard, which encodes the nested `Sums` as if its fields were here.
#[derive(Serialize, Deserialize, Default, Clone)]
struct Agg {
    sums: Sums,
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

impl Sums {
    fn add(&mut self, other: &Sums) {
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
    fn session_part(&self, agg: &mut Sums) {
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

    fn event_part(&self, agg: &mut Sums) {
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

/// The start of the bucket of `time` (`i64::MIN` when that is below it).
fn bucket_of(resolution: i64, time: i64) -> i64 {
    time.div_euclid(resolution).saturating_mul(resolution)
}

impl Core {
    fn bucket(&self, time: i64) -> i64 {
        bucket_of(self.resolution, time)
    }

    fn with_bucket(&self, start: i64, f: impl FnOnce(&mut Agg)) {
        self.buckets.with(
            &start.to_string(),
            |b| f(b.get_or_insert_with(Agg::default)),
        );
        self.bucket_starts.update(|s| s.insert(start));
    }

    /// The starts of the buckets in `[lo, hi)`, in order.
    fn starts(&self, lo: i64, hi: i64) -> Vec<i64> {
        if lo >= hi {
            return Vec::new();
        }
        self.bucket_starts
            .read(|s| s.range(lo..hi).copied().collect())
    }

    /// Merged aggregates of the buckets starting in `[from, to)`.
    fn range(&self, from: i64, to: i64) -> Agg {
        let mut agg = Agg::default();
        for start in self.starts(self.bucket(from), to) {
            if let Some(b) = self.buckets.get(&start.to_string()) {
                agg.sums.add(&b.sums);
                agg.users.extend(b.users);
            }
        }
        agg
    }
}

/// A query's parameters.
struct Params {
    bucket: Option<i64>,
    window: Option<i64>,
    from: Option<i64>,
    to: Option<i64>,
}

impl Params {
    fn parse(query: &Query) -> Result<Self> {
        let bucket = query.get("bucket").map(parse_duration).transpose()?;
        let window = query.get("window").map(parse_duration).transpose()?;
        let from = query.get("from").map(parse_time).transpose()?;
        let to = query.get("to").map(parse_time).transpose()?;
        if window.is_some() && (from.is_some() || to.is_some()) {
            return Err("give either `window` or `from`/`to`, not both".into());
        }
        Ok(Params {
            bucket,
            window,
            from,
            to,
        })
    }

    /// Neither a window nor a series: all time, or the range `from`/`to` give.
    fn is_plain(&self) -> bool {
        self.bucket.is_none() && self.window.is_none()
    }
}

/// A series' step: `bucket` in whole buckets, at least one.
fn step_of(resolution: i64, bucket: i64) -> i64 {
    (bucket / resolution).max(1) * resolution
}

/// The first point of a series from `from` (a multiple of `step`).
fn series_start(from: i64, step: i64) -> i64 {
    from.div_euclid(step).wrapping_mul(step)
}

/// Refuses a series of more than [`MAX_POINTS`] points.
fn check_points(from: i64, to: i64, step: i64) -> Result<()> {
    let start = series_start(from, step);
    let points = (i128::from(to) - i128::from(start)).max(0) / i128::from(step);
    if points > MAX_POINTS {
        return Err(Error(format!(
            "`bucket` over this range gives {points} points, more than {MAX_POINTS}: use a larger bucket or a shorter range"
        )));
    }
    Ok(())
}

/// A partition's answer to a query (`query`), which `merge` adds up with
/// the other partitions'.
#[derive(Serialize, Deserialize, Default)]
struct Partial {
    resolution_ms: i64,
    /// The newest event time (0 before any): a window ends at the newest of
    /// every partition.
    newest: i64,
    /// The first bucket's start, if any: a series starts at the first of
    /// every partition.
    first: Option<i64>,
    /// All time, or the range `from`/`to` give: the sums and the distinct
    /// users (users are in one partition each, so they add up).
    total: Option<(Sums, u64)>,
    /// A window or a series: the sums of every bucket it may cover (the
    /// window's start depends on every partition's newest event)…
    buckets: BTreeMap<i64, Sums>,
    /// …and per bucket how many users were last seen in it, within the
    /// series' point it is in (the window: within all of them). The distinct
    /// users of a point from bucket `b` on are those last seen from `b` on.
    last_seen: BTreeMap<i64, u64>,
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
                change.session_part(&mut t.sums);
                change.event_part(&mut t.sums);
            });
            let event_bucket = self.bucket(time);
            let session_bucket = self.bucket(session_start);
            self.with_bucket(event_bucket, |b| {
                change.event_part(&mut b.sums);
                if !b.users.contains(event.user()) {
                    b.users.insert(event.user().to_owned());
                }
            });
            self.with_bucket(session_bucket, |b| change.session_part(&mut b.sums));
            self.newest.update(|n| *n = (*n).max(time));
        }
        Ok(())
    }

    fn tick(&mut self, watermark: i64) -> Result<()> {
        self.sessions.retain(|_, s| watermark - s.end <= self.gap);
        Ok(())
    }

    fn query(&mut self, query: &Query) -> Result<serde_json::Value> {
        let params = Params::parse(query)?;
        let mut partial = Partial {
            resolution_ms: self.resolution,
            newest: self.newest.get(),
            first: self.bucket_starts.read(|s| s.first().copied()),
            ..Partial::default()
        };
        if params.is_plain() {
            partial.total = Some(match (params.from, params.to) {
                (None, None) => (self.total.get().sums, self.active_users.get()),
                (from, to) => {
                    let agg = self.range(from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
                    (agg.sums, agg.users.len() as u64)
                }
            });
            return Ok(serde_json::to_value(partial)?);
        }
        let step = params.bucket.map(|b| step_of(self.resolution, b));
        if let (Some(step), Some(from), Some(to)) = (step, params.from, params.to) {
            // The same range in every partition: refused before any work.
            check_points(from, to, step)?;
        }
        // What the answer may cover: a window ends at the newest event of
        // all partitions, at or after this one's.
        let lo = match (params.window, params.from) {
            (Some(w), _) => self.bucket(partial.newest - w),
            (None, Some(from)) => self.bucket(from),
            (None, None) => i64::MIN,
        };
        let hi = params.to.unwrap_or(i64::MAX);
        // (user, point) -> the last bucket the user was seen in, in it.
        let mut last: BTreeMap<(String, i64), i64> = BTreeMap::new();
        for start in self.starts(lo, hi) {
            let Some(b) = self.buckets.get(&start.to_string()) else {
                continue;
            };
            let point = step.map_or(0, |step| start.div_euclid(step));
            for user in b.users {
                last.insert((user, point), start);
            }
            partial.buckets.insert(start, b.sums);
        }
        for start in last.into_values() {
            *partial.last_seen.entry(start).or_default() += 1;
        }
        Ok(serde_json::to_value(partial)?)
    }

    fn merge(query: &Query, partials: Vec<serde_json::Value>) -> Result<serde_json::Value> {
        let params = Params::parse(query)?;
        let parts = partials
            .into_iter()
            .map(serde_json::from_value::<Partial>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error(format!("a partial answer of core does not fit: {e}")))?;
        let resolution = parts.first().ok_or("no partial answers")?.resolution_ms;
        if resolution <= 0 || parts.iter().any(|p| p.resolution_ms != resolution) {
            return Err("the partitions' resolution_ms differ".into());
        }
        let newest = parts.iter().map(|p| p.newest).max().unwrap_or(0);
        let first = parts.iter().filter_map(|p| p.first).min().unwrap_or(0);
        if params.is_plain() {
            let mut sums = Sums::default();
            let mut users = 0;
            for (s, n) in parts.iter().filter_map(|p| p.total.as_ref()) {
                sums.add(s);
                users += n;
            }
            let mut report = sums.report(users);
            if params.from.is_some() || params.to.is_some() {
                report["from"] = params.from.into();
                report["to"] = params.to.into();
            }
            return Ok(report);
        }
        let mut buckets: BTreeMap<i64, Sums> = BTreeMap::new();
        let mut last_seen: BTreeMap<i64, u64> = BTreeMap::new();
        for part in parts {
            for (start, s) in part.buckets {
                buckets.entry(start).or_default().add(&s);
            }
            for (start, n) in part.last_seen {
                *last_seen.entry(start).or_default() += n;
            }
        }
        // The report of the buckets starting in `[lo, hi)`.
        let report = |lo: i64, hi: i64| {
            let mut sums = Sums::default();
            let mut users = 0;
            if lo < hi {
                buckets.range(lo..hi).for_each(|(_, s)| sums.add(s));
                users = last_seen.range(lo..hi).map(|(_, n)| n).sum();
            }
            sums.report(users)
        };
        let (from, to) = match params.window {
            Some(w) => (Some(newest - w), Some(newest + 1)),
            None => (params.from, params.to),
        };
        let Some(step) = params.bucket else {
            // A window.
            let (lo, hi) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
            let mut report = report(bucket_of(resolution, lo), hi);
            report["from"] = from.into();
            report["to"] = to.into();
            return Ok(report);
        };
        let step = step_of(resolution, step);
        let (from, to) = (from.unwrap_or(first), to.unwrap_or(newest + 1));
        check_points(from, to, step)?;
        let mut series = Vec::new();
        let mut t = series_start(from, step);
        while t < to {
            let lo = bucket_of(resolution, t.max(from));
            let mut point = report(lo, t.saturating_add(step).min(to));
            point["t"] = t.into();
            series.push(point);
            t = t.saturating_add(step);
        }
        Ok(serde_json::json!({ "bucket_ms": step, "series": series }))
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

#[cfg(test)]
mod tests {
    //! `core` over partitions: for every kind of query, the merged answer
    //! over any split of the users is the answer of one instance over all
    //! the events (errors included).

    use weft_plugin::native::{TestEvent, answers, sample_events};

    /// 2026-01-01T00:00:00Z, where the sample events start.
    const START: i64 = 1_767_225_600_000;

    fn queries() -> Vec<Vec<(&'static str, String)>> {
        let ms = |t: i64| t.to_string();
        let owned = |q: &[(&'static str, &str)]| {
            q.iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect::<Vec<_>>()
        };
        let mut all = vec![
            owned(&[]),
            owned(&[("from", &ms(START + 3_600_000))]),
            owned(&[("to", &ms(START + 7_200_000))]),
            owned(&[
                ("from", "2026-01-01T00:30:00Z"),
                ("to", "2026-01-01T05:17:30Z"),
            ]),
            owned(&[
                ("from", &ms(START + 61_234)),
                ("to", &ms(START + 9_000_001)),
            ]),
            owned(&[
                ("from", &ms(START + 9_000_000)),
                ("to", &ms(START + 60_000)),
            ]),
            owned(&[("window", "5m")]),
            owned(&[("window", "90s")]),
            owned(&[("window", "1h")]),
            owned(&[("window", "3d")]),
            owned(&[("bucket", "1m")]),
            owned(&[("bucket", "7m")]),
            owned(&[("bucket", "90s")]),
            owned(&[("bucket", "1h")]),
            owned(&[("bucket", "1d")]),
            owned(&[("bucket", "5m"), ("window", "1h")]),
            owned(&[("bucket", "1m"), ("window", "7m")]),
            owned(&[("bucket", "2m"), ("window", "45s")]),
            owned(&[("bucket", "10m"), ("from", &ms(START + 1_234_567))]),
            owned(&[("bucket", "10m"), ("to", &ms(START + 20_000_000))]),
            owned(&[
                ("bucket", "3m"),
                ("from", &ms(START + 100_000)),
                ("to", &ms(START + 5_000_000)),
            ]),
            owned(&[
                ("bucket", "1h"),
                ("from", &ms(START + 9_000_000)),
                ("to", &ms(START + 60_000)),
            ]),
            // Errors: the same from one partition and from many.
            owned(&[("bucket", "1ms"), ("from", "0"), ("to", &ms(START))]),
            owned(&[("bucket", "1s"), ("from", &ms(START - 864_000_000))]),
            owned(&[("window", "abc")]),
            owned(&[("window", "5m"), ("from", "0")]),
            owned(&[("bucket", "1m"), ("to", "yesterday")]),
        ];
        all.push(owned(&[("bucket", "1m"), ("window", "1d")]));
        all
    }

    fn run(
        config: &str,
        partitions: usize,
        events: &[TestEvent],
        batch: usize,
    ) -> Vec<Result<String, String>> {
        let queries = queries();
        let borrowed: Vec<Vec<(&str, &str)>> = queries
            .iter()
            .map(|q| q.iter().map(|(k, v)| (*k, v.as_str())).collect())
            .collect();
        let refs: Vec<&[(&str, &str)]> = borrowed.iter().map(Vec::as_slice).collect();
        answers(
            super::native_plugin,
            config,
            partitions,
            events,
            batch,
            &refs,
        )
        .expect("runs")
    }

    /// Asserts the answers are the same, naming the first that is not.
    fn same(got: &[Result<String, String>], want: &[Result<String, String>], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (got, want)) in got.iter().zip(want).enumerate() {
            if got != want {
                let (g, w) = (format!("{got:?}"), format!("{want:?}"));
                let at = g.bytes().zip(w.bytes()).take_while(|(a, b)| a == b).count();
                let near = |s: &str| s[at.saturating_sub(200)..(at + 200).min(s.len())].to_owned();
                panic!(
                    "{what}: query {i} ({:?}) differs at {at}:\n got …{}…\nwant …{}…",
                    queries()[i],
                    near(&g),
                    near(&w)
                );
            }
        }
    }

    #[test]
    fn three_partitions_answer_as_one() {
        for (seed, config) in [
            (0, "{}"),
            (1, r#"{"resolution_ms": 30000}"#),
            (2, r#"{"resolution_ms": 7000, "gap_ms": 3600000}"#),
            (3, "{}"),
        ] {
            let events = sample_events(seed, 25, 1200);
            let one = run(config, 1, &events, 64);
            for (i, answer) in one.iter().enumerate() {
                // Most queries answer; the last few are the errors.
                assert_eq!(
                    answer.is_ok(),
                    !(22..27).contains(&i),
                    "query {i}: {answer:?}"
                );
            }
            same(
                &run(config, 3, &events, 64),
                &one,
                &format!("seed {seed}, {config}"),
            );
            same(
                &run(config, 8, &events, 300),
                &one,
                &format!("seed {seed}, {config}"),
            );
        }
    }

    #[test]
    fn an_empty_metric_answers_as_before() {
        let one = run("{}", 1, &[], 10);
        assert_eq!(run("{}", 3, &[], 10), one);
        assert_eq!(
            one[0].as_deref(),
            Ok(concat!(
                r#"{"active_users":0,"avg_session_depth":0.0,"avg_session_duration_ms":0.0,"#,
                r#""browser_distribution":{},"device_distribution":{},"entry_pages":{},"#,
                r#""exit_pages":{},"popular_paths":{},"session_count":0,"total_events":0}"#
            ))
        );
    }

    #[test]
    fn too_many_points_is_refused_in_query_or_merge() {
        let events = sample_events(5, 4, 50);
        let mut metric =
            weft_plugin::native::Partitioned::new(super::native_plugin, "{}", 3).expect("starts");
        metric.ingest(&events).expect("ingests");
        // A range every partition knows: refused by `query` already.
        let err = metric
            .partials(&[("bucket", "1m"), ("from", "0"), ("to", &START.to_string())])
            .unwrap_err();
        assert!(err.contains("more than 10000"), "{err}");
        // A range only all partitions together know: refused by `merge`.
        let from = (START - 30 * 86_400_000).to_string();
        assert!(
            metric
                .partials(&[("bucket", "1m"), ("from", &from)])
                .is_ok()
        );
        let err = metric
            .query(&[("bucket", "1m"), ("from", &from)])
            .unwrap_err();
        assert!(err.contains("more than 10000"), "{err}");
    }
}
