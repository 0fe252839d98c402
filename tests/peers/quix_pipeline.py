"""Quix Streams peer of weft for the benchmark harness (item 7).

Reads a topic of clickstream events (JSON objects with `user_id`, `event` and
`ts` in epoch ms, keyed by user) from the beginning in a fresh consumer
group and computes what weft's `event_counts` and `core` report:

- events per event name: re-keyed by name with `group_by` (a repartition
  topic, as the Quix docs do it for aggregating by another field) and counted
  in a stateful function;
- sessions per user with a 30-minute inactivity gap: a session window over
  the message key, in event time (`timestamp_extractor`), counted with
  `.count()`. `.current()` emits the running session on every event, so
  sessions still open when the input ends are counted too (`.final()` would
  only emit closed ones, and a Kafka topic never ends).

Everything else is the documented default (RocksDB state, at-least-once, one
process) but one: `use_changelog_topics=False`. Changelog messages carry
Kafka headers, and the test broker (tansu 0.6, SQLite storage) looks up a
fetched record's headers by scanning every header it has ever stored (the
table has no index): one run with changelogs left thousands of header rows
behind and cut the fetch rate of every consumer of that broker (a plain
one's too) to about 1 500 messages/s, for good. State stays in RocksDB on
local disk, as weft's stays in sled.

It stops itself (`app.stop()`) once both branches have processed every one
of the expected messages, and prints one JSON line:

    {"seconds": ..., "counts": {...}, "session_count": N,
     "session_duration_sum_ms": S}

`seconds` runs from just before `app.run()` (consumer group join included)
to the last message processed.

    python3 quix_pipeline.py BROKERS TOPIC MESSAGES
"""

import argparse
import json
import tempfile
import time
import uuid
from datetime import timedelta

from quixstreams import Application, State

GAP = timedelta(minutes=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("brokers", help="bootstrap servers, host:port[,host:port]")
    parser.add_argument("topic")
    parser.add_argument("messages", type=int, help="messages in the topic")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=args.brokers,
            consumer_group=f"quix-peer-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            # See the module docstring: changelogs would slow the test broker
            # for everyone, for good.
            use_changelog_topics=False,
            loglevel="WARNING",
        )
        topic = app.topic(
            args.topic,
            key_deserializer="str",
            value_deserializer="json",
            # Event time: the event's own `ts`, not the produce time.
            timestamp_extractor=lambda value, headers, timestamp, kind: value["ts"],
        )
        sdf = app.dataframe(topic)

        seen = {"sessions": 0, "counts": 0}
        # (user, session start) -> last event time - first event time.
        sessions: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        finished = [0.0]

        def done() -> None:
            if seen["sessions"] == args.messages and seen["counts"] == args.messages:
                finished[0] = time.perf_counter()
                app.stop()

        def on_session(value: dict, key: str, timestamp: int, headers) -> None:
            # `end` is exclusive: the last event's time + 1. Events of one
            # user arrive in time order (one key, one partition), so sessions
            # only grow and never merge.
            sessions[(key, value["start"])] = value["end"] - 1 - value["start"]
            seen["sessions"] += 1
            done()

        def count(value: dict, state: State) -> int:
            n = state.get("count", 0) + 1
            state.set("count", n)
            return n

        def on_count(n: int, key: str, timestamp: int, headers) -> None:
            counts[key] = n
            seen["counts"] += 1
            done()

        sdf.session_window(inactivity_gap_ms=GAP).count().current().update(
            on_session, metadata=True
        )
        by_name = sdf.group_by("event")
        by_name.apply(count, stateful=True).update(on_count, metadata=True)

        started = time.perf_counter()
        app.run()
        if not finished[0]:
            raise SystemExit(f"stopped after {seen} of {args.messages} messages")

    print(
        json.dumps(
            {
                "seconds": finished[0] - started,
                "counts": counts,
                "session_count": len(sessions),
                "session_duration_sum_ms": sum(sessions.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
