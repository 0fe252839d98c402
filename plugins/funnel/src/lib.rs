//! `funnel` (metric): ordered steps from config (default page_view,
//! add_to_cart, checkout, purchase). A session reaches step k when its events
//! contain steps 1..k in that order. Output
//! `{"steps":[{"name","sessions","conversion_from_first","conversion_from_previous"}]}`.
//!
//! A session is one user's, so it is in one partition: a partition answers
//! its sessions per step (with the steps' names), `merge` adds them up and
//! works out the conversions.

use serde::{Deserialize, Serialize};
use weft_plugin::{Batch, Cell, Config, Error, Map, Metric, Query, Result, serde_json};

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
        let partial = Partial {
            steps: self.steps.clone(),
            sessions: (0..self.steps.len())
                .map(|i| reached.get(i).copied().unwrap_or(0))
                .collect(),
        };
        Ok(serde_json::to_value(partial)?)
    }

    fn merge(_: &Query, partials: Vec<serde_json::Value>) -> Result<serde_json::Value> {
        let mut total: Option<Partial> = None;
        for partial in partials {
            let partial: Partial = serde_json::from_value(partial)
                .map_err(|e| Error(format!("a partial answer of funnel does not fit: {e}")))?;
            match &mut total {
                None => total = Some(partial),
                Some(t) if t.steps == partial.steps => {
                    for (n, m) in t.sessions.iter_mut().zip(partial.sessions) {
                        *n += m;
                    }
                }
                Some(_) => return Err("the partitions' funnel steps differ".into()),
            }
        }
        let Partial { steps, sessions } = total.ok_or("no partial answers")?;
        let count = |i: usize| sessions.get(i).copied().unwrap_or(0);
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let steps: Vec<_> = steps
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

/// A partition's answer: the steps and the sessions that reached each.
#[derive(Serialize, Deserialize)]
struct Partial {
    steps: Vec<String>,
    sessions: Vec<u64>,
}

weft_plugin::export_metric!(Funnel);
