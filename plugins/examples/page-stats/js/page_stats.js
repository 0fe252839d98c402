/**
 * `page_stats` (example metric, the JavaScript one of four): bounce rate and
 * time on page per path, written the same way in Rust, Python and C
 * (`plugins/examples/page-stats/`), so the languages compare side by side.
 *
 * - Bounce rate of a path: of the sessions whose first page view was on it
 *   (`entries`), the share with exactly one page view (`bounces`).
 * - Time on page of a path: the mean time from a page view on it to the
 *   session's next event, over the views that have one (`timed_views`).
 *
 * Answer: {"paths": {PATH: {"entries", "bounces", "bounce_rate", "views",
 * "timed_views", "time_on_page_ms"}}}; a rate or mean without a denominator
 * is null. Each partition's `query` answers its sums per path ({"paths":
 * {PATH: {"entries", "bounces", "views", "timed_views", "time_ms"}}}), and
 * `merge` adds them up and divides.
 *
 * Build (in this directory, after `npm install` once; writes page_stats.wasm):
 *     npm run build
 * (`npm run build:spidermonkey` builds page_stats_sm.wasm with the other engine.)
 */

import { metric, StateMap, float, compareKeys } from '../../../js/weft-plugin.js';

function newPath() {
  return { entries: 0, bounces: 0, views: 0, timed_views: 0, time_ms: 0 };
}

class PageStats {
  init(config) {
    // path -> totals (newPath()).
    this.paths = new StateMap('paths');
    // user -> where their current session stands: {session, page_views
    // (saturating at 2), entry (the first page view's path), pending (the
    // last page view not yet followed by an event, {path, time}, or null)}.
    this.users = new StateMap('users');
  }

  ingest(batch) {
    const paths = this.paths;
    const users = this.users;
    for (const event of batch) {
      const session = event.session;
      let visit = users.get(event.user);
      if (visit === undefined || visit.session !== session) {
        visit = { session, page_views: 0, entry: '', pending: null };
        users.set(event.user, visit);
      }
      if (visit.pending !== null) {
        const p = paths.getOrInsert(visit.pending.path, newPath);
        p.timed_views += 1;
        p.time_ms += event.time - visit.pending.time;
        visit.pending = null;
      }
      if (event.name === 'page_view') {
        const path = event.path;
        const p = paths.getOrInsert(path, newPath);
        p.views += 1;
        if (visit.page_views === 0) {
          visit.entry = path;
          p.entries += 1;
          p.bounces += 1;
        } else if (visit.page_views === 1) {
          // The entry page did not bounce after all.
          paths.get(visit.entry).bounces -= 1;
        }
        visit.page_views = Math.min(visit.page_views + 1, 2);
        visit.pending = { path, time: event.time };
      }
    }
  }

  query(params) {
    // A partial answer: this partition's sums, which add up exactly.
    return { paths: Object.fromEntries(this.paths.entries()) };
  }

  merge(params, partials) {
    // Sum the partitions' totals per path, then the rates and means.
    const totals = new Map();
    for (const partial of partials) {
      for (const [path, p] of Object.entries(partial.paths)) {
        let t = totals.get(path);
        if (t === undefined) totals.set(path, (t = newPath()));
        for (const field of Object.keys(t)) t[field] += p[field];
      }
    }
    const paths = [...totals].sort((a, b) => compareKeys(a[0], b[0])).map(([path, t]) => [path, {
      entries: t.entries,
      bounces: t.bounces,
      bounce_rate: t.entries > 0 ? float(t.bounces / t.entries) : null,
      views: t.views,
      timed_views: t.timed_views,
      time_on_page_ms: t.timed_views > 0 ? float(t.time_ms / t.timed_views) : null,
    }]);
    return { paths: new Map(paths) };
  }
}

export const { init, ingest, tick, checkpoint, query, merge } = metric(new PageStats());
