import { test, expect, repoRoot } from "./fixtures";
import { Page } from "@playwright/test";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";

// A server with tokens, in a real browser: signing in, the live page of one workspace, and
// signing out.

const shots = path.join(__dirname, "..", "screenshots");
mkdirSync(shots, { recursive: true });

/** Makes a token with the real `cairn token create` on the server's database. */
function token(dbPath: string, workspace: string, label: string): string {
  const bin = process.env.CAIRN_BIN ?? path.join(repoRoot, "target", "release", "cairn");
  const out = execFileSync(
    bin,
    ["token", "create", "--workspace", workspace, "--label", label, "--database-url", `sqlite://${dbPath}`],
    { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] },
  );
  return out.trim();
}

async function hydrated(page: Page) {
  await expect(page.locator(".workspace")).toHaveAttribute("data-hydrated", "true");
}

test("sign in with a token, watch the workspace live, and sign out", async ({ page, server, request }) => {
  const ann = token(server.dbPath, "team-a", "ann");
  const bob = token(server.dbPath, "team-b", "bob");
  // The server asks for tokens within a second of the first one existing.
  await expect
    .poll(async () => (await request.get("/api/workflows")).status(), { timeout: 10_000 })
    .toBe(401);

  const start = async (t: string, name: string, durationMs: number) => {
    const res = await request.post("/api/workflows", {
      headers: { authorization: `Bearer ${t}` },
      data: { name, steps: [{ id: "design", role: "architect", task: "Plan", params: { duration_ms: durationMs } }] },
    });
    expect(res.status()).toBe(202);
    return (await res.json()).id as string;
  };
  await start(bob, "bobs-secret-plan", 50);
  await start(ann, "anns-first", 50);

  // Not signed in: the page sends the browser to sign in.
  await page.goto("/");
  await expect(page).toHaveURL(/\/sign-in\?next=\/$/);
  await page.getByLabel("Token").fill("cairn_0_0");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toHaveText("the token is not valid");
  await page.setViewportSize({ width: 1280, height: 720 });
  await page.screenshot({ path: path.join(shots, "sign-in.png") });

  await page.getByLabel("Token").fill(ann);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/$/);
  await hydrated(page);
  await expect(page.getByTestId("workspace-name")).toHaveText("team-a");
  await expect(page.locator(".topbar-who")).toHaveText("ann");
  // The cookie is out of scripts' reach.
  expect(await page.evaluate(() => document.cookie)).not.toContain("cairn_session");

  // The sidebar is team-a's, and it is live: the EventSource carries the cookie.
  await expect(page.getByTestId("connection")).toHaveText(/live/);
  const rows = page.getByTestId("workflow-row");
  await expect(rows.filter({ hasText: "anns-first" })).toHaveCount(1);
  await expect(rows.filter({ hasText: "bobs-secret-plan" })).toHaveCount(0);
  await start(ann, "anns-second", 50);
  await start(bob, "bobs-second", 50);
  await expect(rows.filter({ hasText: "anns-second" })).toHaveCount(1);
  await expect(rows.filter({ hasText: "anns-second" }).locator(".badge")).toHaveText("completed");
  await expect(rows.filter({ hasText: "bobs-second" })).toHaveCount(0);

  // The start form works with the cookie (a same-origin write).
  await page.getByRole("button", { name: "Start workflow" }).click();
  await expect(page).toHaveURL(/\/workflows\/wf_/);
  await expect(page.getByTestId("workflow-status")).toHaveText("completed", { timeout: 30_000 });
  const who = await request.get(`/api/workflows/${page.url().split("/").pop()}/history`, {
    headers: { authorization: `Bearer ${ann}` },
  });
  expect((await who.json()).events[0].by).toBe("ann");
  await page.goto("/");
  await hydrated(page);
  await page.screenshot({ path: path.join(shots, "signed-in.png") });

  // Signing out: back to the form, and the workspace is closed again.
  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/sign-in$/);
  await page.goto("/");
  await expect(page).toHaveURL(/\/sign-in/);
});
