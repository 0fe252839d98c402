"""`page_stats` (example metric, the Python one of four): bounce rate and
time on page per path, written the same way in Rust, JavaScript and C
(`plugins/examples/page-stats/`), so the languages compare side by side.

- Bounce rate of a path: of the sessions whose first page view was on it
  (`entries`), the share with exactly one page view (`bounces`).
- Time on page of a path: the mean time from a page view on it to the
  session's next event, over the views that have one (`timed_views`).

Answer: {"paths": {PATH: {"entries", "bounces", "bounce_rate", "views",
"timed_views", "time_on_page_ms"}}}; a rate or mean without a denominator
is null. Each partition's `query` answers its sums per path ({"paths":
{PATH: {"entries", "bounces", "views", "timed_views", "time_ms"}}}), and
`merge` adds them up and divides.

Build (in this directory; writes page_stats.wasm):
    componentize-py -d ../../../../wit -w metric componentize --stub-wasi -p . -p ../../../python page_stats -o page_stats.wasm
"""

import weft_plugin
from weft_plugin import Map


def new_path():
    return {"entries": 0, "bounces": 0, "views": 0, "timed_views": 0, "time_ms": 0}


class PageStats:
    def __init__(self, config):
        # path -> totals (new_path()).
        self.paths = Map("paths")
        # user -> where their current session stands: session id, page views
        # so far (saturating at 2), the entry path, and the last page view
        # not yet followed by an event as [path, time] (or None).
        self.users = Map("users")

    def ingest(self, batch):
        paths, users = self.paths, self.users
        for event in batch:
            visit = users.setdefault(event.user, {})
            if visit.get("session") != event.session:
                visit.update(session=event.session, page_views=0, entry="", pending=None)
            if visit["pending"] is not None:
                path, time = visit["pending"]
                p = paths.setdefault(path, new_path())
                p["timed_views"] += 1
                p["time_ms"] += event.time - time
                visit["pending"] = None
            if event.name == "page_view":
                p = paths.setdefault(event.path, new_path())
                p["views"] += 1
                if visit["page_views"] == 0:
                    visit["entry"] = event.path
                    p["entries"] += 1
                    p["bounces"] += 1
                elif visit["page_views"] == 1 and visit["entry"] in paths:
                    # The entry page did not bounce after all.
                    paths[visit["entry"]]["bounces"] -= 1
                visit["page_views"] = min(visit["page_views"] + 1, 2)
                visit["pending"] = [event.path, event.time]

    def query(self, params):
        # A partial answer: this partition's sums, which add up exactly.
        return {"paths": dict(self.paths.items())}

    def merge(self, params, partials):
        # Sum the partitions' totals per path, then the rates and means.
        totals = {}
        for partial in partials:
            for path, p in partial["paths"].items():
                t = totals.setdefault(path, new_path())
                for field in t:
                    t[field] += p[field]

        def ratio(n, d):
            return float(n) / float(d) if d else None

        return {
            "paths": {
                path: {
                    "entries": t["entries"],
                    "bounces": t["bounces"],
                    "bounce_rate": ratio(t["bounces"], t["entries"]),
                    "views": t["views"],
                    "timed_views": t["timed_views"],
                    "time_on_page_ms": ratio(t["time_ms"], t["timed_views"]),
                }
                for path, t in totals.items()
            }
        }


WitWorld = weft_plugin.metric(PageStats)
