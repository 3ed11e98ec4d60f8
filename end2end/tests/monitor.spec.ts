import { test, expect, startServer, CairnServer } from "./fixtures";
import { Page, APIRequestContext } from "@playwright/test";
import { mkdirSync, writeFileSync, rmSync } from "node:fs";
import path from "node:path";

const shots = path.join(__dirname, "..", "screenshots");
mkdirSync(shots, { recursive: true });

async function startVia(request: APIRequestContext, spec: object): Promise<string> {
  const res = await request.post("/api/workflows", { data: spec });
  expect(res.status()).toBe(202);
  return (await res.json()).id;
}

const step = (page: Page, id: string) => page.getByTestId(`step-${id}`);

async function hydrated(page: Page) {
  await expect(page.locator(".workspace")).toHaveAttribute("data-hydrated", "true");
}

test("lifecycle: start the example chain from the form and watch it complete live", async ({ page }) => {
  await page.goto("/");
  const paint = await page.evaluate(() =>
    performance.getEntriesByType("paint").find((e) => e.name === "first-contentful-paint")?.startTime ?? -1,
  );
  await hydrated(page);
  const hydratedMs = await page.evaluate(() => performance.getEntriesByName("cairn:hydrated")[0].startTime);
  await expect(page.getByTestId("connection")).toHaveText(/live/);
  await page.evaluate(() => ((window as any).__noReload = true));

  await page.getByRole("button", { name: "Start workflow" }).click();
  await expect(page).toHaveURL(/\/workflows\/wf_/);
  const tStart = Date.now();
  await expect(page.getByTestId("workflow-name")).toHaveText("ship-login");

  // It shows up in the sidebar, live.
  const row = page.getByTestId("workflow-row").filter({ hasText: "ship-login" });
  await expect(row).toHaveCount(1);

  // Steps turn running, then completed, without a reload.
  await expect(step(page, "design")).toHaveAttribute("data-status", "running");
  const firstLiveMs = Date.now() - tStart;
  await expect(step(page, "design")).toHaveAttribute("data-status", "completed", { timeout: 20_000 });
  await expect(step(page, "implement")).toHaveAttribute("data-status", "running");
  await expect(step(page, "implement").getByTestId("log-tail")).toBeVisible();
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: path.join(shots, "workflow-running-light.png"), fullPage: true });
  await expect(page.getByTestId("workflow-status")).toHaveText("completed", { timeout: 30_000 });
  await expect(step(page, "test").getByTestId("output")).toHaveText("Test Build Design login", { useInnerText: false });
  await expect(row.locator(".badge")).toHaveText("completed");
  await expect(page.getByTestId("progress")).toHaveText("3/3 steps");
  expect(await page.evaluate(() => (window as any).__noReload)).toBe(true);

  await page.screenshot({ path: path.join(shots, "workflow-light.png"), fullPage: true });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(shots, "workflow-dark.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: path.join(shots, "workflow-phone-dark.png"), fullPage: true });

  const timings = { first_contentful_paint_ms: Math.round(paint), hydrated_ms: Math.round(hydratedMs), first_live_step_change_ms: firstLiveMs };
  console.log("timings", JSON.stringify(timings));
  writeFileSync(path.join(shots, "timings.json"), JSON.stringify(timings, null, 2));
});

test("failure: each attempt's error and the countdown show; Retry now and Retry step finish it", async ({ page, request }) => {
  const id = await startVia(request, {
    name: "flaky",
    steps: [
      { id: "call", role: "developer", task: "call the API",
        retry: { max_attempts: 2, initial_interval_ms: 600000, max_interval_ms: 600000, jitter: false },
        params: { duration_ms: 50, fail_attempts: 2, error: "503 upstream busy" } },
    ],
  });
  await page.goto(`/workflows/${id}`);
  await hydrated(page);
  const call = step(page, "call");
  // The graph's node is a link to the step's card.
  await page.locator('.dag a[href="#step-call"]').click();
  await expect(page).toHaveURL(new RegExp(`/workflows/${id}#step-call$`));
  await expect(call).toHaveAttribute("data-status", "retrying");
  await expect(call.getByTestId("countdown")).toHaveText(/next attempt in (9|10)m/);
  await expect(call.getByTestId("attempts")).toContainText("503 upstream busy");
  await expect(page.getByTestId("workflow-row").filter({ hasText: "flaky" })).toContainText(/retry in/);

  // By keyboard: once the button has done its work, the focus stays on the step's card.
  await call.getByRole("button", { name: "Retry call now" }).focus();
  await page.keyboard.press("Enter");
  await expect(page.getByTestId("notice")).toContainText("sent");
  await expect(call).toBeFocused();
  // Attempt 2 fails too: retries are exhausted and the workflow fails.
  await expect(page.getByTestId("workflow-status")).toHaveText("failed");
  await expect(call.getByTestId("attempts").locator("tbody tr")).toHaveCount(2);
  await expect(page.getByTestId("workflow-error")).toContainText("503 upstream busy");

  await call.getByRole("button", { name: "Retry step call" }).click();
  await expect(page.getByTestId("workflow-status")).toHaveText("completed");
  await expect(call.getByTestId("attempts").locator("tbody tr")).toHaveCount(3);
});

test("skip a paused step with an output, and cancel a running workflow", async ({ page, request }) => {
  const paused = await startVia(request, {
    name: "needs-a-person",
    steps: [
      { id: "lint", role: "developer", task: "lint",
        retry: { max_attempts: 1, on_exhausted: "pause" },
        params: { duration_ms: 20, fail_attempts: 9, error: "linter crashed" } },
      { id: "ship", role: "developer", task: "ship after [{lint.output}]", deps: ["lint"], params: { duration_ms: 20 } },
    ],
  });
  await page.goto(`/workflows/${paused}`);
  await hydrated(page);
  await expect(page.getByTestId("workflow-status")).toHaveText("paused");
  await step(page, "lint").getByRole("button", { name: "Skip step lint" }).click();
  await step(page, "lint").getByLabel("Output to use instead (optional)").fill("looks fine");
  await step(page, "lint").getByRole("button", { name: "Skip it" }).click();
  await expect(page.getByTestId("workflow-status")).toHaveText("completed");
  await expect(step(page, "lint")).toHaveAttribute("data-status", "skipped");
  await expect(step(page, "ship").getByTestId("output")).toHaveText("ship after [looks fine]", { useInnerText: false });

  const long = await startVia(request, {
    name: "too-long",
    steps: [{ id: "wait", role: "developer", task: "wait", params: { duration_ms: 600000 } }],
  });
  await page.goto(`/workflows/${long}`);
  await hydrated(page);
  await expect(step(page, "wait")).toHaveAttribute("data-status", "running");
  await page.getByRole("button", { name: "Cancel workflow" }).click();
  await expect(page.getByTestId("workflow-status")).toHaveText("cancelled");
  // The button it pressed is disabled now; the focus stayed in the header.
  await expect(page.locator(".wf-header")).toBeFocused();
  await expect(step(page, "wait")).toHaveAttribute("data-status", "cancelled");
  await expect(page.getByRole("button", { name: "Cancel workflow" })).toBeDisabled();
  await expect(page.getByRole("button", { name: "Resume workflow" })).toBeEnabled();
});

test("what a person opened, closed or typed stays while the page changes live", async ({ page, request }) => {
  const id = await startVia(request, {
    name: "busy-page",
    steps: [
      { id: "quick", role: "developer", task: "quick one", params: { duration_ms: 10 } },
      { id: "slow", role: "developer", task: "slow one", params: { duration_ms: 4000, log_lines: 3 } },
      { id: "call", role: "developer", task: "call the API",
        retry: { max_attempts: 2, initial_interval_ms: 600000, max_interval_ms: 600000, jitter: false },
        params: { duration_ms: 10, fail_attempts: 1, error: "503 upstream busy" } },
    ],
  });
  await page.goto(`/workflows/${id}`);
  await hydrated(page);
  await expect(step(page, "quick")).toHaveAttribute("data-status", "completed");
  await expect(step(page, "call")).toHaveAttribute("data-status", "retrying");
  await expect(step(page, "slow")).toHaveAttribute("data-status", "running");

  // A click opens a section exactly once (the page, not the browser, toggles it).
  const output = step(page, "quick").locator("details.output");
  await expect(output).not.toHaveAttribute("open", /.*/);
  await output.locator("summary").click();
  await expect(output).toHaveAttribute("open", "");
  await expect(output.getByTestId("output")).toBeVisible();

  // Half-typed skip output.
  await step(page, "call").getByRole("button", { name: "Skip step call" }).click();
  const input = step(page, "call").getByLabel("Output to use instead (optional)");
  await input.fill("done by hand");

  // A running step's log is open; closed by keyboard, it stays closed and keeps the focus.
  const log = step(page, "slow").locator("details.logs");
  await expect(log).toHaveAttribute("open", "");
  await log.locator("summary").focus();
  await page.keyboard.press("Enter");
  await expect(log).not.toHaveAttribute("open", /.*/);

  // Seconds of live changes: timers tick, "slow" finishes and its log is redrawn.
  await expect(step(page, "slow")).toHaveAttribute("data-status", "completed", { timeout: 20_000 });
  await expect(log.locator("summary")).toContainText("Log");
  await expect(log).not.toHaveAttribute("open", /.*/);
  await expect(log.locator("summary")).toBeFocused();
  await expect(output).toHaveAttribute("open", "");
  await expect(input).toHaveValue("done by hand");

  await step(page, "call").getByRole("button", { name: "Skip it" }).click();
  await expect(step(page, "call")).toHaveAttribute("data-status", "skipped");
  await expect(page.getByTestId("workflow-status")).toHaveText("completed");
  await step(page, "call").locator("details.output summary").click();
  await expect(step(page, "call").getByTestId("output")).toHaveText("done by hand");
});

test("a bad spec shows inline errors at their paths and sends nothing", async ({ page }) => {
  const posts: string[] = [];
  page.on("request", (r) => r.method() === "POST" && posts.push(r.url()));
  await page.goto("/");
  await hydrated(page);
  await page.getByLabel("Spec (JSON or YAML)").fill(
    JSON.stringify({ steps: [{ id: "a", role: "wizard", task: "{ghost.output}" }, { id: "a", role: "developer", task: "x", deps: ["nope"] }] }),
  );
  const errors = page.getByTestId("spec-errors");
  await expect(errors).toContainText("steps[0].role");
  await expect(errors).toContainText("wizard");
  await expect(errors).toContainText("steps[1].deps[0]");
  const start = page.getByRole("button", { name: "Start workflow" });
  await expect(start).toBeDisabled();
  await page.getByLabel("Spec (JSON or YAML)").press("Enter");
  await page.screenshot({ path: path.join(shots, "start-errors-light.png"), fullPage: true });
  expect(posts).toEqual([]);
});

test("history: clicking an event shows the workflow as it was then", async ({ page, request }) => {
  const id = await startVia(request, {
    name: "timeline",
    steps: [
      { id: "one", role: "developer", task: "1", params: { duration_ms: 10 } },
      { id: "two", role: "developer", task: "2", deps: ["one"], params: { duration_ms: 10 } },
    ],
  });
  await page.goto(`/workflows/${id}`);
  await hydrated(page);
  await expect(page.getByTestId("workflow-status")).toHaveText("completed");
  await page.getByRole("button", { name: "Show events" }).click();
  const items = page.getByTestId("timeline").locator("li");
  await expect(items.first()).toContainText("workflow.created");
  await items.filter({ hasText: "step.completed" }).first().click();
  await expect(page.getByTestId("time-travel")).toContainText("Viewing the workflow as it was");
  await expect(step(page, "one")).toHaveAttribute("data-status", "completed");
  await expect(step(page, "two")).toHaveAttribute("data-status", "pending");
  await page.getByRole("button", { name: "Back to live" }).click();
  await expect(step(page, "two")).toHaveAttribute("data-status", "completed");

  // By keyboard: the timeline is redrawn to mark the event shown, and the focus stays on it.
  const started = items.filter({ hasText: "step.started" }).first().getByRole("button");
  await started.focus();
  await page.keyboard.press("Enter");
  await expect(page.getByTestId("time-travel")).toContainText("Viewing the workflow as it was");
  await expect(items.filter({ hasText: "step.started" }).first()).toHaveClass(/selected/);
  await expect(started).toBeFocused();
});

test("keyboard: a sidebar row opens its workflow and keeps the focus while the list is redrawn", async ({ page, request }) => {
  const id = await startVia(request, {
    name: "by-keyboard",
    steps: [{ id: "only", role: "developer", task: "1", params: { duration_ms: 10 } }],
  });
  await page.goto("/");
  await hydrated(page);
  const link = page.getByTestId("workflow-list").locator(`a[href="/workflows/${id}"]`);
  await link.focus();
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(new RegExp(`/workflows/${id}$`));
  // The row is now marked as the page shown (the list was redrawn), and still has the focus.
  await expect(link).toHaveAttribute("aria-current", "page");
  await expect(link).toBeFocused();
  await expect(page.getByTestId("workflow-name")).toHaveText("by-keyboard");
});

test("restart: the page says reconnecting, then catches up without showing an event twice", async ({ browser }) => {
  let server: CairnServer = await startServer();
  const port = Number(new URL(server.baseURL).port);
  const context = await browser.newContext({ baseURL: server.baseURL });
  const page = await context.newPage();
  try {
    const res = await page.request.post("/api/workflows", {
      data: {
        name: "survivor",
        steps: [
          { id: "a", role: "developer", task: "A", params: { duration_ms: 4000 } },
          { id: "b", role: "developer", task: "B {a.output}", deps: ["a"], params: { duration_ms: 1500 } },
          { id: "c", role: "developer", task: "C {b.output}", deps: ["b"], params: { duration_ms: 500 } },
        ],
      },
    });
    const id = (await res.json()).id;
    await page.goto(`/workflows/${id}`);
    await hydrated(page);
    await expect(page.getByTestId("stream-connection")).toHaveText("live");
    await expect(step(page, "a")).toHaveAttribute("data-status", "running");

    await server.stop();
    await expect(page.getByTestId("stream-connection")).toHaveText(/reconnecting/);
    await expect(page.getByTestId("connection")).toHaveText(/reconnecting/);
    await page.screenshot({ path: path.join(shots, "reconnecting-light.png") });

    server = await startServer(server.dbPath, port);
    await expect(page.getByTestId("stream-connection")).toHaveText("live", { timeout: 20_000 });
    await expect(page.getByTestId("workflow-status")).toHaveText("completed", { timeout: 30_000 });
    await expect(step(page, "c").getByTestId("output")).toHaveText("C B A", { useInnerText: false });

    // The page's folded state equals the server's, and its timeline has every event once.
    const serverState = await (await page.request.get(`/api/workflows/${id}`)).json();
    expect(serverState.status).toBe("completed");
    await page.getByRole("button", { name: "Show events" }).click();
    const ids = await page.getByTestId("timeline").locator(".tl-id").allInnerTexts();
    expect(new Set(ids).size).toBe(ids.length);
    const history = (await (await page.request.get(`/api/workflows/${id}/history`)).json()).events;
    expect(ids.length).toBe(history.length);
    const types = history.map((e: any) => e.type);
    expect(types).toContain("workflow.stalled");
    expect(types).toContain("workflow.resumed");
  } finally {
    await context.close();
    await server.stop();
    rmSync(path.dirname(server.dbPath), { recursive: true, force: true });
  }
});

test("a 5 MB output: the page stays small and the whole output opens on demand", async ({ page, request, context }) => {
  const id = await startVia(request, {
    name: "big-output",
    steps: [
      { id: "design", role: "architect", task: "Design", params: { duration_ms: 1, output_bytes: 5_000_000 } },
      { id: "review", role: "reviewer", task: "Review {design.output}", deps: ["design"], params: { duration_ms: 1, output_bytes: 32 } },
    ],
  });
  const snap = await (async () => {
    for (let i = 0; i < 200; i++) {
      const s = await (await request.get(`/api/workflows/${id}`)).json();
      if (s.status === "completed") return s;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("the workflow did not complete");
  })();
  // The first paint and the first JSON carry a preview, not the 5 MB.
  const html = await (await request.get(`/workflows/${id}`)).text();
  expect(html.length).toBeLessThan(200_000);
  expect(JSON.stringify(snap).length).toBeLessThan(200_000);

  let outputRequests = 0;
  context.on("request", (r) => {
    if (r.url().includes("/steps/design/output")) outputRequests++;
  });
  await page.goto(`/workflows/${id}`);
  await hydrated(page);
  const out = step(page, "design").locator("details.output");
  await expect(out.locator("summary")).toContainText("Output (5.0 MB)");
  await out.locator("summary").click();
  await expect(out.getByTestId("output")).toBeVisible();
  expect((await out.getByTestId("output").textContent())!.length).toBe(4096);
  await expect(out).toContainText("The first 4.1 KB of 5.0 MB.");
  await page.setViewportSize({ width: 1280, height: 900 });
  await step(page, "design").screenshot({ path: path.join(shots, "big-output-card.png") });
  expect(outputRequests).toBe(0);

  // Following the link loads the whole output, in a tab of its own.
  const [tab] = await Promise.all([context.waitForEvent("page"), out.getByTestId("output-link").click()]);
  await tab.waitForLoadState();
  expect(tab.url()).toContain(`/api/workflows/${id}/steps/design/output`);
  expect(await tab.evaluate(() => document.body.textContent!.length)).toBe(5_000_000);
  expect(outputRequests).toBe(1);
});
