"""`{{name}}`: a weft metric plugin in Python. It starts as events per event
name (answer: {"counts": {NAME: n}}); make it yours here.

Build (in this directory; writes {{name}}.wasm):
    componentize-py -d wit -w metric componentize --stub-wasi -p . app -o {{name}}.wasm
"""

import weft_plugin
from weft_plugin import Map


class EventCounts:
    def __init__(self, config):
        # Event name -> events seen; durable across restarts.
        self.counts = Map("counts")

    def ingest(self, batch):
        for event in batch:
            self.counts[event.name] = self.counts.get(event.name, 0) + 1

    def query(self, params):
        # This instance's partition's counts: the host asks every partition
        # and merges the answers. Counts add up, so the default merge (which
        # adds numbers key by key) gives the total.
        return {"counts": dict(self.counts.items())}

    # For an answer that does not just add up (rates, means, maxima, top N),
    # carry sums and counts (or all candidates) in `query` and finish here:
    #
    # def merge(self, params, partials):
    #     total = weft_plugin.deep_sum(partials)
    #     return {"counts": total["counts"], "events": sum(total["counts"].values())}


WitWorld = weft_plugin.metric(EventCounts)
