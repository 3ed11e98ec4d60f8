// Browser timings of a running cairn, for the README's performance section.
//
//   node end2end/measure.mjs BASE_URL WORKFLOW_ID [RUNS=10] [MBIT=0]
//
// Opens the home page and /workflows/WORKFLOW_ID RUNS times each, every time in a fresh
// browser context (nothing cached), optionally over a link throttled to MBIT Mbit/s with a
// 40 ms round trip, and prints one JSON line: median and 90th percentile of the first
// contentful paint and of the moment the page is interactive (`data-hydrated="true"`), in ms
// since navigation, and the compressed WASM bytes the page fetched.
import { chromium } from "@playwright/test";
const [base, wf, runs, mbit] = [process.argv[2], process.argv[3], Number(process.argv[4] ?? 10), Number(process.argv[5] ?? 0)];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"] });
const out = {};
for (const url of ["/", `/workflows/${wf}`]) {
  const rows = [];
  for (let i = 0; i < runs; i++) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    if (mbit > 0) {
      const cdp = await ctx.newCDPSession(page);
      await cdp.send("Network.enable");
      await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 40, downloadThroughput: (mbit * 1e6) / 8, uploadThroughput: (mbit * 1e6) / 8 });
    }
    await page.goto(base + url);
    await page.waitForFunction(() => document.querySelector(".workspace")?.getAttribute("data-hydrated") === "true", null, { polling: "raf" });
    const r = await page.evaluate(() => ({
      hydrated: performance.now(),
      fcp: performance.getEntriesByType("paint").find((e) => e.name === "first-contentful-paint")?.startTime ?? -1,
      // Fetched before the page was live (afterwards the other page's view is prefetched).
      wasm_sent: performance
        .getEntriesByType("resource")
        .filter((e) => e.name.endsWith(".wasm") && e.startTime < (performance.getEntriesByName("cairn:hydrated")[0]?.startTime ?? Infinity))
        .reduce((n, e) => n + e.encodedBodySize, 0),
    }));
    rows.push(r);
    await ctx.close();
  }
  const med = (k) => { const v = rows.map((r) => r[k]).sort((a, b) => a - b); return Math.round(v[Math.floor(v.length / 2)]); };
  const p90 = (k) => { const v = rows.map((r) => r[k]).sort((a, b) => a - b); return Math.round(v[Math.floor(v.length * 0.9)]); };
  out[url.startsWith("/workflows") ? "workflow" : "home"] = { fcp_p50: med("fcp"), fcp_p90: p90("fcp"), hydrated_p50: med("hydrated"), hydrated_p90: p90("hydrated"), wasm_sent: rows[0].wasm_sent };
}
console.log(JSON.stringify(out));
await browser.close();
