import { test, expect } from "./fixtures";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

// The TypeScript SDK (what most agents, Claude Code among them, are built on) against /mcp.

test("an MCP client from the TypeScript SDK starts and follows a workflow with progress", async ({ baseURL }) => {
  const client = new Client({ name: "e2e-agent", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(`${baseURL}/mcp`)));

  const { tools } = await client.listTools();
  expect(tools.map((t) => t.name).sort()).toEqual([
    "invoke_async",
    "invoke_cancel",
    "invoke_resume",
    "invoke_status",
    "invoke_stream",
    "workflow_monitor",
  ]);
  const start = tools.find((t) => t.name === "invoke_async")!;
  expect(start.inputSchema.required).toEqual(["workflow"]);

  const started = await client.callTool({
    name: "invoke_async",
    arguments: {
      workflow: [
        { id: "design", role: "architect", task: "Design login", params: { duration_ms: 50 } },
        { id: "build", role: "developer", task: "Build {design.output}", deps: ["design"], params: { duration_ms: 50 } },
      ],
      name: "ship-login",
    },
  });
  expect(started.isError).toBeFalsy();
  const threadId = (started.structuredContent as any).threadId as string;
  expect(threadId).toMatch(/^wf_/);

  const messages: string[] = [];
  const followed = await client.callTool(
    { name: "invoke_stream", arguments: { threadId } },
    undefined,
    { onprogress: (p) => messages.push(p.message ?? ""), timeout: 60_000 },
  );
  const answer = followed.structuredContent as any;
  expect(answer.status).toBe("completed");
  expect(answer.ended).toBe(true);
  expect(messages).toContain("ship-login: workflow completed");
  expect(messages.some((m) => m.startsWith("ship-login: build completed in"))).toBe(true);

  const status = await client.callTool({ name: "invoke_status", arguments: { threadId } });
  expect((status.structuredContent as any).steps[1].output).toBe("Build Design login");

  const unknown = await client.callTool({ name: "invoke_status", arguments: { threadId: "wf_nope" } });
  expect(unknown.isError).toBe(true);
  expect((unknown.content as any)[0].text).toContain("no workflow");
  await client.close();
});
