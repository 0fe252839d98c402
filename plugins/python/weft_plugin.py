"""The Python SDK for weft metric plugins.

A metric plugin is a WebAssembly component that ingests batches of
clickstream events and answers queries with JSON. With this module a plugin
is a plain Python class; the SDK turns it into the `metric` world of
`wit/weft.wit` (package `weft:plugin@0.2.0`) as built by componentize-py:

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

        # No `merge`: the default adds the partitions' counts up.

    WitWorld = weft_plugin.metric(EventCounts)

    # componentize-py -d wit -w metric componentize --stub-wasi app -o app.wasm

What the SDK does for the class:
- `__init__(config)` gets the instance's config as parsed JSON (a dict,
  `{}` when none); `ingest(batch)` gets a `Batch` of `Event`s in event-time
  order; `query(params)` gets the HTTP query parameters as a dict (first
  value of each name) and returns anything `json.dumps` takes (written with
  sorted keys, like the Rust SDK); `tick(watermark)` (optional) hears that no
  event older than `watermark` (epoch ms) will follow.
- The host splits the users into partitions, each with its own instance of
  the plugin: an instance sees every event of its users and none of the
  others'. So `query` answers a *partial* answer for one partition, and
  `merge(params, partials)` (optional) combines the partial answers, already
  parsed from JSON (a list, at least one, in no particular order), into the
  answer the user gets. Without a `merge` method the SDK's default,
  `deep_sum(partials)`, merges objects key by key and adds numbers (ints
  stay ints), keeps equal strings, booleans, nulls and arrays, and fails on
  anything else (differing arrays or kinds): carry sums and counts in the
  partial and compute rates, means and top-N lists in `merge`. `merge` must
  depend on nothing but its arguments (not on the instance's state).
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

__all__ = ["Batch", "Event", "Map", "PluginError", "deep_sum", "log", "metric"]


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

        def merge(self, params, partials):
            try:
                parsed = []
                for i, text in enumerate(partials):
                    try:
                        parsed.append(json.loads(text))
                    except ValueError as e:
                        raise PluginError(f"partial answer {i} is not JSON: {e}")
                if custom_merge:
                    answer = instance().merge(_first_values(params), parsed)
                else:
                    answer = deep_sum(parsed)
                return _encode_answer(answer)
            except Exception as e:
                raise _fail(e)

    custom_merge = callable(getattr(cls, "merge", None))
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


# ---------------------------------------------------------------------------
# The default merge


def deep_sum(partials):
    """The default `merge`: the partial answers (parsed JSON) added up, deeply.

    Objects are merged key by key (a key missing from some partials is the
    sum of the others), numbers are added (an integer sum stays an int and
    must fit a u64 or an i64; a sum with any float is a float, added in the
    partials' order), equal strings, booleans, nulls and arrays are kept.
    Anything else that differs (two different strings or arrays, a string
    and a number, ...) raises `PluginError` naming where: such an answer
    needs a `merge` of its own. No partials at all is an error too (the host
    always gives one or more). The same rules as the Rust SDK's
    `merge::sum`. A custom `merge` may call it to add up what adds up and
    finish from there.
    """
    if not partials:
        raise PluginError("no partial answers to merge")
    return _sum_at(list(partials), "$")


def _sum_at(values, path):
    if len(values) == 1:
        return values[0]
    types = {type(v) for v in values}
    if types == {dict}:
        out = {}
        for key in sorted({k for v in values for k in v}):
            out[key] = _sum_at([v[key] for v in values if key in v], _path_key(path, key))
        return out
    # bool is a subclass of int: compare exact types.
    if types <= {int, float}:
        if float in types:
            total = 0.0
            for v in values:
                total += v
            if total != total or total in (float("inf"), float("-inf")):
                raise PluginError(_overflow(path))
            return total
        total = sum(values)
        if not -(2**63) <= total < 2**64:
            raise PluginError(_overflow(path))
        return total
    first = values[0]
    for other in values[1:]:
        if type(other) is not type(first) or _canonical(other) != _canonical(first):
            a, b = _kind(first), _kind(other)
            what = f"two different {a}s" if a == b else f"{_article(a)} {a} and {_article(b)} {b}"
            raise PluginError(
                f"cannot merge the partial answers at `{path}`: {what}; the default merge adds "
                "numbers and objects and keeps equal values: implement merge(params, partials)"
            )
    return first


def _overflow(path):
    return f"cannot merge the partial answers at `{path}`: the sum overflows; implement merge(params, partials)"


def _path_key(path, key):
    """`path` extended by object key `key`: `$.name` for a plain name, else `$["name"]`."""
    if key and (key[0].isalpha() or key[0] == "_") and key.isascii() and key.replace("_", "a").isalnum():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _kind(v):
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            int: "number", float: "number"}.get(type(v), "value")


def _article(kind):
    return "an" if kind in ("array", "object") else "a"


_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
