"""Bytewax peer of weft for the benchmark harness (item 7).

A dataflow over a topic of clickstream events (JSON objects with `user_id`,
`event` and `ts` in epoch ms, keyed by user) that computes what weft's
`event_counts` and `core` report:

- events per event name: `count_final` (the whole stream);
- sessions per user with a 30-minute gap: `count_window` keyed by user with
  a `SessionWindower(gap=30 min)` on an `EventClock` reading `ts`; each
  closed window's metadata gives the session's first and last event time.

The input is `KafkaSource` from `bytewax.connectors.kafka`, which assigns
every partition from its beginning (Bytewax keeps offsets in its own
recovery store, not in a consumer group); `tail=False` makes it end at the
end of the partitions, and at the end of input every window still open is
closed, so open sessions are counted. Run as `python -m bytewax.run` would
(`cli_main`, default: one worker, no recovery store). Prints one JSON line:

    {"seconds": ..., "counts": {...}, "session_count": N,
     "session_duration_sum_ms": S}

`seconds` is the whole dataflow run, from just before it starts until it
ends (which is when the last message has been processed and every window
closed).

    python3 bytewax_pipeline.py BROKERS TOPIC MESSAGES
"""

import argparse
import json
import time
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import (
    EventClock,
    SessionWindower,
    count_window,
)
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

GAP = timedelta(minutes=30)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ListSink(DynamicSink):
    """Appends every item to a list in this process."""

    def __init__(self, items: list):
        self.items = items

    def build(self, step_id, worker_index, worker_count):
        items = self.items

        class Partition(StatelessSinkPartition):
            def write_batch(self, batch):
                items.extend(batch)

        return Partition()


def event_time(event: dict) -> datetime:
    return EPOCH + timedelta(milliseconds=event["ts"])


def build(brokers: str, topic: str, counts: list, sessions: list, late: list):
    """The dataflow; its outputs go to the three lists."""
    flow = Dataflow("weft_peer")
    messages = op.input(
        "kafka", flow, KafkaSource(brokers.split(","), [topic], tail=False)
    )
    events = op.map("decode", messages, lambda m: json.loads(m.value))

    op.output(
        "counts_out",
        op.count_final("count_names", events, lambda e: e["event"]),
        ListSink(counts),
    )

    # The watermark trails the newest event time by this much (plus the system
    # time since): weft's default lateness. With none, a user's second event
    # at the same time as the first, arriving in a later batch, is late.
    clock = EventClock(event_time, wait_for_system_duration=timedelta(seconds=5))
    windows = count_window(
        "sessionize",
        events,
        clock,
        SessionWindower(gap=GAP),
        lambda e: e["user_id"],
    )
    # One item per closed session: (user, (window id, metadata)).
    op.output("sessions_out", windows.meta, ListSink(sessions))
    # An event behind the watermark would be dropped from its session.
    op.output("late_out", windows.late, ListSink(late))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("brokers", help="bootstrap servers, host:port[,host:port]")
    parser.add_argument("topic")
    parser.add_argument("messages", type=int, help="messages in the topic")
    args = parser.parse_args()

    counts: list = []
    sessions: list = []
    late: list = []
    flow = build(args.brokers, args.topic, counts, sessions, late)
    started = time.perf_counter()
    cli_main(flow)
    seconds = time.perf_counter() - started

    counts_by_name = dict(counts)
    seen = sum(counts_by_name.values())
    if seen != args.messages or late:
        raise SystemExit(f"read {seen} of {args.messages} messages, {len(late)} late")
    duration = sum(
        (meta.close_time - meta.open_time) // timedelta(milliseconds=1)
        for _user, (_window, meta) in sessions
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "counts": counts_by_name,
                "session_count": len(sessions),
                "session_duration_sum_ms": duration,
            }
        )
    )


if __name__ == "__main__":
    main()
