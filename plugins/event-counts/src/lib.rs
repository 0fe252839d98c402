//! `event_counts` (metric): events per event name, continuously updated —
//! `SELECT event, COUNT(*) … GROUP BY event`. Output `{"counts": {name: n}}`.

use std::collections::BTreeMap;

use weft_plugin::{Batch, Cell, Config, Metric, Query, Result, serde_json};

struct EventCounts {
    counts: Cell<BTreeMap<String, u64>>,
}

impl Metric for EventCounts {
    fn init(_: Config) -> Result<Self> {
        Ok(EventCounts {
            counts: Cell::new("counts"),
        })
    }

    fn ingest(&mut self, batch: &Batch) -> Result<()> {
        self.counts.update(|counts| {
            for event in batch.events() {
                match counts.get_mut(event.name()) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(event.name().to_owned(), 1);
                    }
                }
            }
        });
        Ok(())
    }

    fn query(&mut self, _: &Query) -> Result<serde_json::Value> {
        Ok(self
            .counts
            .read(|counts| serde_json::json!({ "counts": counts })))
    }
}

weft_plugin::export_metric!(EventCounts);
