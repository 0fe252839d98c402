// Drives the dashboard page in the system's headless Chromium for
// tests/tests/dashboard.rs: `node dashboard.mjs BASE_URL`, then one command
// per line on stdin, one JSON answer per line on stdout:
//   snapshot         what every panel shows (values read from the DOM)
//   range VALUE      picks a time range (5m, 1h, 24h, all)
//   screenshot PATH  a full-page screenshot
//   quit             (or the end of the input)
// The page is loaded once; a marker set on `window` tells whether it was
// ever reloaded.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.WEFT_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
console.error("dashboard.mjs: chromium started");
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
await page.goto(base, { waitUntil: "load" });
await page.evaluate(() => { window.__weftLoadedOnce = true; });
console.error(`dashboard.mjs: ${base} loaded`);

const answer = (value) => process.stdout.write(JSON.stringify(value) + "\n");

for await (const line of createInterface({ input: process.stdin })) {
  const [command, arg] = line.trim().split(/\s+/, 2);
  if (command === "snapshot") {
    answer(await page.evaluate(() => ({
      notReloaded: window.__weftLoadedOnce === true,
      live: document.getElementById("live").dataset.state,
      notice: document.getElementById("notice").hidden ? null : document.getElementById("notice").textContent,
      strip: Object.fromEntries([...document.querySelectorAll("#strip [data-stat]")].map((s) => [s.dataset.stat, s.querySelector("b").textContent])),
      plugins: [...document.querySelectorAll("#strip [data-plugin]")].map((p) => p.querySelector("b").textContent),
      panels: [...document.querySelectorAll("article.panel")].map((p) => ({
        id: p.id,
        dashboard: p.closest("section").dataset.dashboard,
        title: p.dataset.title,
        plugin: p.dataset.plugin,
        view: p.dataset.view,
        state: p.dataset.state || "loading",
        value: p.dataset.value === undefined ? null : Number(p.dataset.value),
        values: p.dataset.values === undefined ? null : JSON.parse(p.dataset.values),
        points: p.dataset.points === undefined ? null : Number(p.dataset.points),
        canvas: p.querySelector("canvas") !== null,
        error: p.querySelector(".error")?.textContent ?? null,
      })),
      problems: [],
    })));
  } else if (command === "range") {
    await page.selectOption("#range", arg);
    answer({ ok: true });
  } else if (command === "screenshot") {
    try {
      await page.screenshot({ path: arg, fullPage: true, animations: "disabled", timeout: 30000 });
      answer({ ok: true, problems });
    } catch (e) {
      answer({ ok: false, error: String(e), problems });
    }
  } else if (command === "quit") {
    break;
  } else {
    answer({ error: `unknown command ${command}` });
  }
}
await browser.close();
process.exit(0);
