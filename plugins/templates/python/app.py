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
        return {"counts": dict(self.counts.items())}


WitWorld = weft_plugin.metric(EventCounts)
