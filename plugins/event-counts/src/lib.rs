//! `event_counts` (metric): events per event name, continuously updated —
//! `SELECT event, COUNT(*) … GROUP BY event`. Output `{"counts": {name: n}}`.
//! Each partition answers its own counts; the SDK's default `merge` adds
//! them up.

use weft_plugin::prelude::*;

/// Event name -> events seen; durable across restarts.
struct EventCounts(Map<u64>);

impl Metric for EventCounts {
    fn init(_: Config) -> Result<Self> {
        Ok(EventCounts(Map::new("counts")))
    }

    fn ingest_event(&mut self, event: EventRef) {
        self.0.update(event.name(), |n| *n += 1);
    }

    fn query(&mut self, _: &Query) -> Result<Value> {
        Ok(json!({ "counts": self.0.entries() }))
    }
}

weft_plugin::export_metric!(EventCounts);
