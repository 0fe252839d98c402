/**
 * weft-plugin.js — the JavaScript SDK for weft metric plugins.
 *
 * A weft metric is a WebAssembly component (the `metric` world of
 * `wit/weft.wit`) that ingests batches of clickstream events and answers
 * queries with JSON. This module is the whole glue between that world and a
 * plugin author's code, so that the author writes the metric and nothing
 * else:
 *
 * - batches arrive as a {@link Batch} of {@link Event}s with plain string
 *   fields (the batch's shared string table is decoded lazily, once per
 *   string, with no TextDecoder needed: QuickJS has none);
 * - durable state lives in {@link StateMap}s, cached in guest memory, read
 *   from the host on first use and written back when the host checkpoints;
 * - an exception thrown by the author's code becomes the WIT `result` error
 *   string the host reports (its `message`, e.g. "bad config: …");
 * - `log(level, message)` writes a line attributed to the plugin;
 * - `query` answers any JSON-encodable value; `float(x)` writes a number as a
 *   JSON float (`1.0`, as Rust and Python do, rather than `1`);
 * - the host splits users into partitions, each with its own instance: `query`
 *   answers a partial answer for one partition's users and `merge(params,
 *   partials)` combines them into the answer; without a `merge` method the
 *   default, {@link deepSum}, adds numbers and merges objects key by key.
 *
 * A complete metric (events per name):
 *
 * ```js
 * import { metric, StateMap } from './weft-plugin.js';
 *
 * class EventCounts {
 *   init(config) { this.counts = new StateMap('counts'); }
 *   ingest(batch) {
 *     for (const e of batch) this.counts.set(e.name, (this.counts.get(e.name) ?? 0) + 1);
 *   }
 *   query(params) { return { counts: Object.fromEntries(this.counts.entries()) }; }
 *   // No `merge`: the default adds the partitions' counts up.
 * }
 *
 * export const { init, ingest, tick, checkpoint, query, merge } = metric(new EventCounts());
 * ```
 *
 * Build with `weft-build.mjs` beside this file; it works with both engines jco
 * offers (SpiderMonkey through componentize-js, QuickJS through
 * componentize-qjs), and this module uses only what both have.
 */

import {
  get as stateGet,
  set as stateSet,
  delete as stateDelete,
  scan as stateScan,
} from 'weft:plugin/state@0.2.0';
import { log as hostLog } from 'weft:plugin/log@0.2.0';

// ---------------------------------------------------------------------------
// UTF-8, without TextEncoder/TextDecoder

/** Decodes `bytes[start..end]` as UTF-8 (an invalid byte reads as U+FFFD). */
export function decodeUtf8(bytes, start = 0, end = bytes.length) {
  let i = start;
  while (i < end && bytes[i] < 0x80) i++;
  if (i === end && end - start <= 8192) return String.fromCharCode.apply(null, bytes.subarray(start, end));
  const units = Array.from(bytes.subarray(start, i));
  while (i < end) {
    const b = bytes[i];
    let cp = 0xfffd;
    let len = 1;
    if (b < 0x80) {
      cp = b;
    } else if (b >= 0xc2 && b <= 0xdf) {
      if (cont(bytes, i + 1, end, 0x80, 0xbf)) { cp = ((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f); len = 2; }
    } else if (b >= 0xe0 && b <= 0xef) {
      const lo = b === 0xe0 ? 0xa0 : 0x80;
      const hi = b === 0xed ? 0x9f : 0xbf;
      if (cont(bytes, i + 1, end, lo, hi) && cont(bytes, i + 2, end, 0x80, 0xbf)) {
        cp = ((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f);
        len = 3;
      }
    } else if (b >= 0xf0 && b <= 0xf4) {
      const lo = b === 0xf0 ? 0x90 : 0x80;
      const hi = b === 0xf4 ? 0x8f : 0xbf;
      if (cont(bytes, i + 1, end, lo, hi) && cont(bytes, i + 2, end, 0x80, 0xbf) && cont(bytes, i + 3, end, 0x80, 0xbf)) {
        cp = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
        len = 4;
      }
    }
    if (cp > 0xffff) {
      cp -= 0x10000;
      units.push(0xd800 | (cp >> 10), 0xdc00 | (cp & 0x3ff));
    } else {
      units.push(cp);
    }
    i += len;
  }
  let s = '';
  for (let k = 0; k < units.length; k += 8192) {
    s += String.fromCharCode.apply(null, units.slice(k, k + 8192));
  }
  return s;
}

function cont(bytes, i, end, lo, hi) {
  return i < end && bytes[i] >= lo && bytes[i] <= hi;
}

/** Encodes `s` as UTF-8 (a lone surrogate encodes as U+FFFD). */
export function encodeUtf8(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { n += 4; i++; }
    else n += 3;
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out[o++] = c;
    } else if (c < 0x800) {
      out[o++] = 0xc0 | (c >> 6);
      out[o++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        c = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
        out[o++] = 0xf0 | (c >> 18);
        out[o++] = 0x80 | ((c >> 12) & 0x3f);
      } else {
        if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
        out[o++] = 0xe0 | (c >> 12);
      }
      out[o++] = 0x80 | ((c >> 6) & 0x3f);
      out[o++] = 0x80 | (c & 0x3f);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Batches

/**
 * A batch of events in event-time order: iterate it (`for (const e of
 * batch)`), or use `batch.events` / `batch.length`.
 */
export class Batch {
  constructor(raw) {
    this._text = raw.text;
    this._ends = raw.ends;
    this._props = raw.props;
    /** Decoded strings by table index, filled on first use. */
    this._strings = new Array(raw.ends.length);
    this._strings[0] = '';
    this.length = raw.events.length;
    const events = new Array(raw.events.length);
    for (let i = 0; i < events.length; i++) events[i] = new Event(this, raw.events[i]);
    /** @type {Event[]} */
    this.events = events;
  }

  [Symbol.iterator]() {
    return this.events[Symbol.iterator]();
  }

  /** String `index` of the batch's table ("" when out of range). */
  str(index) {
    const s = this._strings[index];
    if (s !== undefined) return s;
    const ends = this._ends;
    if (!(index > 0 && index < ends.length)) return '';
    return (this._strings[index] = decodeUtf8(this._text, ends[index - 1], ends[index]));
  }
}

/**
 * One event. String fields are "" when absent; `time` is epoch milliseconds
 * (a Number); `props` holds the event's other properties.
 */
export class Event {
  constructor(batch, raw) {
    this._batch = batch;
    this._raw = raw;
  }
  /** Producer-assigned unique id, or "". */
  get id() { return this._batch.str(this._raw.id); }
  get time() { return Number(this._raw.time); }
  get user() { return this._batch.str(this._raw.user); }
  /** Event name, e.g. `page_view`. */
  get name() { return this._batch.str(this._raw.name); }
  /** Session id, set by the host's sessionizer stage. */
  get session() { return this._batch.str(this._raw.session); }
  get path() { return this._batch.str(this._raw.path); }
  get device() { return this._batch.str(this._raw.device); }
  get browser() { return this._batch.str(this._raw.browser); }
  get os() { return this._batch.str(this._raw.os); }
  /** The other properties as an object `{key: value}`. */
  get props() {
    return Object.fromEntries(this.propEntries());
  }
  /** The other properties as `[key, value]` pairs, in the order they came. */
  propEntries() {
    const b = this._batch;
    const start = this._raw.propsStart;
    const end = Math.min(start + this._raw.propsLen, b._props.length);
    const out = [];
    for (let i = start; i < end; i++) {
      const p = b._props[i];
      out.push([b.str(p.key), b.str(p.value)]);
    }
    return out;
  }
  /** The value of property `key`, or undefined. */
  prop(key) {
    for (const [k, v] of this.propEntries()) if (k === key) return v;
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Durable state

/** Every container, so a checkpoint flushes them all. */
const containers = [];

/**
 * Compares strings in the host's byte-wise key order (UTF-8 order = code point
 * order), the order Rust and Python write object keys in: for `sort`.
 */
export function compareKeys(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // In UTF-16, surrogates (astral code points) sort below U+E000..U+FFFF.
    if (x >= 0xd800) x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
    if (y >= 0xd800) y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    return x - y;
  }
  return a.length - b.length;
}

function decodeValue(bytes, what) {
  try {
    return JSON.parse(decodeUtf8(bytes));
  } catch (e) {
    log('error', `state entry ${what} does not decode (${errorMessage(e)}); starting it afresh`);
    return undefined;
  }
}

/**
 * A durable map from string keys to JSON-encodable values, named `name`
 * (distinct per container; its host keys are `name` + "\0" + key).
 *
 * Values are cached in guest memory; a key missing from the cache is read
 * from the host on first use, so a restarted plugin finds the last
 * checkpoint's values. Changed keys are written back when the host calls
 * `checkpoint`. `get` hands out the cached value itself: change an object in
 * place and it is written at the next checkpoint (every key read with `get`
 * that holds an object is written then, changed or not).
 */
export class StateMap {
  constructor(name) {
    this.name = name;
    this._prefix = name + '\0';
    /** key -> value; `undefined` caches "absent in the host" too. */
    this._cache = new Map();
    this._dirty = new Set();
    /** Whether the cache holds every entry (after `entries()` read them all). */
    this._complete = false;
    containers.push(this);
  }

  _load(key) {
    const value = this._cache.get(key);
    return value !== undefined ? value : this._miss(key);
  }

  /** Reads a key the cache does not know from the host. */
  _miss(key) {
    if (this._cache.has(key)) return undefined; // cached as absent
    const bytes = stateGet(encodeUtf8(this._prefix + key));
    const value = bytes == null ? undefined : decodeValue(bytes, JSON.stringify(key));
    this._cache.set(key, value);
    return value;
  }

  /** The value for `key`, or undefined. */
  get(key) {
    const value = this._load(key);
    if (typeof value === 'object' && value !== null) this._dirty.add(key);
    return value;
  }

  has(key) {
    return this._load(key) !== undefined;
  }

  /** The value for `key`, first setting it to `make()` when absent. */
  getOrInsert(key, make) {
    let value = this.get(key);
    if (value === undefined) this.set(key, (value = make()));
    return value;
  }

  /** Sets `key` (setting `undefined` deletes it). */
  set(key, value) {
    this._cache.set(key, value);
    this._dirty.add(key);
  }

  delete(key) {
    this.set(key, undefined);
  }

  /**
   * Every `[key, value]` entry, in key order, for reading (change entries
   * with `get` or `set`). The first call reads every entry the host holds
   * into guest memory.
   */
  entries() {
    if (!this._complete) this._loadAll();
    const out = [];
    for (const [k, v] of this._cache) if (v !== undefined) out.push([k, v]);
    out.sort((a, b) => compareKeys(a[0], b[0]));
    return out;
  }

  _loadAll() {
    const PAGE = 1024;
    const prefix = encodeUtf8(this._prefix);
    let after;
    for (;;) {
      const page = stateScan(prefix, after, PAGE);
      for (const { key, value } of page) {
        const k = decodeUtf8(key, prefix.length);
        if (!this._cache.has(k)) this._cache.set(k, decodeValue(value, JSON.stringify(k)));
      }
      if (page.length < PAGE) break;
      after = page[page.length - 1].key;
    }
    this._complete = true;
  }

  /** Writes the changed entries through the host's `state` (at a checkpoint). */
  _flush() {
    const dirty = [...this._dirty].sort(compareKeys);
    this._dirty.clear();
    for (const key of dirty) {
      const value = this._cache.get(key);
      const hostKey = encodeUtf8(this._prefix + key);
      if (value === undefined) {
        stateDelete(hostKey);
        // Once the host knows, an absent entry need not stay cached.
        if (!this._complete) this._cache.delete(key);
      } else {
        stateSet(hostKey, encodeUtf8(JSON.stringify(value)));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Logging and JSON answers

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

/** Writes a log line; `level` is one of trace, debug, info, warn, error. */
export function log(level, message) {
  hostLog(LEVELS.includes(level) ? level : 'info', String(message));
}

/** A number the answer writes as a JSON float (`1.0`, not `1`). */
export class Float {
  constructor(value) { this.value = value; }
}

/** Marks `x` to be written as a JSON float; `null`/`undefined` stay null. */
export function float(x) {
  return x == null ? null : new Float(x);
}

/** JSON text of an answer: like JSON.stringify, plus {@link Float}, BigInt and Map. */
export function toJson(v) {
  if (v === null || v === undefined) return 'null';
  switch (typeof v) {
    case 'number': return Number.isFinite(v) ? String(v) : 'null';
    case 'bigint': return String(v);
    case 'string': return JSON.stringify(v);
    case 'boolean': return v ? 'true' : 'false';
    case 'object': break;
    default: return 'null';
  }
  if (v instanceof Float) {
    const x = v.value;
    if (!Number.isFinite(x)) return 'null';
    const s = String(x).replace('e+', 'e');
    return /[.e]/.test(s) ? s : s + '.0';
  }
  if (typeof v.toJSON === 'function') return toJson(v.toJSON());
  if (v instanceof Map) return toJson(Object.fromEntries(v));
  if (Array.isArray(v)) return '[' + v.map((x) => (x === undefined || typeof x === 'function' ? 'null' : toJson(x))).join(',') + ']';
  const parts = [];
  for (const k of Object.keys(v)) {
    const x = v[k];
    if (x === undefined || typeof x === 'function') continue;
    parts.push(JSON.stringify(k) + ':' + toJson(x));
  }
  return '{' + parts.join(',') + '}';
}

// ---------------------------------------------------------------------------
// The `metric` world's exports

function errorMessage(e) {
  if (e instanceof Error) return e.message || String(e);
  return String(e);
}

/** Runs `f`; an exception becomes the string the WIT `result` error carries. */
function guard(f) {
  try {
    return f();
  } catch (e) {
    throw errorMessage(e);
  }
}

/**
 * The `metric` world's exports for `plugin`: an object (or a class, made with
 * `new` at `init`) with
 * - `init(config)` (optional): `config` is the instance's parsed JSON config;
 * - `ingest(batch)`: folds a {@link Batch} into the metric;
 * - `tick(watermark)` (optional): event time reached `watermark` (epoch ms);
 * - `query(params)`: answers with a JSON-encodable value, the partial answer
 *   of this instance's partition; `params` holds the query's parameters
 *   (`{name: value}`, the first value of each name);
 * - `merge(params, partials)` (optional): combines the partial answers
 *   (parsed with `JSON.parse`: an array, at least one, in no particular
 *   order) into the answer, a JSON-encodable value. It must depend on
 *   nothing but its arguments. Without it the partials are summed by
 *   {@link deepSum}.
 *
 * Use it in the plugin's one export line:
 * `export const { init, ingest, tick, checkpoint, query, merge } = metric(plugin);`
 */
export function metric(plugin) {
  let instance = typeof plugin === 'function' ? undefined : plugin;
  const the = () => {
    if (instance === undefined) throw new Error('init was not called');
    return instance;
  };
  const customMerge = () => {
    const p = instance ?? plugin.prototype;
    return p != null && typeof p.merge === 'function';
  };
  const firstValues = (params) => {
    const byName = Object.create(null);
    for (const [k, v] of params) if (!(k in byName)) byName[k] = v;
    return byName;
  };
  return {
    init(configJson) {
      guard(() => {
        let config = {};
        if (configJson.trim() !== '') {
          try {
            config = JSON.parse(configJson);
          } catch (e) {
            throw new Error(`config is not JSON: ${errorMessage(e)}`);
          }
        }
        if (instance === undefined) instance = new plugin();
        if (typeof instance.init === 'function') instance.init(config);
      });
    },
    ingest(raw) {
      guard(() => { the().ingest(new Batch(raw)); });
    },
    tick(watermark) {
      guard(() => {
        const p = the();
        if (typeof p.tick === 'function') p.tick(Number(watermark));
      });
    },
    checkpoint() {
      guard(() => { for (const c of containers) c._flush(); });
    },
    query(params) {
      return guard(() => toJson(the().query(firstValues(params))));
    },
    merge(params, partials) {
      return guard(() => {
        if (!customMerge()) return toJson(deepSum(partials.map((text, i) => parsePartial(text, i, parseExact))));
        const parsed = partials.map((text, i) => parsePartial(text, i, JSON.parse));
        return toJson(the().merge(firstValues(params), parsed));
      });
    },
  };
}

function parsePartial(text, i, parse) {
  try {
    return parse(text);
  } catch (e) {
    throw new Error(`partial answer ${i} is not JSON: ${errorMessage(e)}`);
  }
}

// ---------------------------------------------------------------------------
// The default merge

/**
 * The default `merge`: the partial answers added up, deeply. Objects are
 * merged key by key (a key missing from some partials is the sum of the
 * others; the result's keys are sorted), numbers are added (an integer sum
 * stays an integer and must fit a u64 or an i64; a sum with any float is a
 * float, added in the partials' order), equal strings, booleans, nulls and
 * arrays are kept. Anything else that differs (two different strings or
 * arrays, a string and a number, ...) throws an error naming where: such an
 * answer needs a `merge` of its own. No partials at all is an error too (the
 * host always gives one or more). The same rules as the Rust SDK's
 * `merge::sum`.
 *
 * Called by the SDK on the partials' JSON text (through {@link parseExact}),
 * it keeps integers and floats apart as Rust and Python do (`1` + `2` is `3`,
 * `1.5` + `1.5` is `3.0`, integers past 2^53 add exactly, as BigInt). A
 * custom `merge` may call it on its partials (`deepSum(partials)`, plain
 * objects from `JSON.parse`) to add up what adds up and finish from there:
 * it returns plain objects then, and numbers are plain Numbers (write a float
 * with `float(x)`).
 */
export function deepSum(partials) {
  if (partials.length === 0) throw new Error('no partial answers to merge');
  return sumAt([...partials], '$');
}

/** A plain object, or a Map (from {@link parseExact}). */
function isObject(v) {
  return v instanceof Map || (typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Float));
}

function isNumber(v) {
  return typeof v === 'number' || typeof v === 'bigint' || v instanceof Float;
}

const U64_MAX = 18446744073709551615n;
const I64_MIN = -9223372036854775808n;

function sumAt(values, path) {
  if (values.length === 1) return values[0];
  if (values.every(isObject)) {
    const maps = values.map((v) => (v instanceof Map ? v : new Map(Object.entries(v))));
    const keys = new Set();
    for (const m of maps) for (const k of m.keys()) keys.add(k);
    const out = new Map();
    for (const k of [...keys].sort(compareKeys)) {
      out.set(k, sumAt(maps.filter((m) => m.has(k)).map((m) => m.get(k)), pathKey(path, k)));
    }
    // Maps (from parseExact) stay Maps, plain objects plain objects.
    return values[0] instanceof Map ? out : Object.fromEntries(out);
  }
  if (values.every(isNumber)) return addNumbers(values, path);
  const first = values[0];
  for (const other of values.slice(1)) {
    if (kind(other) !== kind(first) || canonical(other) !== canonical(first)) {
      const a = kind(first);
      const b = kind(other);
      const what = a === b ? `two different ${a}s` : `${article(a)} ${a} and ${article(b)} ${b}`;
      throw new Error(
        `cannot merge the partial answers at \`${path}\`: ${what}; the default merge adds numbers ` +
          'and objects and keeps equal values: implement merge(params, partials)',
      );
    }
  }
  return first;
}

/** Integers exactly (a Number while it is safe, else a BigInt), else a float. */
function addNumbers(values, path) {
  const overflow = () => new Error(`cannot merge the partial answers at \`${path}\`: the sum overflows; implement merge(params, partials)`);
  const isFloat = (v) => v instanceof Float || (typeof v === 'number' && !Number.isInteger(v));
  if (values.some(isFloat)) {
    let total = 0;
    for (const v of values) total += v instanceof Float ? v.value : Number(v);
    if (!Number.isFinite(total)) throw overflow();
    // Parsed by parseExact, floats stay Floats; plain Numbers stay Numbers.
    return values.some((v) => v instanceof Float) ? new Float(total) : total;
  }
  let total = 0n;
  for (const v of values) total += BigInt(v);
  if (total > U64_MAX || total < I64_MIN) throw overflow();
  const n = Number(total);
  return Number.isSafeInteger(n) ? n : total;
}

/** `path` extended by object key `key`: `$.name` for a plain name, else `$["name"]`. */
function pathKey(path, key) {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

function kind(v) {
  if (v === null || v === undefined) return 'null';
  if (isNumber(v)) return 'number';
  if (Array.isArray(v)) return 'array';
  if (isObject(v)) return 'object';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'boolean') return 'boolean';
  return 'value';
}

function article(k) {
  return k === 'array' || k === 'object' ? 'an' : 'a';
}

function sortedMap(map) {
  return new Map([...map].sort((x, y) => compareKeys(x[0], y[0])));
}

/** JSON text with every object's keys sorted, to compare values. */
function canonical(v) {
  if (isObject(v) && !(v instanceof Map) && typeof v.toJSON !== 'function') v = new Map(Object.entries(v));
  if (v instanceof Map) {
    const keys = [...v.keys()].sort(compareKeys);
    return '{' + keys.map((k) => JSON.stringify(k) + ':' + canonical(v.get(k))).join(',') + '}';
  }
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
  return toJson(v);
}

/**
 * Parses JSON text keeping what `JSON.parse` loses: an integer literal
 * becomes a Number (a BigInt past 2^53), a literal with a fraction or an
 * exponent a {@link Float}, and objects become Maps with their keys sorted
 * (so any key, `__proto__` too, is an ordinary key; a repeated key keeps its
 * last value), as Rust's and Python's JSON values are written.
 */
export function parseExact(text) {
  let i = 0;
  const n = text.length;
  const fail = (what) => {
    throw new SyntaxError(`${what} at position ${i}`);
  };
  const ws = () => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      i++;
    }
  };
  const string = () => {
    const start = i++;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x22) return JSON.parse(text.slice(start, ++i));
      i += c === 0x5c ? 2 : 1;
    }
    return fail('unterminated string');
  };
  const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
  const value = (depth) => {
    if (depth > 512) fail('nested too deeply');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const out = new Map();
      ws();
      if (text[i] === '}') { i++; return out; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = string();
        ws();
        if (text[i++] !== ':') fail('expected `:`');
        out.set(key, value(depth + 1));
        ws();
        const d = text[i++];
        if (d === '}') return sortedMap(out);
        if (d !== ',') fail('expected `,` or `}`');
      }
    }
    if (c === '[') {
      i++;
      const out = [];
      ws();
      if (text[i] === ']') { i++; return out; }
      for (;;) {
        out.push(value(depth + 1));
        ws();
        const d = text[i++];
        if (d === ']') return out;
        if (d !== ',') fail('expected `,` or `]`');
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) { i += word.length; return v; }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (m === null) return fail('unexpected input');
    i = NUMBER.lastIndex;
    if (m[1] !== undefined || m[2] !== undefined) return new Float(Number(m[0]));
    const x = Number(m[0]);
    return Number.isSafeInteger(x) ? x : BigInt(m[0]);
  };
  const v = value(0);
  ws();
  if (i < n) fail('trailing characters');
  return v;
}
