/*
 * weft_plugin.h — the C SDK for weft metric plugins.
 *
 * A weft metric is a WebAssembly component that ingests batches of
 * clickstream events and answers queries with JSON. This SDK sits on the
 * bindings `wit-bindgen c` generates for the `metric` world of weft.wit and
 * hides them: a plugin author includes this header, implements the `weft_*`
 * hooks below and writes no glue.
 *
 *   int weft_init(weft_str config);                        optional
 *   int weft_ingest(const weft_batch *batch);              required
 *   int weft_tick(int64_t watermark);                      optional
 *   int weft_query(const weft_params *q, weft_json *out);  required
 *   int weft_merge(const weft_params *q, const weft_value *partials,
 *                  size_t n, weft_json *out);              optional
 *
 * Each hook returns 0 on success; on failure it returns `weft_fail("...")`,
 * whose message reaches the host as the WIT `result` error. Checkpoints are
 * handled by the SDK: it writes every changed map entry to the host.
 *
 * Partitions: the host splits the users into partitions, each with its own
 * instance of the plugin (every event of a user goes to one partition). So
 * `weft_query` writes a *partial* answer, this partition's, and `weft_merge`
 * combines the `n` partial answers (parsed JSON, at least one, in no
 * particular order) into the answer the user gets. Without a `weft_merge`
 * the SDK's default writes `weft_deep_sum(partials, n)`: objects merged key
 * by key, numbers added, equal strings/booleans/nulls/arrays kept, anything
 * else an error. Carry sums and counts in the partial; compute rates, means
 * and top-N lists in `weft_merge` (which may start from weft_deep_sum).
 *
 * What the SDK offers:
 * - batches: `weft_batch_event` decodes event `i` into a `weft_event` whose
 *   string fields are views into the batch (valid during `weft_ingest` only);
 * - durable state: `weft_map`, a map from string keys to byte values, cached
 *   in guest memory, read from the host on first use and written back at
 *   every checkpoint (key in the host: map name + "\0" + key). Fixed-size
 *   values (structs of int64 counters) are edited in place with
 *   `weft_map_slot`; variable values are encoded with `weft_buf_*` and
 *   decoded with `weft_take_*`;
 * - query answers: `weft_json`, a small streaming JSON writer;
 * - merging partial answers: `weft_value`, parsed JSON (`weft_json_parse`),
 *   `weft_value_get` to look inside, `weft_deep_sum`, `weft_json_value`;
 * - `weft_log`, printf-style log lines attributed to the plugin by the host.
 *
 * A complete plugin (events per name, answering {"counts": {NAME: n}}):
 *
 *   #include "weft_plugin.h"
 *
 *   static weft_map *counts;
 *
 *   int weft_init(weft_str config) {
 *       counts = weft_map_new("counts");
 *       return 0;
 *   }
 *
 *   int weft_ingest(const weft_batch *batch) {
 *       for (size_t i = 0; i < weft_batch_len(batch); i++) {
 *           weft_event e = weft_batch_event(batch, i);
 *           int64_t *n = weft_map_slot(counts, e.name, sizeof *n);
 *           *n += 1;
 *       }
 *       return 0;
 *   }
 *
 *   int weft_query(const weft_params *q, weft_json *out) {
 *       weft_str *names;
 *       size_t len = weft_map_keys(counts, &names);
 *       weft_json_begin_object(out);
 *       weft_json_key(out, WEFT_STR("counts"));
 *       weft_json_begin_object(out);
 *       for (size_t i = 0; i < len; i++) {
 *           int64_t n = 0;
 *           weft_map_read(counts, names[i], &n, sizeof n);
 *           weft_json_key(out, names[i]);
 *           weft_json_int(out, n);
 *       }
 *       weft_json_end_object(out);
 *       weft_json_end_object(out);
 *       free(names);
 *       return 0;
 *   }
 *   No weft_merge: the default adds the partitions' {"counts": ...} up.
 *
 * Build (see weft.mk): `wit-bindgen c WIT --world metric`, clang for
 * wasm32-wasi as a reactor, then `wasm-tools component new`.
 */
#ifndef WEFT_PLUGIN_H
#define WEFT_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Strings ------------------------------------------------------------ */

/* A view of bytes (usually UTF-8 text); not NUL-terminated. */
typedef struct weft_str {
    const char *ptr;
    size_t len;
} weft_str;

/* A view of a string literal. */
#define WEFT_STR(lit) ((weft_str){(lit), sizeof(lit) - 1})

/* A view of a NUL-terminated string. */
weft_str weft_str_of(const char *s);
/* Whether `a` holds the same bytes as `b`. */
bool weft_str_eq(weft_str a, weft_str b);
/* Whether `a` holds the same bytes as the NUL-terminated `s`. */
bool weft_str_is(weft_str a, const char *s);

/* ---- Batches ------------------------------------------------------------ */

/* A batch of events in event-time order (opaque). */
typedef struct weft_batch weft_batch;

/* One event. Absent string fields are empty views. */
typedef struct weft_event {
    weft_str id;       /* producer-assigned unique id, or "" */
    int64_t time;      /* event time, epoch milliseconds (UTC) */
    weft_str user;
    weft_str name;     /* e.g. "page_view" */
    weft_str session;  /* set by the host's sessionizer */
    weft_str path;     /* e.g. "/products/42" */
    weft_str device;
    weft_str browser;
    weft_str os;
    uint32_t props_len; /* number of other properties; see weft_event_prop_at */
    /* The batch and first property, for the prop accessors. */
    const weft_batch *batch;
    uint32_t props_start;
} weft_event;

size_t weft_batch_len(const weft_batch *batch);
/* Event `i` (0 <= i < weft_batch_len). */
weft_event weft_batch_event(const weft_batch *batch, size_t i);
/* String `index` of the batch's string table ("" when out of range). */
weft_str weft_batch_str(const weft_batch *batch, uint32_t index);
/* Property `i` (0 <= i < e->props_len) of an event; false when out of range. */
bool weft_event_prop_at(const weft_event *e, uint32_t i, weft_str *key, weft_str *value);
/* The value of property `key`; false when the event has none. */
bool weft_event_prop(const weft_event *e, const char *key, weft_str *value);

/* ---- Durable state ------------------------------------------------------ */

/*
 * A durable map from string keys to byte values. Create each map once (in
 * weft_init) with a name unique within the plugin; a map created after a
 * restart finds the values of the last checkpoint. Changes become durable at
 * the next checkpoint. Views and pointers a map hands out stay valid until
 * the same key is set or deleted.
 */
typedef struct weft_map weft_map;

weft_map *weft_map_new(const char *name);
/* The value of `key`, as a view; false when absent. */
bool weft_map_get(weft_map *map, weft_str key, weft_str *value);
/* Sets `key` to a copy of `len` bytes at `value`. */
void weft_map_set(weft_map *map, weft_str key, const void *value, size_t len);
void weft_map_delete(weft_map *map, weft_str key);
/*
 * The value of `key` as `size` mutable bytes, for a fixed-size value such as
 * a struct of int64 counters: zero-filled when absent (and beyond the stored
 * length when the stored value is shorter, so fields can be appended later).
 * The entry counts as changed.
 */
void *weft_map_slot(weft_map *map, weft_str key, size_t size);
/* Copies the value of `key` into `size` bytes at `out` (zero-filled as for
 * weft_map_slot) without changing it; false (and all zeros) when absent. */
bool weft_map_read(weft_map *map, weft_str key, void *out, size_t size);
/*
 * Every present key, in byte order, as an array the caller frees with
 * free(). The first call reads every entry the host holds into guest memory,
 * so keys from before a restart are listed too.
 */
size_t weft_map_keys(weft_map *map, weft_str **keys);

/* ---- Encoding values ---------------------------------------------------- */

/* A growable byte buffer; start from `weft_buf b = {0};`. */
typedef struct weft_buf {
    char *ptr;
    size_t len;
    size_t cap;
} weft_buf;

void weft_buf_bytes(weft_buf *b, const void *bytes, size_t len);
/* Appends an int64 (8 bytes, little-endian). */
void weft_buf_i64(weft_buf *b, int64_t v);
/* Appends a string: its length (as weft_buf_i64) then its bytes. */
void weft_buf_str(weft_buf *b, weft_str s);
void weft_buf_free(weft_buf *b);

/* Take values written by weft_buf_i64 / weft_buf_str from the front of `in`;
 * a truncated input reads as 0 / "". */
int64_t weft_take_i64(weft_str *in);
weft_str weft_take_str(weft_str *in);

/* ---- Query answers ------------------------------------------------------ */

/* Query parameters, as given to GET /api/plugins/NAME/query?... (opaque). */
typedef struct weft_params weft_params;

size_t weft_params_len(const weft_params *q);
bool weft_params_at(const weft_params *q, size_t i, weft_str *name, weft_str *value);
/* The first value of parameter `name`; false when absent. */
bool weft_param(const weft_params *q, const char *name, weft_str *value);

/*
 * A streaming JSON writer: values are separated by commas as needed; inside
 * an object, write a key before every value. Doubles are written in their
 * shortest round-trip form (as Rust's serde_json does); NaN and infinities
 * as null.
 */
typedef struct weft_json {
    weft_buf buf;
    uint64_t nonempty; /* bit d: the container at depth d has a value */
    int depth;
    bool after_key;
} weft_json;

void weft_json_begin_object(weft_json *j);
void weft_json_end_object(weft_json *j);
void weft_json_begin_array(weft_json *j);
void weft_json_end_array(weft_json *j);
void weft_json_key(weft_json *j, weft_str key);
void weft_json_str(weft_json *j, weft_str s);
void weft_json_int(weft_json *j, int64_t v);
void weft_json_double(weft_json *j, double v);
void weft_json_bool(weft_json *j, bool v);
void weft_json_null(weft_json *j);
/* Appends `text`, which must be one JSON value, as is. */
void weft_json_raw(weft_json *j, weft_str text);

/* ---- Reading JSON and merging partial answers ------------------------------ */

typedef enum weft_kind {
    WEFT_NULL,
    WEFT_BOOL,
    WEFT_INT,
    WEFT_DOUBLE,
    WEFT_STRING,
    WEFT_ARRAY,
    WEFT_OBJECT,
} weft_kind;

/*
 * A parsed JSON value. A number written without fraction or exponent that
 * fits an int64 is WEFT_INT, any other number WEFT_DOUBLE. An object's
 * members are sorted by key (byte order), keys distinct (of a repeated key
 * the last value counts). Values live until the hook that got or made them
 * returns: copy what you keep.
 */
typedef struct weft_value {
    weft_kind kind;
    bool boolean;                   /* WEFT_BOOL */
    int64_t integer;                /* WEFT_INT */
    double number;                  /* WEFT_INT, WEFT_DOUBLE: the value as a double */
    weft_str string;                /* WEFT_STRING: unescaped UTF-8 */
    size_t len;                     /* WEFT_ARRAY, WEFT_OBJECT: number of items */
    const struct weft_value *items; /* the elements, or the members' values */
    const weft_str *keys;           /* WEFT_OBJECT: the members' keys */
} weft_value;

/* Parses one JSON value (the config in weft_init, say); NULL, with a
 * weft_fail message, when `text` is not JSON. */
const weft_value *weft_json_parse(weft_str text);
/* The member `key` of an object; NULL when `object` is NULL, not an object,
 * or has no such member. */
const weft_value *weft_value_get(const weft_value *object, weft_str key);
/* A number's value (a WEFT_DOUBLE truncated, saturating); 0 for anything
 * else, NULL too. */
int64_t weft_value_int(const weft_value *v);
/* A number's value as a double; 0 for anything else, NULL too. */
double weft_value_double(const weft_value *v);
/*
 * The default merge: `n` values added up, deeply, by the rules of the Rust
 * SDK's `merge::sum`. Objects are merged key by key (a key missing from
 * some values is the sum of the others), numbers added (WEFT_INTs give a
 * WEFT_INT and fail on an int64 overflow; with a WEFT_DOUBLE, a
 * WEFT_DOUBLE), equal strings, booleans, nulls and arrays kept. Anything
 * else (two different strings or arrays, a string and a number, ...) fails,
 * naming where, and so does n == 0: NULL, with a weft_fail message, so that
 * a hook can `if (!sum) return -1;`. One value comes back as it is.
 */
const weft_value *weft_deep_sum(const weft_value *values, size_t n);
/* Writes `v` (NULL writes null). */
void weft_json_value(weft_json *j, const weft_value *v);

/* ---- Errors and logging ------------------------------------------------- */

/* Records a printf-style error message for the host; returns -1, so that a
 * hook can `return weft_fail("bad config: %s", why);`. */
int weft_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

typedef enum weft_level {
    WEFT_TRACE,
    WEFT_DEBUG,
    WEFT_INFO,
    WEFT_WARN,
    WEFT_ERROR,
} weft_level;

/* A printf-style log line, attributed to the plugin by the host. */
void weft_log(weft_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- The hooks a plugin implements ---------------------------------------- */

/* Called once per instance with its config, a JSON object ("{}" if none).
 * Create the plugin's maps here. Optional. */
int weft_init(weft_str config);
/* Folds a batch of events (in event-time order) into the metric. */
int weft_ingest(const weft_batch *batch);
/* Event time has reached `watermark` (epoch ms): no older event follows.
 * Optional. */
int weft_tick(int64_t watermark);
/* Answers a query for this instance's partition: write one JSON value, the
 * partial answer weft_merge combines, to `out`. */
int weft_query(const weft_params *q, weft_json *out);
/* Combines the partial answers `partials[0 .. n]` (n >= 1, in no particular
 * order) of every partition's weft_query into the answer: write one JSON
 * value to `out`. Depends on nothing but its arguments. Optional: the
 * default writes weft_deep_sum(partials, n). */
int weft_merge(const weft_params *q, const weft_value *partials, size_t n, weft_json *out);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_PLUGIN_H */
