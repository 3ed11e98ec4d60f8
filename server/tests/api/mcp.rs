//! The MCP tools through a real MCP client (rmcp's): over streamable HTTP against the server's
//! `/mcp`, and over stdio against the `cairn mcp` binary.

use std::sync::{Arc, Mutex};

use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam},
    service::{NotificationContext, RunningService},
    transport::{StreamableHttpClientTransport, TokioChildProcess},
};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

/// An MCP client that keeps the progress notifications it gets.
#[derive(Clone, Default)]
struct Agent {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Agent {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

type Client = RunningService<RoleClient, Agent>;

async fn connect_http(address: &str) -> (Client, Agent) {
    let agent = Agent::default();
    let client = agent
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(format!(
            "{address}/mcp"
        )))
        .await
        .expect("MCP over HTTP connects");
    (client, agent)
}

/// Calls a tool and waits for its answer.
async fn call(client: &Client, tool: &'static str, args: Value) -> CallToolResult {
    call_any(client, tool, args).await
}

/// A successful answer's JSON.
fn ok(result: CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "a tool error: {result:?}");
    result.structured_content.expect("structured content")
}

/// A tool error's text.
fn tool_error(result: CallToolResult) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "expected a tool error: {result:?}"
    );
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `invoke_status`'s answer.
async fn status<H: ClientHandler>(client: &RunningService<RoleClient, H>, id: &str) -> Value {
    ok(call_any(client, "invoke_status", json!({ "threadId": id })).await)
}

/// Polls `invoke_status` until the workflow's cairn `state` is `state`.
async fn wait_for<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
    id: &str,
    state: &str,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = status(client, id).await;
        if s["state"] == state {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "never {state}: {s:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_agent_lists_the_tools_and_follows_a_workflow_to_its_end_with_progress() {
    let app = spawn_app().await;
    let (client, agent) = connect_http(&app.address).await;

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "invoke_async",
            "invoke_cancel",
            "invoke_resume",
            "invoke_status",
            "invoke_stream",
            "workflow_monitor"
        ]
    );
    for t in &tools {
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 40),
            "{} explains itself",
            t.name
        );
        assert_eq!(t.input_schema.get("type"), Some(&json!("object")));
    }
    let start = tools.iter().find(|t| t.name == "invoke_async").unwrap();
    assert!(start.input_schema["properties"]["workflow"].is_object());
    assert_eq!(start.input_schema["required"], json!(["workflow"]));

    // The seed's multi-agent example, with a name and an input.
    let started = ok(call(
        &client,
        "invoke_async",
        json!({
            "workflow": [
                { "id": "design", "role": "architect", "task": "Design {inputs.feature}", "params": { "duration_ms": 100 } },
                { "id": "implement", "role": "developer", "task": "Build {design.output}", "deps": ["design"], "params": { "duration_ms": 100 } },
                { "id": "test", "role": "tester", "task": "Test {implement.output}", "deps": ["implement"], "params": { "duration_ms": 100 } }
            ],
            "name": "login",
            "inputs": { "feature": "login" }
        }),
    )
    .await);
    assert_eq!(started["status"], "started");
    let id = started["threadId"].as_str().unwrap().to_string();
    assert_eq!(
        started["status_url"],
        format!("{}/api/workflows/{id}", app.address)
    );
    assert_eq!(
        started["events_url"],
        format!("{}/api/workflows/{id}/events", app.address)
    );

    // Follow with a progress token: notifications per step change, the answer at the end.
    // (rmcp's client puts a progress token on every request, as the MCP spec allows.)
    let answer = ok(call(&client, "invoke_stream", json!({ "threadId": id })).await);
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["ended"], true);
    let types: Vec<&str> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"workflow.created"));
    assert_eq!(types.last(), Some(&"workflow.completed"));
    assert_eq!(types.iter().filter(|t| **t == "step.completed").count(), 3);
    assert!(answer["sse_url"].as_str().unwrap().ends_with("/events"));
    assert!(answer["event_schema"]["types"]["step.completed"].is_string());

    let progress = agent.progress.lock().unwrap().clone();
    let messages: Vec<String> = progress.iter().filter_map(|p| p.message.clone()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m == "login: design completed in 100 ms"
                || m.starts_with("login: design completed in")),
        "{messages:#?}"
    );
    assert_eq!(
        messages.last().map(String::as_str),
        Some("login: workflow completed")
    );
    assert_eq!(progress.last().unwrap().progress, 3.0);
    assert_eq!(progress.last().unwrap().total, Some(3.0));
    assert_eq!(answer["progress_notifications"], progress.len());

    // The cursor: nothing after the last event.
    let rest = ok(call(
        &client,
        "invoke_stream",
        json!({ "threadId": id, "after": answer["next_after"], "follow": false }),
    )
    .await);
    assert_eq!(rest["events"], json!([]));
    assert_eq!(rest["next_after"], answer["next_after"]);

    let s = status(&client, &id).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["progress"]["done"], 3);
    assert_eq!(s["steps"][2]["output"], "Test Build Design login");
    assert!(s["sessionIds"]["design"].is_string());
    assert!(s["lastUpdate"].is_string());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn an_agent_repairs_a_failed_workflow_and_cancels_another_and_bad_calls_are_tool_errors() {
    let app = spawn_app().await;
    let (client, _) = connect_http(&app.address).await;
    let steps = |report_role: &str| {
        json!({ "steps": [
            { "id": "fetch", "role": "developer", "task": "fetch", "retry": { "max_attempts": 1 },
              "params": { "duration_ms": 5, "fail_attempts": 9, "error": "upstream 503" } },
            { "id": "report", "role": report_role, "task": "report on {fetch.output}",
              "deps": ["fetch"], "params": { "duration_ms": 5 } }
        ] })
    };

    // An invalid spec: every problem with its path, and nothing started.
    let text = tool_error(
        call(
            &client,
            "invoke_async",
            json!({ "workflow": steps("writer") }),
        )
        .await,
    );
    assert!(
        text.contains("not valid") && text.contains("steps[1].role"),
        "{text}"
    );

    let id = ok(call(
        &client,
        "invoke_async",
        json!({ "workflow": steps("reviewer") }),
    )
    .await)["threadId"]
        .as_str()
        .unwrap()
        .to_string();
    let failed = wait_for(&client, &id, "failed").await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["steps"][0]["error"], "upstream 503");

    // The monitor says what needs attention and what would repair it.
    let monitor = ok(call(&client, "workflow_monitor", json!({})).await);
    let row = monitor["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["threadId"] == id.as_str())
        .unwrap()
        .clone();
    let attention = row["attention"].as_str().unwrap();
    assert!(
        attention.contains("failed at step fetch") && attention.contains("upstream 503"),
        "{attention}"
    );
    assert_eq!(monitor["summary"]["failed"], 1);
    assert_eq!(monitor["needing_attention"], 1);

    // Retry without naming the step: the failed one runs again (and fails again).
    let retried = ok(call(
        &client,
        "invoke_resume",
        json!({ "threadId": id, "action": "retry" }),
    )
    .await);
    assert_eq!(retried["state"], "running");
    wait_for(&client, &id, "failed").await;

    // Skip it with an output for the next step; the workflow completes on it.
    let skipped = ok(call(
        &client,
        "invoke_resume",
        json!({ "threadId": id, "action": "skip", "output": "cached data" }),
    )
    .await);
    assert_eq!(skipped["steps"][0]["status"], "skipped");
    let done = wait_for(&client, &id, "completed").await;
    assert_eq!(done["steps"][1]["output"], "report on cached data");

    // Controls the state does not allow say why.
    let text = tool_error(
        call(
            &client,
            "invoke_resume",
            json!({ "threadId": id, "action": "retry" }),
        )
        .await,
    );
    assert!(
        text.contains("no step") && text.contains("fetch skipped"),
        "{text}"
    );
    let text = tool_error(
        call(
            &client,
            "invoke_resume",
            json!({ "threadId": id, "action": "skip", "stepId": "report" }),
        )
        .await,
    );
    assert!(text.contains("already completed"), "{text}");

    // Cancel a long one; cancelling it again is refused with the reason.
    let long = ok(call(
        &client,
        "invoke_async",
        json!({ "workflow": { "role": "developer", "task": "slow", "params": { "duration_ms": 30000 } } }),
    )
    .await)["threadId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&client, &long, "running").await;
    let cancelled = ok(call(
        &client,
        "invoke_cancel",
        json!({ "threadId": long, "reason": "wrong branch" }),
    )
    .await);
    assert_eq!(cancelled["status"], "aborted");
    let text = tool_error(call(&client, "invoke_cancel", json!({ "threadId": long })).await);
    assert!(text.contains("cancelled"), "{text}");

    // Unknown ids, missing and malformed arguments: tool errors an agent can act on.
    let text = tool_error(call(&client, "invoke_status", json!({ "threadId": "wf_nope" })).await);
    assert!(
        text.contains("no workflow") && text.contains("workflow_monitor"),
        "{text}"
    );
    // Odd bytes in an id are looked up as an id, never as another route.
    for odd in ["../../api/health", "wf_1?x=2#y", "wf/ü\u{0}"] {
        let text = tool_error(call(&client, "invoke_status", json!({ "threadId": odd })).await);
        assert!(text.contains("no workflow"), "{odd}: {text}");
    }
    let text = tool_error(call(&client, "invoke_status", json!({})).await);
    assert!(text.contains("threadId"), "{text}");
    let text = tool_error(
        call(
            &client,
            "invoke_resume",
            json!({ "threadId": id, "action": "explode" }),
        )
        .await,
    );
    assert!(
        text.contains("action") || text.contains("explode"),
        "{text}"
    );
    let text = tool_error(call(&client, "workflow_monitor", json!({ "limit": 0 })).await);
    assert!(text.contains("limit"), "{text}");
    let text = tool_error(call(&client, "workflow_monitor", json!({ "status": "sleepy" })).await);
    assert!(text.contains("unknown status"), "{text}");
    let text = tool_error(call(&client, "invoke_async", json!({ "workflow": 42 })).await);
    assert!(!text.is_empty());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn cairn_mcp_speaks_the_same_tools_over_stdio() {
    let app = spawn_app().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["mcp", "--server", &app.address]);
    let client =
        ().serve(TokioChildProcess::new(cmd).expect("spawning cairn mcp"))
            .await
            .expect("MCP over stdio connects");
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 6);
    let started = ok(call_any(&client, "invoke_async", json!({
        "workflow": { "role": "developer", "task": "implement feature", "params": { "duration_ms": 5 } }
    }))
    .await);
    let id = started["threadId"].as_str().unwrap().to_string();
    assert_eq!(
        started["status_url"],
        format!("{}/api/workflows/{id}", app.address)
    );
    let done = wait_for(&client, &id, "completed").await;
    assert_eq!(done["steps"][0]["output"], "implement feature");
    let text =
        tool_error(call_any(&client, "invoke_status", json!({ "threadId": "wf_nope" })).await);
    assert!(text.contains("no workflow"), "{text}");
    client.cancel().await.unwrap();

    // A server that is not there: the tools say so.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["mcp", "--server", "http://127.0.0.1:9"]);
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let text = tool_error(call_any(&client, "workflow_monitor", json!({})).await);
    assert!(
        text.contains("cannot reach the cairn server at http://127.0.0.1:9"),
        "{text}"
    );
    client.cancel().await.unwrap();
}

/// [`call`] for any client handler.
async fn call_any<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
}

/// Two instances on one Postgres: a workflow started through one instance's `/mcp` is read,
/// followed and controlled through the other's (no session lives in either).
#[tokio::test]
async fn the_tools_answer_on_any_instance() {
    let db = crate::pg::TestDb::new().await;
    let (mut one, url_one) = crate::helpers::serve_binary_on(&db.url, None);
    let (mut two, url_two) = crate::helpers::serve_binary_on(&db.url, None);
    let (first, _) = connect_http(&url_one).await;
    let (second, _) = connect_http(&url_two).await;
    let id = ok(call(
        &first,
        "invoke_async",
        json!({ "workflow": { "role": "developer", "task": "slow", "params": { "duration_ms": 30000 } } }),
    )
    .await)["threadId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&second, &id, "running").await;
    let cancelled = ok(call(&second, "invoke_cancel", json!({ "threadId": id })).await);
    assert_eq!(cancelled["status"], "aborted");
    let seen = ok(call(
        &first,
        "invoke_stream",
        json!({ "threadId": id, "follow": false }),
    )
    .await);
    assert_eq!(seen["status"], "aborted");
    assert_eq!(
        seen["events"].as_array().unwrap().last().unwrap()["type"],
        "workflow.cancelled"
    );
    first.cancel().await.unwrap();
    second.cancel().await.unwrap();
    for child in [&mut one, &mut two] {
        child.kill().unwrap();
        let _ = child.wait();
    }
}
