//! `page_stats` (example metric, the Rust one of four): bounce rate and time
//! on page per path, written the same way in Python, JavaScript and C
//! (`plugins/examples/page-stats/`), so the languages compare side by side.
//!
//! - **Bounce rate** of a path: of the sessions whose first page view was on
//!   it (`entries`), the share with exactly one page view (`bounces`).
//! - **Time on page** of a path: the mean time from a page view on it to the
//!   session's next event, over the views that have one (`timed_views`).
//!
//! Answer: `{"paths": {PATH: {"entries", "bounces", "bounce_rate", "views",
//! "timed_views", "time_on_page_ms"}}}`; a rate or mean without a denominator
//! is `null`. Every user's events are in one partition: a partition answers
//! its sums per path (`entries`, `bounces`, `views`, `timed_views`,
//! `time_ms`), and `merge` adds them up (the SDK's `merge::sum`) and works
//! out the rates.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p page-stats` in
//! `plugins/` (→ `plugins/target/wasm32-wasip2/release/page_stats.wasm`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_plugin::{Batch, Config, Map, Metric, Query, Result, serde_json};

/// Per path totals.
#[derive(Serialize, Deserialize, Clone, Default)]
struct PathStats {
    entries: u64,
    bounces: u64,
    views: u64,
    timed_views: u64,
    time_ms: i64,
}

/// Where a user's current session stands.
#[derive(Serialize, Deserialize, Clone, Default)]
struct Visit {
    session: String,
    page_views: u32,
    /// The session's first page view's path.
    entry: String,
    /// The last page view not yet followed by an event: (path, time).
    pending: Option<(String, i64)>,
}

struct PageStats {
    paths: Map<PathStats>,
    users: Map<Visit>,
}

impl Metric for PageStats {
    fn init(_: Config) -> Result<Self> {
        Ok(PageStats {
            paths: Map::new("paths"),
            users: Map::new("users"),
        })
    }

    fn ingest(&mut self, batch: &Batch) -> Result<()> {
        for event in batch.events() {
            self.users.update(event.user(), |visit| {
                if visit.session != event.session() {
                    *visit = Visit {
                        session: event.session().to_owned(),
                        ..Visit::default()
                    };
                }
                if let Some((path, time)) = visit.pending.take() {
                    self.paths.update(&path, |p| {
                        p.timed_views += 1;
                        p.time_ms += event.time() - time;
                    });
                }
                if event.name() == "page_view" {
                    visit.page_views += 1;
                    if visit.page_views == 1 {
                        visit.entry = event.path().to_owned();
                    }
                    let first = visit.page_views == 1;
                    self.paths.update(event.path(), |p| {
                        p.views += 1;
                        if first {
                            p.entries += 1;
                            p.bounces += 1;
                        }
                    });
                    if visit.page_views == 2 {
                        // The entry page did not bounce after all.
                        self.paths.with(&visit.entry, |p| {
                            if let Some(p) = p {
                                p.bounces -= 1;
                            }
                        });
                    }
                    visit.pending = Some((event.path().to_owned(), event.time()));
                }
            });
        }
        Ok(())
    }

    fn query(&mut self, _: &Query) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "paths": self.paths.entries() }))
    }

    fn merge(_: &Query, partials: Vec<serde_json::Value>) -> Result<serde_json::Value> {
        #[derive(Deserialize)]
        struct Partial {
            paths: BTreeMap<String, PathStats>,
        }
        let total: Partial = serde_json::from_value(weft_plugin::merge::sum(partials)?)?;
        let ratio = |n: f64, d: u64| (d > 0).then(|| n / d as f64);
        let paths: serde_json::Map<String, serde_json::Value> = total
            .paths
            .into_iter()
            .map(|(path, p)| {
                let stats = serde_json::json!({
                    "entries": p.entries,
                    "bounces": p.bounces,
                    "bounce_rate": ratio(p.bounces as f64, p.entries),
                    "views": p.views,
                    "timed_views": p.timed_views,
                    "time_on_page_ms": ratio(p.time_ms as f64, p.timed_views),
                });
                (path, stats)
            })
            .collect();
        Ok(serde_json::json!({ "paths": paths }))
    }
}

weft_plugin::export_metric!(PageStats);
