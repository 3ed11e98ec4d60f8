//! Tokens and workspaces end to end: tokens made with the real `cairn token` binary on the
//! server's own database, then every route family asked without one, with the wrong one, with
//! too small a scope and from another workspace (`routes`), the browser's sign-in (`browser`),
//! and the clients and commands that carry tokens (`commands`).

mod browser;
mod commands;
mod routes;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, cairn};

fn db_url(app: &TestApp) -> String {
    format!("sqlite://{}", app.db_path.display())
}

/// Makes a token with `cairn token create` on the app's database; returns it.
async fn token(app: &TestApp, workspace: &str, label: &str, scope: &str) -> String {
    token_with(app, workspace, label, scope, &[]).await
}

async fn token_with(
    app: &TestApp,
    workspace: &str,
    label: &str,
    scope: &str,
    extra: &[&str],
) -> String {
    let url = db_url(app);
    let mut args = vec![
        "token",
        "create",
        "--workspace",
        workspace,
        "--label",
        label,
        "--scope",
        scope,
        "--database-url",
        &url,
    ];
    args.extend_from_slice(extra);
    let ran = cairn(&args, &[]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "the token alone on stdout: {:?}",
        ran.stdout
    );
    assert!(lines[0].starts_with("cairn_"), "{}", lines[0]);
    assert!(ran.stderr.contains("shown once"), "{}", ran.stderr);
    lines[0].to_string()
}

/// Waits until the server has noticed that tokens exist (it looks again within a second).
async fn wait_closed(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/api/workflows").await.status() != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "the server never asked for a token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = no_redirects().request(method.clone(), format!("{}{path}", app.address));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == Method::POST {
        req = req.json(&json!({}));
    }
    req.send().await.unwrap()
}

async fn start_as(app: &TestApp, token: &str, spec: &Value) -> String {
    let resp = app
        .client
        .post(format!("{}/api/workflows", app.address))
        .bearer_auth(token)
        .json(spec)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn slow() -> Value {
    json!({ "name": "slow", "steps": [
        { "id": "design", "role": "architect", "task": "think", "params": { "duration_ms": 60000 } }
    ]})
}

fn quick(name: &str) -> Value {
    json!({ "name": name, "steps": [
        { "id": "design", "role": "architect", "task": "think", "params": { "duration_ms": 10 } }
    ]})
}

/// Every route, as a method and a path; `ID` stands for a workflow's id.
fn every_route() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/api/workflows"),
        (Method::POST, "/api/workflows"),
        (Method::GET, "/api/workflows/ID"),
        (Method::GET, "/api/workflows/ID/history"),
        (Method::GET, "/api/workflows/ID/steps/design/output"),
        (Method::POST, "/api/workflows/ID/resume"),
        (Method::POST, "/api/workflows/ID/cancel"),
        (Method::POST, "/api/workflows/ID/steps/design/retry"),
        (Method::POST, "/api/workflows/ID/steps/design/retry-now"),
        (Method::POST, "/api/workflows/ID/steps/design/skip"),
        (Method::GET, "/api/workflows/ID/events"),
        (Method::GET, "/api/events"),
        (Method::GET, "/api/roles"),
        (Method::GET, "/api/openapi.json"),
        (Method::GET, "/api/nowhere"),
        (Method::POST, "/api/invoke/async"),
        (Method::GET, "/api/invoke-status/status/ID"),
        (Method::POST, "/api/invoke-status/status/ID"),
        (Method::POST, "/api/v1/execute-dag"),
        (Method::GET, "/api/invoke/stream/ID"),
        (Method::GET, "/api/v1/dag-executions/ID/events"),
        (Method::POST, "/mcp"),
        (Method::GET, "/metrics"),
    ]
}

/// Reads SSE frames from a response until `until` accepts one's data, or the deadline.
async fn frames_until(
    resp: reqwest::Response,
    deadline: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<String> {
    use futures::StreamExt;
    let mut seen = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let chunk = tokio::time::timeout_at(end, body.next()).await;
        let Ok(Some(Ok(chunk))) = chunk else {
            return seen;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            let done = until(&data);
            seen.push(data);
            if done {
                return seen;
            }
        }
    }
}
