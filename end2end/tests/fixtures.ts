import { test as base, expect } from "@playwright/test";
import { spawn, ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

/** The repository root: tests start the real release binary from there. */
export const repoRoot = path.resolve(__dirname, "..", "..");

/** A running `cairn serve`, on a free port, with a fresh SQLite file. */
export interface CairnServer {
  baseURL: string;
  dbPath: string;
  stop(): Promise<void>;
  /** Everything the server printed, for failure messages. */
  output(): string;
}

/** Starts the release binary (on `port`, default a free one) and waits for it to say where
 * it listens. Pass `dbPath` to start again on an existing database. */
export async function startServer(dbPath?: string, port = 0): Promise<CairnServer> {
  const dir = dbPath ? path.dirname(dbPath) : mkdtempSync(path.join(tmpdir(), "cairn-e2e-"));
  const db = dbPath ?? path.join(dir, "cairn.db");
  const bin = process.env.CAIRN_BIN ?? path.join(repoRoot, "target", "release", "cairn");
  const child: ChildProcess = spawn(
    bin,
    ["serve", "--addr", `127.0.0.1:${port}`, "--database-url", `sqlite://${db}`],
    { cwd: repoRoot, env: { ...process.env, CAIRN_LOG: "info", NO_COLOR: "1" } },
  );
  let out = "";
  const baseURL = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cairn did not start:\n${out}`)), 30_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = out.match(/listening on (http:\/\/[0-9.]+:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`cairn exited with ${code} before listening:\n${out}`));
    });
  });
  return {
    baseURL,
    dbPath: db,
    output: () => out,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

type Fixtures = { server: CairnServer };

/** `test` with a `server` fixture: one fresh cairn per test, stopped afterwards. */
export const test = base.extend<Fixtures>({
  server: async ({}, use) => {
    const server = await startServer();
    await use(server);
    await server.stop();
    rmSync(path.dirname(server.dbPath), { recursive: true, force: true });
  },
  baseURL: async ({ server }, use) => use(server.baseURL),
});

export { expect };
