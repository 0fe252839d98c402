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
 *
 * Each hook returns 0 on success; on failure it returns `weft_fail("...")`,
 * whose message reaches the host as the WIT `result` error. Checkpoints are
 * handled by the SDK: it writes every changed map entry to the host.
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
/* Answers a query: write one JSON value to `out`. */
int weft_query(const weft_params *q, weft_json *out);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_PLUGIN_H */
