/**
 * `{{name}}`: a weft metric plugin — events per event name, continuously
 * updated. Answer: {"counts": {NAME: n}}.
 *
 * Build (after `npm install` once; writes {{name}}.wasm):  npm run build
 * Test:  weft plugin test {{name}}.wasm --events events.jsonl --expect expected.json
 *
 * The SDK's documentation is at the top of `weft-plugin.js`.
 */

import { metric, StateMap } from './weft-plugin.js';

class Counts {
  init(config) {
    // event name -> count; durable: the host keeps it across restarts.
    this.counts = new StateMap('counts');
  }

  ingest(batch) {
    for (const event of batch) {
      this.counts.set(event.name, (this.counts.get(event.name) ?? 0) + 1);
    }
  }

  query(params) {
    // This instance's partition's counts: the host asks every partition and
    // merges the answers. Counts add up, so the default merge (which adds
    // numbers key by key) gives the total.
    return { counts: Object.fromEntries(this.counts.entries()) };
  }

  // For an answer that does not just add up (rates, means, maxima, top N),
  // carry sums and counts (or all candidates) in `query` and finish here:
  //
  // merge(params, partials) {
  //   const total = deepSum(partials); // import { deepSum } from './weft-plugin.js'
  //   return { counts: total.counts, events: Object.values(total.counts).reduce((a, b) => a + b, 0) };
  // }
}

export const { init, ingest, tick, checkpoint, query, merge } = metric(new Counts());
