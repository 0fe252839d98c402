//! `funnel` (metric): ordered steps from config (default page_view,
//! add_to_cart, checkout, purchase). A session reaches step k when its events
//! contain steps 1..k in that order. Output
//! `{"steps":[{"name","sessions","conversion_from_first","conversion_from_previous"}]}`.

use serde::Deserialize;
use weft_plugin::{Batch, Cell, Config, Map, Metric, Query, Result, serde_json};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    steps: Vec<String>,
    /// Must be at least the sessionizer's gap: a session idle this long is closed.
    gap_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            steps: ["page_view", "add_to_cart", "checkout", "purchase"]
                .map(String::from)
                .to_vec(),
            gap_ms: 30 * 60 * 1000,
        }
    }
}

struct Funnel {
    steps: Vec<String>,
    gap: i64,
    /// Per open session: (steps reached, last event time).
    progress: Map<(u32, i64)>,
    /// Sessions that reached each step.
    reached: Cell<Vec<u64>>,
}

impl Metric for Funnel {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.get()?;
        if settings.steps.is_empty() {
            return Err("funnel needs at least one step".into());
        }
        Ok(Funnel {
            steps: settings.steps,
            gap: settings.gap_ms,
            progress: Map::new("progress"),
            reached: Cell::new("reached"),
        })
    }

    fn ingest(&mut self, batch: &Batch) -> Result<()> {
        let steps = &self.steps;
        self.reached.update(|reached| {
            reached.resize(steps.len(), 0);
            for event in batch.events() {
                self.progress.with(event.session(), |p| {
                    let (done, last) = p.get_or_insert((0, event.time()));
                    *last = event.time();
                    if steps.get(*done as usize).is_some_and(|s| s == event.name()) {
                        reached[*done as usize] += 1;
                        *done += 1;
                    }
                });
            }
        });
        Ok(())
    }

    fn tick(&mut self, watermark: i64) -> Result<()> {
        self.progress
            .retain(|_, (_, last)| watermark - *last <= self.gap);
        Ok(())
    }

    fn query(&mut self, _: &Query) -> Result<serde_json::Value> {
        let reached = self.reached.get();
        let count = |i: usize| reached.get(i).copied().unwrap_or(0);
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let steps: Vec<_> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let previous = if i == 0 { count(0) } else { count(i - 1) };
                serde_json::json!({
                    "name": name,
                    "sessions": count(i),
                    "conversion_from_first": ratio(count(i), count(0)),
                    "conversion_from_previous": ratio(count(i), previous),
                })
            })
            .collect();
        Ok(serde_json::json!({ "steps": steps }))
    }
}

weft_plugin::export_metric!(Funnel);
