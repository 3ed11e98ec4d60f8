import { test, expect } from "./fixtures";
import { ConsoleMessage, Page } from "@playwright/test";

// The replaced system's own client code, copied from its notes as they document it, run in
// the page against cairn. Only what names a place changes: the host and the execution id.

/** Its async-workflow notes, "Simple Async Workflow": start, then follow with `onmessage`. */
const invokeClient = `
// Start workflow
const response = await fetch('/api/invoke/async', {
  method: 'POST',
  body: JSON.stringify({
    workflow: { role: 'developer', task: 'implement feature' },
  }),
})
const { threadId } = await response.json()

// Monitor progress via SSE
const eventSource = new EventSource(\`/api/invoke/stream/\${threadId}\`)
eventSource.onmessage = (event) => {
  const data = JSON.parse(event.data)
  console.log('Progress:', data)
}
`;

/** Its DAG-executions notes, "Connecting to SSE Stream", JavaScript/Browser. */
const dagClient = `
const executionId = 'dag-exec_abc123';
const eventSource = new EventSource(
  \`http://localhost:3000/api/v1/dag-executions/\${executionId}/events\`
);

eventSource.addEventListener('execution.updated', (e) => {
  const data = JSON.parse(e.data);
  console.log('Status:', data.status, 'Completed:', data.completedTasks);
});

eventSource.addEventListener('substep.completed', (e) => {
  const data = JSON.parse(e.data);
  console.log('Task', data.taskId, 'completed in', data.durationMs, 'ms');
});

eventSource.onerror = () => {
  eventSource.close();
};
`;

/** Its "WebApp Integration" component body (Svelte 5): \`$state\` and \`onMount\` are the
 * framework's, stood in for by the plainest equivalents; the rest is as written. */
const webAppClient = `
const $state = (initial) => initial;
const onMount = (f) => { window.__unmount = f(); };
const executionId = 'dag-exec_abc123';

let execution = $state({
  status: 'pending',
  completedTasks: 0,
  failedTasks: 0
});

onMount(() => {
  const es = new EventSource(\`/api/v1/dag-executions/\${executionId}/events\`);
  
  es.addEventListener('execution.updated', (e) => {
    const data = JSON.parse(e.data);
    execution = { ...execution, ...data };
    window.__execution = execution;
  });
  
  es.addEventListener('substep.completed', (e) => {
    // Update UI with sub-task progress
  });
  
  es.onerror = () => {
    es.close();
    // Fall back to polling
  };
  
  return () => es.close();
});
`;

/** Collects what the page logs, each console call's arguments as values. */
function consoleLog(page: Page): unknown[][] {
  const logged: unknown[][] = [];
  page.on("console", async (msg: ConsoleMessage) => {
    logged.push(await Promise.all(msg.args().map((a) => a.jsonValue())));
  });
  return logged;
}

async function run(page: Page, code: string) {
  // A module script, for the snippets' top-level `await`.
  await page.addScriptTag({ type: "module", content: code });
}

test("the replaced system's onmessage client follows a workflow started through /api/invoke/async", async ({
  page,
}) => {
  await page.goto("/");
  const logged = consoleLog(page);
  await run(page, invokeClient);

  const progress = () =>
    logged.filter((args) => args[0] === "Progress:").map((args) => args[1] as Record<string, any>);
  await expect.poll(() => progress().map((d) => d.type)).toEqual([
    "step_start",
    "step_complete",
    "workflow_complete",
  ]);
  const [start, complete, end] = progress();
  expect(start.threadId).toMatch(/^wf_/);
  expect(start.stepId).toBe("step1");
  expect(complete.output).toBe("implement feature");
  expect(typeof complete.sessionId).toBe("string");
  expect(end.status).toBe("completed");
  expect(end.sessionIds.step1).toBe(complete.sessionId);
  expect(Number.isNaN(Date.parse(end.timestamp))).toBe(false);
});

test("the replaced system's DAG-executions clients read every field they document", async ({ page, baseURL }) => {
  await page.goto("/");
  const logged = consoleLog(page);
  // Its cURL test started executions with POST /api/v1/execute-dag and read `.executionId`.
  const executionId = await page.evaluate(async () => {
    const res = await fetch("/api/v1/execute-dag", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify([
        { id: "search", role: "architect", task: "Search for London weather", params: { duration_ms: 200 } },
        {
          id: "report",
          role: "developer",
          task: "Report: {search.output}",
          deps: ["search"],
          params: { duration_ms: 200 },
        },
      ]),
    });
    return (await res.json()).executionId as string;
  });
  expect(executionId).toMatch(/^wf_/);

  await run(page, dagClient.replace("http://localhost:3000", baseURL!).replace("dag-exec_abc123", executionId));
  await run(page, webAppClient.replace("dag-exec_abc123", executionId));

  const lines = () => logged.map((args) => args.join(" "));
  await expect.poll(lines).toContain("Status: completed Completed: 2");
  const tasks = lines().filter((l) => l.startsWith("Task "));
  expect(tasks).toHaveLength(2);
  expect(tasks[0]).toMatch(/^Task 1 completed in \d+ ms$/);
  expect(tasks[1]).toMatch(/^Task 2 completed in \d+ ms$/);
  // Nothing the client read was missing.
  expect(lines().join("\n")).not.toContain("undefined");

  // The Svelte component's state, merged from every execution.updated.
  await expect.poll(() => page.evaluate(() => (window as any).__execution?.status)).toBe("completed");
  const execution = await page.evaluate(() => (window as any).__execution);
  expect(execution).toMatchObject({ status: "completed", completedTasks: 2, failedTasks: 0, waitingTasks: 0 });
  expect(execution.type).toBe("execution.updated");
  expect(typeof execution.timestamp).toBe("number");
});
