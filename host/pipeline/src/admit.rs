//! Admission: one message, normalized here, becomes an accepted event in the reorder
//! buffer, a duplicate (counted), or a rejection (counted and kept with its
//! reason): never a silent drop.

use weft_normalize::Normalizer;
use weft_source::Message;
use weft_state::Rejected;

use crate::{partition::Partition, reorder::Held};

impl Partition {
    /// Normalizes, validates and dedups one message, received at
    /// wall-clock time `received` (epoch ms), then buffers it.
    pub(crate) fn admit(&mut self, message: Message, received: i64, normalizer: &mut Normalizer) {
        let Message {
            payload,
            partition,
            offset,
            key,
        } = message;
        if self
            .offsets
            .get(&partition)
            .is_some_and(|&next| offset < next)
        {
            return; // Read before the last checkpoint already.
        }
        self.offsets.insert(partition, offset + 1);
        self.counters.received += 1;
        self.unsaved += 1;
        let event = match normalizer.normalize(&payload) {
            Ok(event) => event,
            Err(r) => return self.reject(r.reason.code(), r.detail, partition, offset, payload),
        };
        // A Kafka partition holds whole sessions only if keyed by user.
        if self.shared.group.get().is_some() && key.as_deref() != Some(event.user.as_bytes()) {
            self.shared.telemetry.unkeyed.inc();
        }
        let ahead = event.time.saturating_sub(received);
        if ahead > self.settings.max_future_ms {
            let detail = format!(
                "event time {} is {ahead} ms ahead of the time it was received ({received}); at most {} ms ahead is accepted (max_future_ms)",
                event.time, self.settings.max_future_ms
            );
            return self.reject("future", detail, partition, offset, payload);
        }
        if !event.id.is_empty() && self.dedup.is_known(&event.id) {
            self.counters.duplicates += 1;
            return;
        }
        if self.reorder.is_late(event.time) {
            let watermark = self.reorder.watermark().unwrap_or_default();
            let detail = format!(
                "event time {} is before the watermark {watermark} (allowed lateness {} ms)",
                event.time, self.settings.lateness_ms
            );
            return self.reject("late", detail, partition, offset, payload);
        }
        if !event.id.is_empty() {
            self.dedup.accept(&event.id, event.time);
        }
        self.counters.accepted += 1;
        self.reorder.push(Held {
            partition,
            offset,
            event,
        });
    }

    fn reject(&mut self, reason: &str, detail: String, partition: i32, offset: i64, raw: Vec<u8>) {
        self.counters.rejected += 1;
        *self
            .counters
            .rejected_by_reason
            .entry(reason.to_owned())
            .or_default() += 1;
        tracing::trace!(reason, partition, offset, %detail, "Message rejected.");
        let record = Rejected::keeping(
            reason,
            detail,
            partition,
            offset,
            raw,
            self.settings.rejected_raw_limit,
        );
        self.rejected.push((self.counters.rejected, record));
    }
}
