/*
 * `{{name}}` (weft metric): events per event name. Answer:
 * {"counts": {NAME: n}}.
 *
 * The SDK's documentation is at the top of weft/weft_plugin.h.
 * Build (writes {{name}}.wasm): make
 */
#include "weft_plugin.h"

/* event name -> int64_t count */
static weft_map *counts;

int weft_init(weft_str config) {
    (void)config; /* the plugin's config, a JSON object */
    counts = weft_map_new("counts");
    return 0;
}

int weft_ingest(const weft_batch *batch) {
    for (size_t i = 0; i < weft_batch_len(batch); i++) {
        weft_event e = weft_batch_event(batch, i);
        int64_t *n = weft_map_slot(counts, e.name, sizeof *n);
        *n += 1;
    }
    return 0;
}

/* This instance's partition's counts: the host asks every partition and
 * merges the answers. Counts add up, so the default merge (which adds numbers
 * key by key) gives the total. */
int weft_query(const weft_params *params, weft_json *out) {
    (void)params; /* the query's parameters: weft_param(params, "name", &value) */
    weft_str *names;
    size_t len = weft_map_keys(counts, &names);
    weft_json_begin_object(out);
    weft_json_key(out, WEFT_STR("counts"));
    weft_json_begin_object(out);
    for (size_t i = 0; i < len; i++) {
        int64_t n;
        weft_map_read(counts, names[i], &n, sizeof n);
        weft_json_key(out, names[i]);
        weft_json_int(out, n);
    }
    weft_json_end_object(out);
    weft_json_end_object(out);
    free(names);
    return 0;
}

/* For an answer that does not just add up (rates, means, maxima, top N),
 * carry sums and counts (or all candidates) in weft_query and finish here:
 *
 * int weft_merge(const weft_params *params, const weft_value *partials, size_t n,
 *                weft_json *out) {
 *     const weft_value *total = weft_deep_sum(partials, n);
 *     if (!total) return -1;
 *     const weft_value *counts = weft_value_get(total, WEFT_STR("counts"));
 *     int64_t events = 0;
 *     for (size_t i = 0; counts && i < counts->len; i++) events += weft_value_int(&counts->items[i]);
 *     weft_json_begin_object(out);
 *     weft_json_key(out, WEFT_STR("counts"));
 *     weft_json_value(out, counts);
 *     weft_json_key(out, WEFT_STR("events"));
 *     weft_json_int(out, events);
 *     weft_json_end_object(out);
 *     return 0;
 * }
 */
