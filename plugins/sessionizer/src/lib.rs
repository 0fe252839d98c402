//! `sessionizer` (stage): a session is a maximal run of one user's events, in
//! event-time order, where consecutive events are at most `gap_ms` apart
//! (default 30 min). Sets the session id `USER:START_MS` on every event.

use serde::{Deserialize, Serialize};
use weft_plugin::{Batch, Config, Map, Output, Result, Stage};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    gap_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gap_ms: 30 * 60 * 1000,
        }
    }
}

/// The open session of a user.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct Open {
    start: i64,
    last: i64,
}

struct Sessionizer {
    gap: i64,
    open: Map<Open>,
}

impl Stage for Sessionizer {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.get()?;
        Ok(Sessionizer {
            gap: settings.gap_ms,
            open: Map::new("open"),
        })
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        let mut id = String::new();
        for event in batch.events() {
            let (user, time) = (event.user(), event.time());
            let start = self.open.with(user, |open| match open {
                Some(s) if time - s.last <= self.gap => {
                    s.last = s.last.max(time);
                    s.start
                }
                _ => {
                    *open = Some(Open {
                        start: time,
                        last: time,
                    });
                    time
                }
            });
            id.clear();
            use std::fmt::Write;
            let _ = write!(id, "{user}:{start}");
            out.push(&event).set_session(&id);
        }
        Ok(())
    }

    fn tick(&mut self, watermark: i64) -> Result<()> {
        // No event older than the watermark follows: a session whose last
        // event is more than a gap before it is closed for good.
        self.open.retain(|_, s| watermark - s.last <= self.gap);
        Ok(())
    }
}

weft_plugin::export_stage!(Sessionizer);
