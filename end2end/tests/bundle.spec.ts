import { test, expect } from "./fixtures";
import { Browser } from "@playwright/test";
import { mkdirSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import path from "node:path";

const shots = path.join(__dirname, "..", "screenshots");
/** What a page may download, gzipped at level 9, before it is interactive. */
const BUDGET_GZIP_BYTES = 250_000;

interface Download {
  file: string;
  /** Bytes of the body as sent (compressed). */
  sent: number;
  /** Bytes once decompressed. */
  size: number;
}

/** Opens `url` in a fresh browser (nothing cached), waits for hydration and returns the WASM
 * files the page downloaded to get there. */
async function wasmOf(browser: Browser, baseURL: string, url: string): Promise<Download[]> {
  const context = await browser.newContext({ baseURL });
  const page = await context.newPage();
  await page.goto(url);
  await expect(page.locator(".workspace")).toHaveAttribute("data-hydrated", "true");
  // What was fetched before the page was live (afterwards the other pages' views are
  // fetched in the background).
  const files = await page.evaluate(() => {
    const live = performance.getEntriesByName("cairn:hydrated")[0]?.startTime ?? Infinity;
    return (performance.getEntriesByType("resource") as PerformanceResourceTiming[])
      .filter((e) => new URL(e.name).pathname.endsWith(".wasm") && e.startTime < live)
      .map((e) => ({
        file: new URL(e.name).pathname.split("/").pop() ?? "",
        sent: e.encodedBodySize,
        size: e.decodedBodySize,
      }));
  });
  // Once live, the page fetches the other page's view and the YAML reader in the background,
  // so that nothing it does later waits for a chunk.
  await expect
    .poll(() =>
      page.evaluate(() =>
        performance
          .getEntriesByType("resource")
          .filter((e) => /home_view|workflow_page_view|read_yaml/.test(e.name)).length,
      ),
    )
    .toBe(3);
  await context.close();
  return files;
}

test("each page downloads the WASM it needs, compressed, within its budget, and not the other pages' views", async ({ browser, baseURL, request }) => {
  const res = await request.post("/api/workflows", {
    data: { name: "bundle", steps: [{ id: "a", role: "architect", task: "x", params: { duration_ms: 50 } }] },
  });
  expect(res.status()).toBe(202);
  const id = (await res.json()).id;

  const home = await wasmOf(browser, baseURL!, "/");
  const workflow = await wasmOf(browser, baseURL!, `/workflows/${id}`);
  const names = (d: Download[]) => d.map((f) => f.file);

  // Both pages load the shell; each loads its own view and not the other's.
  expect(names(home)).toContain("cairn.wasm");
  expect(names(workflow)).toContain("cairn.wasm");
  expect(names(home).some((f) => f.includes("home_view"))).toBe(true);
  expect(names(home).some((f) => f.includes("workflow_page_view"))).toBe(false);
  // The YAML reader waits until someone types YAML.
  expect(names(home).some((f) => f.includes("read_yaml"))).toBe(false);
  expect(names(workflow).some((f) => f.includes("workflow_page_view"))).toBe(true);
  expect(names(workflow).some((f) => f.includes("home_view"))).toBe(false);
  const total = (d: Download[]) => ({
    files: d,
    sent_bytes: d.reduce((n, f) => n + f.sent, 0),
    wasm_bytes: d.reduce((n, f) => n + f.size, 0),
  });
  const report = { home: total(home), workflow: total(workflow) };
  // The size budget, counted as gzip -9 of everything the page needed to become live.
  const gzipped: Record<string, number> = {};
  for (const [name, files] of [["home", home], ["workflow", workflow]] as const) {
    let bytes = 0;
    for (const f of files) {
      const body = await (await request.get(`/pkg/${f.file}`)).body();
      expect(body.length).toBe(f.size);
      bytes += gzipSync(body, { level: 9 }).length;
    }
    gzipped[name] = bytes;
  }
  console.log("wasm per page, gzip -9", JSON.stringify(gzipped));
  for (const bytes of Object.values(gzipped)) expect(bytes).toBeLessThanOrEqual(BUDGET_GZIP_BYTES);
  // It came compressed: well under half of the bytes.
  for (const page of [report.home, report.workflow]) expect(page.sent_bytes).toBeLessThan(page.wasm_bytes / 2);
  console.log("wasm per page", JSON.stringify({ home: [report.home.sent_bytes, report.home.wasm_bytes], workflow: [report.workflow.sent_bytes, report.workflow.wasm_bytes] }));
  mkdirSync(shots, { recursive: true });
  writeFileSync(path.join(shots, "wasm-per-page.json"), JSON.stringify({ ...report, gzip9_bytes: gzipped }, null, 2));
});
