"""The Python SDK for weft metric plugins.

A metric plugin is a WebAssembly component that ingests batches of
clickstream events and answers queries with JSON. With this module a plugin
is a plain Python class; the SDK turns it into the `metric` world of
`wit/weft.wit` (package `weft:plugin@0.1.0`) as built by componentize-py:

    import weft_plugin
    from weft_plugin import Map

    class EventCounts:
        def __init__(self, config):
            self.counts = Map("counts")

        def ingest(self, batch):
            for event in batch:
                self.counts[event.name] = self.counts.get(event.name, 0) + 1

        def query(self, params):
            return {"counts": dict(self.counts.items())}

    WitWorld = weft_plugin.metric(EventCounts)

    # componentize-py -d wit -w metric componentize --stub-wasi app -o app.wasm

What the SDK does for the class:
- `__init__(config)` gets the instance's config as parsed JSON (a dict,
  `{}` when none); `ingest(batch)` gets a `Batch` of `Event`s in event-time
  order; `query(params)` gets the HTTP query parameters as a dict (first
  value of each name) and returns anything `json.dumps` takes (written with
  sorted keys, like the Rust SDK); `tick(watermark)` (optional) hears that no
  event older than `watermark` (epoch ms) will follow.
- An exception raised by any of them becomes the WIT `result` error the host
  reports (`"ValueError: bad config: ..."`); `PluginError("...")` passes its
  message alone.
- Durable state lives in `Map` containers: cached in guest memory, read from
  the host on first use, written back when the host calls `checkpoint`
  (state is durable from then on, atomically with the source offsets).
- `log(level, message)` writes a log line attributed to the plugin;
  `print()` writes one at level info (stderr: warn).
- Built with `--stub-wasi`, a plugin has no clock, files, environment or
  network: `time.time()` and `open()` trap. Use the events' times.

The class `metric(...)` returns must be bound to the name `WitWorld` in the
app module: componentize-py looks up the world's exports there.
"""

import io
import json
import sys
import traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import log as _host_log
from wit_world.imports import state as _host_state

__all__ = ["Batch", "Event", "Map", "PluginError", "log", "metric"]


class PluginError(Exception):
    """An error whose message reaches the host as it is."""


# ---------------------------------------------------------------------------
# Batches


class Event:
    """One tracking event: `id`, `time` (epoch ms, UTC), `user`, `name`,
    `session`, `path`, `device`, `browser`, `os` (strings, "" when absent)
    and `props` (a dict of the other properties)."""

    __slots__ = (
        "id", "time", "user", "name", "session", "path", "device", "browser",
        "os", "_props",
    )

    def __init__(self, s, raw, props):
        try:
            self.id = s[raw.id]
            self.user = s[raw.user]
            self.name = s[raw.name]
            self.session = s[raw.session]
            self.path = s[raw.path]
            self.device = s[raw.device]
            self.browser = s[raw.browser]
            self.os = s[raw.os]
        except IndexError:
            # An index past the string table reads as "", like the Rust SDK.
            n = len(s)
            self.id, self.user, self.name, self.session, self.path, self.device, self.browser, self.os = (
                s[i] if i < n else ""
                for i in (raw.id, raw.user, raw.name, raw.session, raw.path, raw.device, raw.browser, raw.os)
            )
        self.time = raw.time
        # Resolved on first use of `props`: most metrics never look.
        self._props = (s, props, raw.props_start, raw.props_len) if raw.props_len else {}

    @property
    def props(self):
        p = self._props
        if type(p) is tuple:
            s, props, start, length = p
            n = len(s)
            p = self._props = {
                (s[q.key] if q.key < n else ""): (s[q.value] if q.value < n else "")
                for q in props[start:start + length]
            }
        return p

    def __repr__(self):
        return f"Event(time={self.time}, user={self.user!r}, name={self.name!r}, path={self.path!r})"


class Batch:
    """A batch of events in event-time order: iterate it for `Event`s.

    The batch's string table is decoded once: `strings[i]` is string `i`
    (index 0 is "", which also means absent).
    """

    __slots__ = ("strings", "events")

    def __init__(self, raw):
        text = raw.text
        strings = []
        start = 0
        for end in raw.ends:
            strings.append(text[start:end].decode("utf-8", "replace"))
            start = end
        if not strings:
            strings.append("")
        self.strings = strings
        props = raw.props
        self.events = [Event(strings, e, props) for e in raw.events]

    def __iter__(self):
        return iter(self.events)

    def __len__(self):
        return len(self.events)


# ---------------------------------------------------------------------------
# Durable state

_ABSENT = object()  # cached "the host holds no entry for this key"
# One encoder for every value: `json.dumps` with options builds a new encoder
# per call, which doubled the cost of a checkpoint.
_encode_value = json.JSONEncoder(separators=(",", ":")).encode
_SCAN_PAGE = 1024
_containers = []


class Map:
    """A durable map from string keys to JSON-encodable values.

    Reading a key not in the cache asks the host (`state.get`) once. Keys
    touched through `m[key]`, `m[key] = v`, `setdefault`, `del` and `pop`
    are remembered and written at the next checkpoint, so a value read with
    `m[key]` may be mutated in place (`m[k]["views"] += 1`). `get`, `in`
    and `items` only read: mutating what they return is not saved.

    Host keys are `name + "\\0" + key` (UTF-8); values are JSON, so a value
    must survive a JSON round trip (dicts with string keys, lists, strings,
    numbers, booleans, None): a tuple comes back as a list after a restart.
    Two containers of one plugin need distinct names.
    """

    def __init__(self, name):
        self.name = name
        self._prefix = name.encode() + b"\0"
        self._cache = {}
        self._dirty = set()
        # Whether the cache holds every entry (after a full scan of the host).
        self._complete = False
        _containers.append(self)

    def _load(self, key):
        value = self._cache.get(key, _ABSENT)
        if value is _ABSENT and not self._complete and key not in self._cache:
            stored = _host_state.get(self._prefix + key.encode())
            value = _ABSENT if stored is None else self._decode(stored, key)
            self._cache[key] = value
        return value

    def _decode(self, data, key):
        try:
            return json.loads(data)
        except ValueError as e:
            log("error", f"state entry {self.name}/{key} does not decode ({e}); starting it afresh")
            return _ABSENT

    def get(self, key, default=None):
        value = self._load(key)
        return default if value is _ABSENT else value

    def __contains__(self, key):
        return self._load(key) is not _ABSENT

    def __getitem__(self, key):
        value = self._load(key)
        if value is _ABSENT:
            raise KeyError(key)
        self._dirty.add(key)
        return value

    def __setitem__(self, key, value):
        self._cache[key] = value
        self._dirty.add(key)

    def __delitem__(self, key):
        if self._load(key) is _ABSENT:
            raise KeyError(key)
        self._cache[key] = _ABSENT
        self._dirty.add(key)

    def setdefault(self, key, default=None):
        """The value for `key`, set to `default` first if absent; counts as a change."""
        value = self._load(key)
        if value is _ABSENT:
            value = self._cache[key] = default
        self._dirty.add(key)
        return value

    def pop(self, key, *default):
        value = self._load(key)
        if value is _ABSENT:
            if default:
                return default[0]
            raise KeyError(key)
        self._cache[key] = _ABSENT
        self._dirty.add(key)
        return value

    def items(self):
        """Every (key, value), in key order. The first call reads every entry
        the host holds (in pages) into the cache."""
        if not self._complete:
            self._load_all()
        return sorted((k, v) for k, v in self._cache.items() if v is not _ABSENT)

    def keys(self):
        return [k for k, _ in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.items())

    def _load_all(self):
        after = None
        n = len(self._prefix)
        while True:
            page = _host_state.scan(self._prefix, after, _SCAN_PAGE)
            for entry in page:
                key = entry.key[n:].decode("utf-8", "replace")
                if key not in self._cache:  # the cache may be newer
                    self._cache[key] = self._decode(entry.value, key)
            if len(page) < _SCAN_PAGE:
                break
            after = page[-1].key
        self._complete = True

    def _flush(self):
        # Key order makes the host's writes deterministic.
        for key in sorted(self._dirty):
            full = self._prefix + key.encode()
            value = self._cache.get(key, _ABSENT)
            if value is _ABSENT:
                _host_state.delete(full)
                if not self._complete:
                    # The host knows it is gone; no need to keep asking.
                    self._cache.pop(key, None)
            else:
                _host_state.set(full, _encode_value(value).encode())
        self._dirty.clear()


def _checkpoint():
    for container in _containers:
        container._flush()


# ---------------------------------------------------------------------------
# Logging

_LEVELS = {
    "trace": _host_log.Level.TRACE,
    "debug": _host_log.Level.DEBUG,
    "info": _host_log.Level.INFO,
    "warn": _host_log.Level.WARN,
    "error": _host_log.Level.ERROR,
}


def log(level, message):
    """Writes a log line; `level` is "trace", "debug", "info", "warn" or "error"."""
    _host_log.log(_LEVELS[level], str(message))


class _LogStream(io.TextIOBase):
    """Lines written to it become log lines. Without it `print()` would trap:
    a component built with `--stub-wasi` has no stdout."""

    def __init__(self, level):
        self._level = level
        self._partial = ""

    def writable(self):
        return True

    def write(self, text):
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            log(self._level, line)
        return len(text)

    def flush(self):
        if self._partial:
            line, self._partial = self._partial, ""
            log(self._level, line)


sys.stdout = _LogStream("info")
sys.stderr = _LogStream("warn")


# ---------------------------------------------------------------------------
# Export glue


def _fail(e):
    """The WIT error for exception `e` (where it was raised goes to the debug log)."""
    log("debug", f"{type(e).__name__} raised at {_where(e)}")
    if isinstance(e, PluginError):
        return Err(str(e))
    return Err(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


def metric(cls):
    """Exports `cls` as this component's `metric` world; assign the result to
    `WitWorld` in the app module."""
    plugin = None

    def instance():
        if plugin is None:
            raise PluginError("plugin called before init")
        return plugin

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            nonlocal plugin
            try:
                parsed = json.loads(config) if config.strip() else {}
            except ValueError as e:
                raise Err(f"config is not JSON: {e}")
            try:
                plugin = cls(parsed)
            except Exception as e:
                raise _fail(e)

        def ingest(self, batch):
            try:
                instance().ingest(Batch(batch))
            except Exception as e:
                raise _fail(e)

        def tick(self, watermark):
            try:
                p = instance()
                if hasattr(p, "tick"):
                    p.tick(watermark)
            except Exception as e:
                raise _fail(e)

        def checkpoint(self):
            try:
                _checkpoint()
            except Exception as e:
                raise _fail(e)

        def query(self, params):
            try:
                return _encode_answer(instance().query(_first_values(params)))
            except Exception as e:
                raise _fail(e)

    WitWorld.__qualname__ = f"metric({cls.__name__})"
    return WitWorld


def _where(e):
    """The frames of `e`'s traceback as "file:line (function)". Made from the
    code objects alone: `traceback` would read the source files, which a
    component built with `--stub-wasi` cannot open (the call traps)."""
    return " <- ".join(
        f"{frame.f_code.co_filename}:{line} ({frame.f_code.co_name})"
        for frame, line in reversed(list(traceback.walk_tb(e.__traceback__)))
    )


_encode_answer = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


def _first_values(params):
    out = {}
    for k, v in params:
        out.setdefault(k, v)
    return out
