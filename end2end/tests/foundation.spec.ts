import { test, expect } from "./fixtures";
import { mkdirSync } from "node:fs";
import path from "node:path";

const screenshots = path.join(__dirname, "..", "screenshots");

test("the page is rendered on the server, before any script runs", async ({ browser, baseURL }) => {
  const context = await browser.newContext({ javaScriptEnabled: false, baseURL });
  const page = await context.newPage();
  const response = await page.goto("/");
  expect(response?.status()).toBe(200);
  await expect(page.getByRole("heading", { name: "Workflows" })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Workspace" })).toBeVisible();
  // The spec checker's verdict on the example is computed on the server too.
  await expect(page.getByTestId("spec-ok")).toContainText("ship-login");
  await context.close();
});

test("the page hydrates: the spec checker validates in the browser as you type", async ({ page }) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));

  await page.goto("/");
  await expect(page.getByTestId("spec-ok")).toContainText("3 steps");
  const editor = page.getByLabel("Spec (JSON or YAML)");
  // Wait for the WASM bundle to take over before typing; until then input does nothing.
  await expect(page.locator(".workspace")).toHaveAttribute("data-hydrated", "true");
  await editor.fill(
    JSON.stringify({
      steps: [
        { id: "a", role: "dev", task: "x", deps: ["desing"] },
        { id: "a", role: "dev", task: "" },
      ],
    }),
  );
  const list = page.getByTestId("spec-errors");
  await expect(list).toContainText("steps[0].deps[0]");
  await expect(list).toContainText("desing");
  await expect(list).toContainText("steps[1]");

  // And back to a valid spec, in YAML this time.
  await editor.fill("name: tiny\nsteps:\n  - id: only\n    role: developer\n    task: hello\n");
  await expect(page.getByTestId("spec-ok")).toContainText("tiny");
  // YAML typed key by key (the YAML reader is a chunk that arrives while typing): the verdict
  // is about the last text, with the problem at its path.
  await editor.fill("");
  await editor.pressSequentially("name: typed\nsteps:\n  - {id: a, role: wizard, task: t}\n", { delay: 10 });
  await expect(page.getByTestId("spec-errors")).toContainText("steps[0].role");
  await expect(page.getByTestId("spec-errors")).toContainText("wizard");
  await expect(page.getByRole("button", { name: "Start workflow" })).toBeDisabled();

  // An example replaces the text, and the verdict follows.
  await page.getByRole("button", { name: "A flaky step that retries" }).click();
  await expect(editor).toHaveValue(/^name: flaky-deploy/);
  await expect(page.getByTestId("spec-ok")).toContainText("flaky-deploy · 3 steps · build · deploy · smoke");
  await expect(page.getByRole("button", { name: "Start workflow" })).toBeEnabled();
  await page.getByRole("button", { name: "Fan-out and join" }).click();
  await expect(page.getByTestId("spec-ok")).toContainText("review-fanout · 5 steps");
  expect(errors).toEqual([]);

  mkdirSync(screenshots, { recursive: true });
  await editor.fill(
    JSON.stringify({ name: "ship-login", steps: [{ id: "design", role: "architect", task: "Design {inputs.feature}" }] }, null, 2),
  );
  await expect(page.getByTestId("spec-errors")).toBeVisible();
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: path.join(screenshots, "workspace.png"), fullPage: true });
});

test("GET /api/health answers with the store, version and instance", async ({ request }) => {
  const res = await request.get("/api/health");
  expect(res.status()).toBe(200);
  const body = await res.json();
  expect(body.status).toBe("ok");
  expect(body.store).toBe("sqlite");
  expect(body.version).toMatch(/^\d+\.\d+\.\d+/);
  expect(typeof body.instance).toBe("string");
});

test("an unknown API route is a JSON 404, an unknown page an HTML 404", async ({ request }) => {
  const api = await request.get("/api/nope");
  expect(api.status()).toBe(404);
  expect((await api.json()).error.code).toBe("not_found");
  const page = await request.get("/no/such/page");
  expect(page.status()).toBe(404);
  expect(await page.text()).toContain("Not found");
});

test("the static assets are served: favicon and the stylesheet", async ({ request }) => {
  expect((await request.get("/favicon.ico")).status()).toBe(200);
  const css = await request.get("/pkg/cairn.css");
  expect(css.status()).toBe(200);
  expect(css.headers()["content-type"]).toContain("css");
});
