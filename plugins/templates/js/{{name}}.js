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
    return { counts: Object.fromEntries(this.counts.entries()) };
  }
}

export const { init, ingest, tick, checkpoint, query } = metric(new Counts());
