/*
 * `page_stats` (example metric, the C one of four): bounce rate and time on
 * page per path, written the same way in Rust, Python and JavaScript
 * (`plugins/examples/page-stats/`), so the languages compare side by side.
 *
 * - Bounce rate of a path: of the sessions whose first page view was on it
 *   (`entries`), the share with exactly one page view (`bounces`).
 * - Time on page of a path: the mean time from a page view on it to the
 *   session's next event, over the views that have one (`timed_views`).
 *
 * Answer: {"paths": {PATH: {"entries", "bounces", "bounce_rate", "views",
 * "timed_views", "time_on_page_ms"}}}; a rate or mean without a denominator
 * is null. Each partition's `weft_query` answers its sums per path
 * ({"paths": {PATH: {"entries", "bounces", "views", "timed_views",
 * "time_ms"}}}), and `weft_merge` adds them up and divides.
 *
 * Build (in this directory; writes page_stats.wasm):
 *     make
 */
#include "weft_plugin.h"

/* Per path totals: a fixed-size value, edited in place in the `paths` map. */
struct path_stats {
    int64_t entries;
    int64_t bounces;
    int64_t views;
    int64_t timed_views;
    int64_t time_ms;
};

/* Where a user's current session stands; stored encoded in the `users` map. */
struct visit {
    weft_str session;
    /* Page views in the session, counted up to 2 (all that matters). */
    int64_t page_views;
    /* The session's first page view's path. */
    weft_str entry;
    /* The last page view not yet followed by an event. */
    bool pending;
    weft_str pending_path;
    int64_t pending_time;
};

static weft_map *paths; /* path -> struct path_stats */
static weft_map *users; /* user -> encoded struct visit */

static struct path_stats *path_stats(weft_str path) {
    return weft_map_slot(paths, path, sizeof(struct path_stats));
}

static struct visit decode_visit(weft_str in) {
    struct visit v;
    v.session = weft_take_str(&in);
    v.page_views = weft_take_i64(&in);
    v.entry = weft_take_str(&in);
    v.pending = weft_take_i64(&in) != 0;
    v.pending_path = weft_take_str(&in);
    v.pending_time = weft_take_i64(&in);
    return v;
}

static void encode_visit(weft_buf *out, const struct visit *v) {
    out->len = 0;
    weft_buf_str(out, v->session);
    weft_buf_i64(out, v->page_views);
    weft_buf_str(out, v->entry);
    weft_buf_i64(out, v->pending);
    weft_buf_str(out, v->pending_path);
    weft_buf_i64(out, v->pending_time);
}

int weft_init(weft_str config) {
    (void)config;
    paths = weft_map_new("paths");
    users = weft_map_new("users");
    return 0;
}

int weft_ingest(const weft_batch *batch) {
    weft_buf encoded = {0};
    for (size_t i = 0; i < weft_batch_len(batch); i++) {
        weft_event e = weft_batch_event(batch, i);
        /* Views into the stored value and the batch: both outlive this event. */
        weft_str stored;
        struct visit v = {0};
        if (weft_map_get(users, e.user, &stored)) v = decode_visit(stored);
        if (!weft_str_eq(v.session, e.session)) v = (struct visit){.session = e.session};

        if (v.pending) {
            struct path_stats *p = path_stats(v.pending_path);
            p->timed_views += 1;
            p->time_ms += e.time - v.pending_time;
            v.pending = false;
        }
        if (weft_str_is(e.name, "page_view")) {
            path_stats(e.path)->views += 1;
            if (v.page_views < 2) {
                v.page_views += 1;
                if (v.page_views == 1) {
                    v.entry = e.path;
                    struct path_stats *p = path_stats(v.entry);
                    p->entries += 1;
                    p->bounces += 1;
                } else {
                    /* The entry page did not bounce after all. */
                    path_stats(v.entry)->bounces -= 1;
                }
            }
            v.pending = true;
            v.pending_path = e.path;
            v.pending_time = e.time;
        }
        encode_visit(&encoded, &v);
        weft_map_set(users, e.user, encoded.ptr, encoded.len);
    }
    weft_buf_free(&encoded);
    return 0;
}

/* A partial answer: this partition's sums per path, which add up exactly. */
int weft_query(const weft_params *q, weft_json *out) {
    (void)q;
    weft_str *keys;
    size_t len = weft_map_keys(paths, &keys);
    weft_json_begin_object(out);
    weft_json_key(out, WEFT_STR("paths"));
    weft_json_begin_object(out);
    for (size_t i = 0; i < len; i++) {
        struct path_stats p;
        weft_map_read(paths, keys[i], &p, sizeof p);
        weft_json_key(out, keys[i]);
        weft_json_begin_object(out);
        weft_json_key(out, WEFT_STR("bounces"));
        weft_json_int(out, p.bounces);
        weft_json_key(out, WEFT_STR("entries"));
        weft_json_int(out, p.entries);
        weft_json_key(out, WEFT_STR("time_ms"));
        weft_json_int(out, p.time_ms);
        weft_json_key(out, WEFT_STR("timed_views"));
        weft_json_int(out, p.timed_views);
        weft_json_key(out, WEFT_STR("views"));
        weft_json_int(out, p.views);
        weft_json_end_object(out);
    }
    weft_json_end_object(out);
    weft_json_end_object(out);
    free(keys);
    return 0;
}

/* num / den, or null without a denominator. */
static void ratio(weft_json *out, double num, int64_t den) {
    if (den > 0)
        weft_json_double(out, num / (double)den);
    else
        weft_json_null(out);
}

/* Sums the partitions' totals per path (weft_deep_sum adds them up key by
 * key), then writes the rates and means. */
int weft_merge(const weft_params *q, const weft_value *partials, size_t n, weft_json *out) {
    (void)q;
    const weft_value *sum = weft_deep_sum(partials, n);
    if (!sum) return -1;
    const weft_value *by_path = weft_value_get(sum, WEFT_STR("paths"));
    if (!by_path || by_path->kind != WEFT_OBJECT) return weft_fail("a partial answer has no `paths`");
    weft_json_begin_object(out);
    weft_json_key(out, WEFT_STR("paths"));
    weft_json_begin_object(out);
    for (size_t i = 0; i < by_path->len; i++) {
        const weft_value *t = &by_path->items[i];
        struct path_stats p = {
            .entries = weft_value_int(weft_value_get(t, WEFT_STR("entries"))),
            .bounces = weft_value_int(weft_value_get(t, WEFT_STR("bounces"))),
            .views = weft_value_int(weft_value_get(t, WEFT_STR("views"))),
            .timed_views = weft_value_int(weft_value_get(t, WEFT_STR("timed_views"))),
            .time_ms = weft_value_int(weft_value_get(t, WEFT_STR("time_ms"))),
        };
        /* Keys in byte order, as serde_json writes them. */
        weft_json_key(out, by_path->keys[i]);
        weft_json_begin_object(out);
        weft_json_key(out, WEFT_STR("bounce_rate"));
        ratio(out, (double)p.bounces, p.entries);
        weft_json_key(out, WEFT_STR("bounces"));
        weft_json_int(out, p.bounces);
        weft_json_key(out, WEFT_STR("entries"));
        weft_json_int(out, p.entries);
        weft_json_key(out, WEFT_STR("time_on_page_ms"));
        ratio(out, (double)p.time_ms, p.timed_views);
        weft_json_key(out, WEFT_STR("timed_views"));
        weft_json_int(out, p.timed_views);
        weft_json_key(out, WEFT_STR("views"));
        weft_json_int(out, p.views);
        weft_json_end_object(out);
    }
    weft_json_end_object(out);
    weft_json_end_object(out);
    return 0;
}
