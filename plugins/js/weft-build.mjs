#!/usr/bin/env node
/**
 * weft-build.mjs — builds a weft metric written in JavaScript into a component.
 *
 *   node weft-build.mjs ENTRY.js -o OUT.wasm --wit WIT_DIR [--engine quickjs|spidermonkey]
 *
 * Run it in the plugin's npm project (the tools are looked up in its
 * node_modules: `componentize-qjs`, which jco uses for QuickJS, and
 * `@bytecodealliance/componentize-js` for SpiderMonkey). Both engines build
 * the `metric` world with no WASI imports, so they also run where the host
 * offers none:
 *
 * - quickjs (default): small (~1.6 MB) and fast to compile and call. Its
 *   runtime has an `init` export of its own, which clashes with the world's
 *   `init`; so the world is built with `init` named `weft-init` (a derived
 *   copy of the WIT in a temporary directory, and a generated entry module
 *   that exports the plugin's `init` as `weftInit`), and afterwards the
 *   component's top-level exports are renamed: the runtime's `init` to
 *   `componentize-qjs-init` (which the host never calls) and `weft-init`
 *   to `init`. WASI calls (clocks, random) trap: a metric uses event time.
 * - spidermonkey: componentize-js with every WASI feature disabled; ~12 MB,
 *   slower to compile and to call.
 *
 * Modules are resolved from the closest directory holding both ENTRY.js and
 * this file, so the plugin imports the SDK by relative path
 * (`../weft-plugin.js` or wherever it sits).
 */

import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const USAGE = 'usage: node weft-build.mjs ENTRY.js -o OUT.wasm --wit WIT_DIR [--engine quickjs|spidermonkey] [--world metric]';

function parseArgs(argv) {
  const opts = { engine: 'quickjs', world: 'metric' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (a === '-o' || a === '--out') opts.out = value();
    else if (a === '--wit') opts.wit = value();
    else if (a === '--engine') opts.engine = value();
    else if (a === '--world') opts.world = value();
    else if (a === '-h' || a === '--help') { console.log(USAGE); process.exit(0); }
    else if (a.startsWith('-') || opts.entry) fail(`unexpected argument ${a}\n${USAGE}`);
    else opts.entry = a;
  }
  if (!opts.entry || !opts.out || !opts.wit) fail(USAGE);
  if (opts.engine === 'qjs') opts.engine = 'quickjs';
  if (opts.engine === 'sm' || opts.engine === 'starlingmonkey') opts.engine = 'spidermonkey';
  if (!['quickjs', 'spidermonkey'].includes(opts.engine)) fail(`unknown engine ${opts.engine}\n${USAGE}`);
  return opts;
}

function fail(message) {
  console.error(message);
  process.exit(2);
}

/** Imports npm package `name` from the node_modules above the working directory. */
async function importTool(name) {
  for (let dir = process.cwd(); ; dir = dirname(dir)) {
    const pkgDir = join(dir, 'node_modules', name);
    let pkg;
    try {
      pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
    } catch {
      if (dirname(dir) === dir) fail(`${name} is not installed: run \`npm install\` in the plugin's project`);
      continue;
    }
    const exp = pkg.exports?.import ?? pkg.exports?.['.']?.import ?? pkg.main ?? 'index.js';
    const mod = await import(pathToFileURL(join(pkgDir, exp)).href);
    return mod.componentize ? mod : mod.default;
  }
}

/** The closest directory holding both `a` and `b`. */
function commonDir(a, b) {
  const x = a.split(sep);
  const y = b.split(sep);
  let n = 0;
  while (n < x.length && n < y.length && x[n] === y[n]) n++;
  return x.slice(0, n).join(sep) || sep;
}

async function buildSpiderMonkey({ entry, witDir, world, root }) {
  const { componentize } = await importTool('@bytecodealliance/componentize-js');
  // componentize-js maps the working directory to "/" while it runs the
  // module at build time; run it from `root` so relative imports resolve.
  const caller = process.cwd();
  process.chdir(root);
  try {
    const { component } = await componentize({
      sourcePath: entry,
      witPath: witDir,
      worldName: world,
      disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
    });
    return component;
  } finally {
    process.chdir(caller);
  }
}

const RENAMED_INIT = 'weft-init';
const RUNTIME_INIT = 'componentize-qjs-init';

async function buildQuickJs({ entry, witDir, world, root }) {
  const { componentize } = await importTool('componentize-qjs');
  const work = mkdtempSync(join(tmpdir(), 'weft-qjs-'));
  try {
    let renamed = 0;
    for (const file of readdirSync(witDir)) {
      const path = join(witDir, file);
      if (!file.endsWith('.wit') || !statSync(path).isFile()) continue;
      const text = readFileSync(path, 'utf8').replace(/\bexport init:/g, () => {
        renamed++;
        return `export ${RENAMED_INIT}:`;
      });
      writeFileSync(join(work, file), text);
    }
    if (renamed === 0) fail(`no \`export init:\` found in ${witDir}`);
    // The entry module that exports the plugin's `init` under the renamed
    // name; it sits beside ENTRY.js (for the duration of the build) so that
    // `./ENTRY.js` resolves.
    const self = `./${basename(entry)}`;
    const source = `export * from '${self}';\nexport { init as weftInit } from '${self}';\n`;
    const wrapper = join(dirname(entry), '.weft-entry.js');
    writeFileSync(wrapper, source);
    let component;
    try {
      ({ component } = await componentize({
        witPath: work,
        jsSource: source,
        jsPath: wrapper,
        moduleRoot: root,
        world,
        sync: true,
        stubWasi: true,
      }));
    } finally {
      rmSync(wrapper, { force: true });
    }
    return renameExports(component, { init: RUNTIME_INIT, [RENAMED_INIT]: 'init' });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// Renaming a component's top-level exports (component binary format:
// sections of id, LEB128 size, contents; the export section has id 11).

function readU32(bytes, pos) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[pos++];
    value += (b & 0x7f) * 2 ** shift;
    if (b < 0x80) return [value, pos];
    shift += 7;
  }
}

function writeU32(value) {
  const out = [];
  do {
    let b = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) b |= 0x80;
    out.push(b);
  } while (value > 0);
  return Uint8Array.from(out);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Renames top-level exports per `renames` (old name -> new name). */
export function renameExports(component, renames) {
  const bytes = new Uint8Array(component);
  const preamble = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
  if (!preamble.every((b, i) => bytes[i] === b)) throw new Error('not a WebAssembly component');
  const parts = [bytes.subarray(0, 8)];
  const found = new Set();
  let pos = 8;
  while (pos < bytes.length) {
    const id = bytes[pos];
    const [size, start] = readU32(bytes, pos + 1);
    const end = start + size;
    if (id === 11) {
      const contents = renameInExportSection(bytes.subarray(start, end), renames, found);
      parts.push(Uint8Array.of(id), writeU32(contents.length), contents);
    } else {
      parts.push(bytes.subarray(pos, end));
    }
    pos = end;
  }
  for (const name of Object.keys(renames)) {
    if (!found.has(name)) throw new Error(`the component has no export \`${name}\``);
  }
  return concat(parts);
}

function renameInExportSection(section, renames, found) {
  const [count, first] = readU32(section, 0);
  const parts = [section.subarray(0, first)];
  let pos = first;
  for (let i = 0; i < count; i++) {
    if (section[pos] !== 0x00) throw new Error(`unsupported export name encoding 0x${section[pos].toString(16)}`);
    const [len, nameStart] = readU32(section, pos + 1);
    const name = new TextDecoder().decode(section.subarray(nameStart, nameStart + len));
    let rest = nameStart + len;
    // sortidx: sort (a core sort takes a second byte), then an index
    rest = readU32(section, section[rest] === 0x00 ? rest + 2 : rest + 1)[1];
    // optional externdesc
    if (section[rest++] === 0x01) rest = skipExternDesc(section, rest);
    if (Object.hasOwn(renames, name)) {
      found.add(name);
      const renamed = new TextEncoder().encode(renames[name]);
      parts.push(Uint8Array.of(0x00), writeU32(renamed.length), renamed, section.subarray(nameStart + len, rest));
    } else {
      parts.push(section.subarray(pos, rest));
    }
    pos = rest;
  }
  if (pos !== section.length) throw new Error('export section has trailing bytes');
  return concat(parts);
}

function skipExternDesc(bytes, pos) {
  const kind = bytes[pos++];
  switch (kind) {
    case 0x00: return readU32(bytes, pos + 1)[1]; // core module: 0x11, type index
    case 0x01: case 0x04: case 0x05: return readU32(bytes, pos)[1]; // func, component, instance type
    case 0x02: return readU32(bytes, pos)[1]; // value: a primitive (one byte) or a type index
    case 0x03: return bytes[pos] === 0x00 ? readU32(bytes, pos + 1)[1] : pos + 1; // type bound
    default: throw new Error(`unknown externdesc 0x${kind.toString(16)}`);
  }
}

// ---------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const entry = resolve(opts.entry);
  const witDir = resolve(opts.wit);
  const root = commonDir(dirname(entry), dirname(fileURLToPath(import.meta.url)));
  const started = Date.now();
  const args = { entry, witDir, world: opts.world, root };
  const component = opts.engine === 'quickjs' ? await buildQuickJs(args) : await buildSpiderMonkey(args);
  writeFileSync(opts.out, component);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`${opts.out}: ${component.length} bytes (${opts.engine}, ${seconds} s)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e?.stack ?? String(e));
    process.exit(1);
  });
}
