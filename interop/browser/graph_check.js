// Opens weft control's live service graph in Debian's chromium (driven over CDP by
// playwright-core, which downloads no browser) and checks what a user would see.
//
//   node graph_check.js URL SCREENSHOT EXPECTED_EDGES_JSON DRILL_NODE
//
// EXPECTED_EDGES_JSON: ["wl:frontend->wl:reviews-v1", ...]. Checks: every expected node and edge
// is drawn; every expected edge shows a non-zero req/s; the numbers change between two polls of
// graph.json; clicking DRILL_NODE opens its drill-down (instances, config versions). Saves a
// screenshot. With STALE_NODE set: prints {"ready_for_stale":true}, then expects that node to turn
// stale (greyed, "stale since") and stay drawn; saves a second screenshot (-stale.png). Prints one JSON line with what it saw; exits non-zero on a failed check.
"use strict";
const { chromium } = require("playwright-core");

const [url, shot, edgesJson, drillNode] = process.argv.slice(2);
const expected = JSON.parse(edgesJson);
const browserPath = process.env.WEFT_CHROMIUM || "/usr/bin/chromium";

function fail(msg) { throw new Error(msg); }

async function edgeNumbers(page) {
  return page.$$eval("g.edge", gs => Object.fromEntries(gs.map(g => [g.getAttribute("data-edge"), {
    rps: Number(g.getAttribute("data-rps")),
    error_rate: Number(g.getAttribute("data-error-rate")),
    text: g.textContent,
  }])));
}

(async () => {
  const browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    // Root in a container: no user namespace sandbox; small /dev/shm.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60000,
  });
  const out = { url };
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 800 } });
    const consoleErrors = [];
    page.on("console", m => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", e => consoleErrors.push(String(e)));
    // Anything fetched from elsewhere than weft control would be a broken "self-contained" promise.
    const foreign = [];
    const origin = new URL(url).origin;
    page.on("request", r => { if (!r.url().startsWith(origin)) foreign.push(r.url()); });
    await page.goto(url, { waitUntil: "load", timeout: 30000 });
    out.title = await page.title();
    for (const e of expected) {
      const [from, to] = e.split("->");
      await page.waitForSelector(`g.node[data-node="${from}"]`, { timeout: 20000 });
      await page.waitForSelector(`g.node[data-node="${to}"]`, { timeout: 20000 });
      await page.waitForSelector(`g.edge[data-edge="${e}"]`, { timeout: 20000 });
    }
    // Live numbers on every expected edge.
    await page.waitForFunction(exp => exp.every(e => {
      const g = document.querySelector(`g.edge[data-edge="${e}"]`);
      return g && Number(g.getAttribute("data-rps")) > 0;
    }), expected, { timeout: 20000 });
    const polls1 = Number(await page.getAttribute("#status", "data-polls"));
    const first = await edgeNumbers(page);
    for (const e of expected) {
      if (!(first[e].rps > 0)) fail(`edge ${e} shows ${first[e].rps} req/s`);
      if (!/req\/s/.test(first[e].text) || !/p99/.test(first[e].text)) fail(`edge ${e} label: ${first[e].text}`);
    }
    // The next poll(s): the numbers move (rates over a sliding window of a live mesh).
    let second = null, polls2 = polls1;
    for (let i = 0; i < 6; i++) {
      await page.waitForFunction(p => Number(document.getElementById("status").getAttribute("data-polls")) > p, polls2, { timeout: 10000 });
      polls2 = Number(await page.getAttribute("#status", "data-polls"));
      second = await edgeNumbers(page);
      if (expected.some(e => second[e] && second[e].rps !== first[e].rps)) break;
    }
    const changed = expected.filter(e => second[e] && second[e].rps !== first[e].rps);
    if (changed.length === 0) fail("no edge's req/s changed over 6 polls");
    for (const e of expected) if (!(second[e] && second[e].rps > 0)) fail(`edge ${e} dropped to 0 req/s`);
    out.first = first; out.second = second; out.polls = [polls1, polls2]; out.changed = changed;
    // Drill-down.
    await page.click(`g.node[data-node="${drillNode}"]`);
    const name = drillNode.replace(/^wl:/, "");
    await page.waitForSelector(`#drill-body[data-workload="${name}"]`, { timeout: 10000 });
    out.drill_instances = await page.$$eval("#drill-instances tr.instance td:first-child", tds => tds.map(t => t.textContent));
    out.drill_config_rows = await page.$$eval("#drill-config tr", trs => trs.length - 1);
    out.drill_title = await page.textContent("#drill-title");
    if (out.drill_instances.length === 0) fail("the drill-down lists no instance");
    if (out.drill_config_rows === 0) fail("the drill-down lists no ACKed config version");
    await page.waitForTimeout(300);
    await page.screenshot({ path: shot, fullPage: true });
    out.screenshot = shot;
    // STALE_NODE: say so on stdout, let the test stop that node's sidecar, then check the page
    // keeps drawing it, greyed with "stale since", and keeps polling.
    const staleNode = process.env.STALE_NODE;
    if (staleNode) {
      console.log(JSON.stringify({ ready_for_stale: true }));
      await page.waitForSelector(`g.node.stale[data-node="${staleNode}"]`, { timeout: 30000 });
      out.stale_text = await page.textContent(`g.node[data-node="${staleNode}"]`);
      if (!/stale since/.test(out.stale_text)) fail("stale node text: " + out.stale_text);
      const p = Number(await page.getAttribute("#status", "data-polls"));
      await page.waitForFunction(p => Number(document.getElementById("status").getAttribute("data-polls")) > p, p, { timeout: 10000 });
      const still = await page.$(`g.node.stale[data-node="${staleNode}"]`);
      if (!still) fail("the stale node vanished on the next poll");
      const staleShot = shot.replace(/\.png$/, "-stale.png");
      await page.screenshot({ path: staleShot, fullPage: true });
      out.stale_screenshot = staleShot;
    }
    out.console_errors = consoleErrors;
    out.foreign_requests = foreign;
    if (foreign.length) fail("the page fetched from elsewhere: " + foreign.join(", "));
    if (consoleErrors.length) fail("console errors: " + consoleErrors.join(" | "));
    out.ok = true;
  } catch (e) {
    out.ok = false;
    out.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
  process.exit(out.ok ? 0 : 1);
})();
