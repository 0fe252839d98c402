// weft's dashboard page: draws the declared dashboards (GET /api/dashboards)
// with Chart.js and keeps them live. GET /api/stream (Server-Sent Events)
// says when the status or a plugin changed; the panels of changed plugins
// ask their plugin again. If the stream drops, the page polls until it is
// back, and says so.
"use strict";

const state = {
  range: "all",
  from: null,
  to: null,
  paused: false,
  /** panel id → { panel, el, chart } */
  panels: new Map(),
  /** plugin → batches seen, to tell which plugins changed */
  seen: new Map(),
  lastStatus: null,
  /** [time ms, received] of the previous update, for events/s */
  lastRate: null,
  poller: null,
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
};

// ---- formats ----------------------------------------------------------------
function format(value, how) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value ?? "–");
  switch (how) {
    case "decimal": return value.toLocaleString(undefined, { maximumFractionDigits: 2 });
    case "percent": return (value * 100).toLocaleString(undefined, { maximumFractionDigits: 1 }) + " %";
    case "duration": return duration(value);
    default: return Math.round(value).toLocaleString();
  }
}

function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s} s ago` : `${Math.floor(s / 60)} min ago`;
}

// ---- the range control ------------------------------------------------------
function rangeParams() {
  if (state.range === "all") return [];
  if (state.range === "custom") {
    const out = [];
    if (state.from !== null) out.push(["from", String(state.from)]);
    if (state.to !== null) out.push(["to", String(state.to)]);
    return out;
  }
  return [["window", state.range]];
}

function wireControls() {
  $("range").addEventListener("change", (e) => {
    state.range = e.target.value;
    $("custom").hidden = state.range !== "custom";
    if (state.range !== "custom") refreshAll();
  });
  $("apply").addEventListener("click", () => {
    const parse = (id) => ($(id).value ? Date.parse($(id).value + "Z") : null);
    state.from = parse("from");
    state.to = parse("to");
    refreshAll();
  });
  $("pause").addEventListener("click", (e) => {
    state.paused = !state.paused;
    e.target.setAttribute("aria-pressed", String(state.paused));
    e.target.textContent = state.paused ? "Resume" : "Pause";
    if (!state.paused) refreshAll();
    showLive();
  });
}

// ---- live updates -----------------------------------------------------------
let connected = false;

function showLive() {
  const badge = $("live");
  const s = state.paused ? "paused" : connected ? "live" : "reconnecting";
  badge.dataset.state = s;
  badge.textContent = { paused: "paused", live: "● live", reconnecting: "reconnecting…" }[s];
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => {
    connected = true;
    stopPolling();
    showLive();
  });
  source.addEventListener("update", (e) => onUpdate(JSON.parse(e.data)));
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; meanwhile, poll.
    connected = false;
    showLive();
    startPolling();
  });
}

function startPolling() {
  if (state.poller) return;
  state.poller = setInterval(async () => {
    try {
      const [status, plugins] = await Promise.all([getJson("/api/status"), getJson("/api/plugins")]);
      onUpdate({ status, plugins });
    } catch (_) {
      /* still down: the badge says so */
    }
  }, 2000);
}

function stopPolling() {
  clearInterval(state.poller);
  state.poller = null;
}

function onUpdate({ status, plugins }) {
  drawStrip(status, plugins);
  if (state.paused) return;
  const changed = new Set();
  for (const p of plugins) {
    const key = `${p.batches}/${p.digest}/${p.status}`;
    if (state.seen.get(p.name) !== key) changed.add(p.name);
    state.seen.set(p.name, key);
  }
  for (const entry of state.panels.values()) {
    if (changed.has(entry.panel.plugin)) refresh(entry);
  }
}

// ---- the status strip -------------------------------------------------------
function drawStrip(status, plugins) {
  const ev = status.events;
  const now = Date.now();
  let rate = "–";
  if (state.lastRate && now > state.lastRate[0]) {
    rate = Math.max(0, (ev.received - state.lastRate[1]) / ((now - state.lastRate[0]) / 1000));
    rate = Math.round(rate).toLocaleString();
  }
  state.lastRate = [now, ev.received];
  const stat = (label, value, id) => el("div", { class: "stat", "data-stat": id }, el("b", { text: value }), el("span", { text: label }));
  const lag = status.source && typeof status.source.lag === "number" ? status.source.lag.toLocaleString() : "–";
  const cp = status.last_checkpoint ? ago(status.last_checkpoint.at) : "none yet";
  const items = [
    stat("events/s", rate, "rate"),
    stat("received", ev.received.toLocaleString(), "received"),
    stat("rejected", ev.rejected.toLocaleString(), "rejected"),
    stat("duplicates", ev.duplicates.toLocaleString(), "duplicates"),
    stat("source lag", lag, "lag"),
    stat("last checkpoint", cp, "checkpoint"),
  ];
  // Each partition's own figures, on hover.
  const parts = status.partitions || [];
  const detail = parts.map((p) => `partition ${p.partition}: ${p.events.received.toLocaleString()} received, ` +
    `${p.buffered} buffered, checkpoint ${p.last_checkpoint ? ago(p.last_checkpoint.at) : "none yet"}`).join("\n");
  items.push(el("div", { class: "stat", "data-stat": "partitions", title: detail },
    el("b", { text: `${parts.length} on ${status.workers}` }), el("span", { text: "partitions on workers" })));
  // The consumer group: its members and their partitions, restores under way.
  const group = status.group;
  if (group) {
    const members = group.members.map((m) => `${m.me ? "this host" : m.url}: partitions ${m.partitions.join(", ") || "none"}`);
    const restoring = group.restoring.map((r) => `restoring partition ${r.partition}: ${r.read.toLocaleString()} of ${r.total.toLocaleString()} records`);
    const label = group.restoring.length ? `hosts · ${group.restoring.length} restoring` : `hosts in ${group.group}`;
    items.push(el("div", { class: "stat", "data-stat": "group", title: [...members, ...restoring].join("\n") },
      el("b", { text: `${group.members.length}` }), el("span", { text: label })));
  }
  for (const p of plugins) {
    const title = p.quarantined ? `quarantined: ${p.quarantined}` : p.last_error || `loaded ${new Date(p.loaded_at).toISOString()}`;
    items.push(
      el("div", { class: "stat plugin", title, "data-plugin": p.name },
        el("b", { class: `status-${p.status}`, text: `${p.name} · ${p.status}` }),
        el("span", { text: `${p.role ?? "new"} · v ${p.digest.slice(0, 8)}` })));
  }
  $("strip").replaceChildren(...items);
  const notice = $("notice");
  const health = status.health || { degraded: false, problems: [] };
  if (health.degraded) {
    // Said loudly: some plugin gets no events, maybe no metric at all.
    notice.hidden = false;
    notice.className = "notice error";
    notice.dataset.kind = "degraded";
    notice.replaceChildren(el("b", { text: "The pipeline is degraded. " }),
      ...health.problems.map((p) => el("span", { class: "problem", text: `${p.what} — ${p.effect}. Way out: ${p.fix}. ` })));
  } else if (ev.received === 0) {
    notice.hidden = false;
    notice.className = "notice";
    notice.dataset.kind = "empty";
    notice.textContent = status.source_running
      ? "No events yet — is the source running? Nothing has been read from it so far."
      : "The source ended without a single event.";
  } else if (notice.dataset.kind !== "error") {
    notice.hidden = true;
  }
  state.lastStatus = status;
}

// ---- panels -----------------------------------------------------------------
async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function queryUrl(panel) {
  const params = new URLSearchParams(panel.query || "");
  if (panel.range) for (const [k, v] of rangeParams()) params.set(k, v);
  const q = params.toString();
  return `/api/plugins/${encodeURIComponent(panel.plugin)}/query${q ? "?" + q : ""}`;
}

function field(answer, name) {
  return name.split(".").reduce((v, k) => (v == null ? undefined : v[k]), answer);
}

/** What a value is, for saying what an answer holds instead of what a view needs. */
function kind(v) {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/**
 * Entries of a map field (name → number), largest first, at most `limit`.
 * Any other shape is the panel's error, not "no data".
 */
function entries(answer, name, limit) {
  const value = field(answer, name);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`\`${name}\` must be a map of name → number; the answer has ${kind(value)}`);
  }
  const list = Object.entries(value);
  const wrong = list.find(([, v]) => typeof v !== "number");
  if (wrong) {
    throw new Error(`\`${name}\` must be a map of name → number; \`${name}.${wrong[0]}\` is ${kind(wrong[1])}`);
  }
  list.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  return limit ? list.slice(0, limit) : list;
}

function body(entry, ...children) {
  const b = entry.el.querySelector(".body");
  b.replaceChildren(...children);
  return b;
}

function showError(entry, message) {
  destroyChart(entry);
  entry.el.dataset.state = "error";
  body(entry, el("p", { class: "error", text: message }));
}

function destroyChart(entry) {
  if (entry.chart) {
    entry.chart.destroy();
    entry.chart = null;
  }
}

async function refresh(entry) {
  const { panel } = entry;
  if (panel.error) return showError(entry, panel.error);
  // Answers may arrive out of order: only the newest request draws.
  const mine = (entry.asked = (entry.asked || 0) + 1);
  let answer;
  try {
    answer = await getJson(queryUrl(panel));
  } catch (e) {
    if (mine === entry.asked) showError(entry, `${panel.plugin}: ${e.message}`);
    return;
  }
  if (mine !== entry.asked) return;
  try {
    draw(entry, answer);
    entry.el.dataset.state = "ok";
  } catch (e) {
    showError(entry, `cannot draw: ${e.message}`);
  }
}

function draw(entry, answer) {
  const { panel, el: node } = entry;
  switch (panel.view) {
    case "number": {
      const v = field(answer, panel.field);
      if (typeof v !== "number") throw new Error(`\`${panel.field}\` is not a number in the answer`);
      destroyChart(entry);
      node.dataset.value = String(v);
      body(entry, el("div", { class: "value", text: format(v, panel.format) }));
      return;
    }
    case "table": {
      const rows = entries(answer, panel.field, panel.limit);
      node.dataset.values = JSON.stringify(rows);
      if (rows.length === 0) return body(entry, el("p", { class: "empty", text: "no data in this range" }));
      body(entry, el("table", {}, ...rows.map(([k, v]) =>
        el("tr", {}, el("td", { text: k }), el("td", { class: "n", text: format(v, panel.format) })))));
      return;
    }
    case "funnel": {
      const steps = field(answer, panel.field);
      if (!Array.isArray(steps) || steps.some((s) => !s || typeof s.sessions !== "number")) {
        throw new Error(`\`${panel.field}\` must be a list of steps ({name, sessions, conversion_from_first, conversion_from_previous}); the answer has ${kind(steps)}`);
      }
      node.dataset.values = JSON.stringify(steps.map((s) => [s.name, s.sessions]));
      const first = steps.length ? Math.max(1, steps[0].sessions) : 1;
      body(entry, el("div", { class: "funnel" }, ...steps.map((s) =>
        el("div", { class: "step" },
          el("div", { class: "label" },
            el("span", { text: s.name }),
            el("span", { text: `${s.sessions.toLocaleString()} · ${format(s.conversion_from_first, "percent")} of first · ${format(s.conversion_from_previous, "percent")} of previous` })),
          bar((100 * s.sessions) / first)))));
      return;
    }
    case "bar": case "pie": case "doughnut": {
      const rows = entries(answer, panel.field, panel.limit);
      node.dataset.values = JSON.stringify(rows);
      chart(entry, panel.view === "bar" ? "bar" : panel.view, rows.map((r) => r[0]),
        [{ label: panel.title, data: rows.map((r) => r[1]) }], rows.length === 0);
      return;
    }
    case "line": case "area": {
      const series = answer.series;
      if (!Array.isArray(series)) {
        throw new Error(`a ${panel.view} view needs a \`series\` of points (a \`bucket\` query); the answer has ${kind(series)}`);
      }
      for (const f of panel.fields) {
        const bad = series.find((p) => typeof field(p, f) !== "number");
        if (bad) throw new Error(`each point's \`${f}\` must be a number; one has ${kind(field(bad, f))}`);
      }
      node.dataset.points = String(series.length);
      const labels = series.map((p) => new Date(p.t).toISOString().slice(5, 16).replace("T", " "));
      const datasets = panel.fields.map((f) => ({ label: f, data: series.map((p) => field(p, f)), fill: panel.view === "area", tension: 0.25, pointRadius: 0 }));
      chart(entry, "line", labels, datasets, series.every((p) => panel.fields.every((f) => !field(p, f))));
      return;
    }
    default:
      throw new Error(`unknown view ${panel.view}`);
  }
}

/** A funnel bar `percent` wide (set through the CSSOM: the page's CSP allows no inline styles). */
function bar(percent) {
  const node = el("div", { class: "bar" });
  node.style.width = `${percent}%`;
  return node;
}

function chart(entry, type, labels, datasets, empty) {
  if (empty) {
    destroyChart(entry);
    body(entry, el("p", { class: "empty", text: "no data in this range" }));
    return;
  }
  if (entry.chart && entry.chart.config.type === type) {
    entry.chart.data.labels = labels;
    entry.chart.data.datasets = datasets;
    entry.chart.update("none");
    return;
  }
  destroyChart(entry);
  const canvas = el("canvas");
  body(entry, canvas);
  entry.chart = new Chart(canvas, {
    type,
    data: { labels, datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      plugins: { legend: { display: type !== "bar" } },
      indexAxis: type === "bar" ? "y" : "x",
      scales: type === "bar" ? { y: { ticks: { autoSkip: false } } } : undefined,
    },
  });
}

// ---- start ------------------------------------------------------------------
async function start() {
  wireControls();
  showLive();
  let list;
  try {
    list = await getJson("/api/dashboards");
  } catch (e) {
    const notice = $("notice");
    notice.hidden = false;
    notice.dataset.kind = "error";
    notice.className = "notice error";
    notice.textContent = `Cannot load the dashboards: ${e.message}`;
    return;
  }
  const main = $("dashboards");
  for (const item of list) {
    const dashboard = await getJson(`/api/dashboards/${encodeURIComponent(item.name)}`);
    const grid = el("div", { class: "grid" });
    const section = el("section", { class: "dashboard", "data-dashboard": dashboard.name },
      el("h2", { text: dashboard.title }), grid);
    if (dashboard.error) grid.append(el("p", { class: "error", text: dashboard.error }));
    dashboard.panels.forEach((panel, i) => {
      const id = `${dashboard.name}-${i}`;
      const wide = ["line", "area", "funnel"].includes(panel.view);
      const node = el("article", { class: wide ? "panel wide" : "panel", id: `panel-${id}`, "data-plugin": panel.plugin, "data-view": panel.view, "data-title": panel.title },
        el("h3", { text: panel.title }), el("div", { class: "body" }, el("p", { class: "empty", text: "loading…" })));
      grid.append(node);
      state.panels.set(id, { panel, el: node, chart: null });
    });
    main.append(section);
  }
  refreshAll();
  connect();
}

function refreshAll() {
  for (const entry of state.panels.values()) refresh(entry);
}

start();
