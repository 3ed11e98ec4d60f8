//! Live streams: snapshot + fold, reconnects with Last-Event-ID (also across a restart),
//! heartbeats, caps, the workspace feed and the replaced system's endpoints.

use std::time::{Duration, Instant};

use cairn::{EventRecord, WorkflowState};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// One SSE frame as a client sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
}

/// A minimal EventSource: reads frames off a streaming response.
pub(crate) struct Sse {
    chunks: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Sse {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> reqwest::Response {
        let mut req = app
            .client
            .get(format!("{}{path}", app.address))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        req.send().await.expect("connect")
    }

    pub(crate) async fn connect(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Self {
        Self::from_response(Self::open(app, path, last_event_id).await, path)
    }

    /// The next frame that is not a `heartbeat` event.
    async fn next_except_heartbeat(&mut self) -> Frame {
        loop {
            let f = self.next_event(WAIT).await.expect("stream ended");
            if f.event.as_deref() != Some("heartbeat") {
                return f;
            }
        }
    }

    /// Opens `path` resuming after a frame id as the server wrote it (`41` or `41.0`).
    async fn connect_with_id(app: &TestApp, path: &str, last_event_id: &str) -> Self {
        let resp = app
            .client
            .get(format!("{}{path}", app.address))
            .header("accept", "text/event-stream")
            .header("last-event-id", last_event_id)
            .send()
            .await
            .expect("connect");
        Self::from_response(resp, path)
    }

    /// Opens `url` (any server, e.g. one of several instances), resuming after
    /// `last_event_id` if given.
    pub(crate) async fn connect_url(url: &str, last_event_id: Option<i64>) -> Self {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("connect");
        Self::from_response(resp, url)
    }

    fn from_response(resp: reqwest::Response, path: &str) -> Self {
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            chunks: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next frame, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut f = Frame::default();
                let mut data = vec![];
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        f.comment = Some(c.to_string());
                    } else if let Some((k, v)) = line.split_once(':') {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        match k {
                            "id" => f.id = Some(v.to_string()),
                            "event" => f.event = Some(v.to_string()),
                            "data" => data.push(v.to_string()),
                            _ => {}
                        }
                    }
                }
                f.data = data.join("\n");
                return Some(f);
            }
            match tokio::time::timeout_at(deadline, self.chunks.next()).await {
                Ok(Some(Ok(b))) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return None,
            }
        }
    }

    /// The next frame that carries an event (not a comment, not a bare `retry:`).
    pub(crate) async fn next_event(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            let f = self.next(wait).await?;
            if f.comment.is_none() && (f.event.is_some() || !f.data.is_empty()) {
                return Some(f);
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// A chain long enough to be interrupted: n steps, each logging a few lines.
fn chain(n: usize, duration_ms: u64) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = json!({ "id": format!("s{i}"), "role": "developer", "task": format!("step {i}"),
                                "params": { "duration_ms": duration_ms, "log_lines": 3 } });
            if i > 0 {
                s["deps"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({ "name": "long", "steps": steps })
}

async fn history_ids(app: &TestApp, id: &str) -> Vec<i64> {
    app.history(id)
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_snapshot_folded_with_the_live_events_equals_the_final_state() {
    let app = spawn_app().await;
    let id = app.start(chain(4, 20)).await;
    let mut sse = Sse::connect(&app, &format!("/api/workflows/{id}/events"), None).await;
    let first = sse.next_event(WAIT).await.unwrap();
    assert_eq!(first.event.as_deref(), Some("snapshot"));
    let mut state: WorkflowState = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        first.id.unwrap().parse::<i64>().unwrap(),
        state.last_event_id
    );
    loop {
        let f = sse.next_event(WAIT).await.expect("stream ended early");
        let rec: EventRecord = serde_json::from_str(&f.data).unwrap();
        assert_eq!(f.id.as_deref(), Some(rec.id.to_string().as_str()));
        assert_eq!(f.event.as_deref(), Some(rec.event.type_name()));
        state.apply(&rec).unwrap();
        if f.event.as_deref() == Some("workflow.completed") {
            break;
        }
    }
    let final_state: WorkflowState = app
        .get(&format!("/api/workflows/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state, final_state);
}

/// Reads a workflow's stream with random disconnects, reconnecting with Last-Event-ID each
/// time (and, when asked, restarting the server once in the middle); returns the event ids.
async fn reassemble(
    app: &mut TestApp,
    id: &str,
    rng: &mut fastrand::Rng,
    restart: bool,
) -> Vec<i64> {
    let mut seen: Vec<i64> = vec![];
    let mut restarted = !restart;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "never reached the end; saw {seen:?}"
        );
        let last = seen.last().copied().unwrap_or(0);
        let mut sse = Sse::connect(app, &format!("/api/workflows/{id}/events"), Some(last)).await;
        let cut = rng.usize(1..6);
        for _ in 0..cut {
            let Some(f) = sse.next_event(WAIT).await else {
                break;
            };
            assert_ne!(
                f.event.as_deref(),
                Some("snapshot"),
                "a resumed stream starts with events"
            );
            let n: i64 = f.id.unwrap().parse().unwrap();
            seen.push(n);
            if f.event.as_deref() == Some("workflow.completed") {
                return seen;
            }
        }
        drop(sse);
        if !restarted && seen.len() > 8 {
            app.restart().await;
            restarted = true;
        }
    }
}

#[tokio::test]
async fn reconnecting_with_last_event_id_at_random_points_loses_and_repeats_nothing() {
    let mut app = spawn_app().await;
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..4 {
        let id = app.start(chain(5, 15)).await;
        let seen = reassemble(&mut app, &id, &mut rng, false).await;
        assert_eq!(seen, history_ids(&app, &id).await, "round {round}");
    }
}

#[tokio::test]
async fn a_stream_resumed_across_a_server_restart_is_still_exact() {
    let mut app = spawn_app().await;
    let mut rng = fastrand::Rng::with_seed(11);
    let id = app.start(chain(6, 60)).await;
    let seen = reassemble(&mut app, &id, &mut rng, true).await;
    let all = history_ids(&app, &id).await;
    assert_eq!(seen, all);
    // The restart interrupted the workflow and the new instance took it over.
    let h: Value = app
        .get(&format!("/api/workflows/{id}/history"))
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"workflow.resumed"), "{kinds:?}");
}

#[tokio::test]
async fn after_query_parameter_replays_like_the_header_and_bad_ids_are_400() {
    let app = spawn_app().await;
    let id = app.start(chain(2, 1)).await;
    let mut sse = Sse::connect(&app, &format!("/api/workflows/{id}/events"), None).await;
    while let Some(f) = sse.next_event(WAIT).await {
        if f.event.as_deref() == Some("workflow.completed") {
            break;
        }
    }
    let all = history_ids(&app, &id).await;
    let mut sse = Sse::connect(
        &app,
        &format!("/api/workflows/{id}/events?after={}", all[2]),
        None,
    )
    .await;
    let mut got = vec![];
    while got.len() < all.len() - 3 {
        got.push(
            sse.next_event(WAIT)
                .await
                .unwrap()
                .id
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    assert_eq!(got, all[3..]);

    let resp = Sse::open(
        &app,
        &format!("/api/workflows/{id}/events?after=banana"),
        None,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["path"], "after");
    let resp = Sse::open(&app, "/api/workflows/wf_nope/events", None).await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_quiet_stream_gets_heartbeat_comments() {
    let app = spawn_app_with("[sse]\nheartbeat_ms = 150\n").await;
    let id = app.start(chain(1, 1)).await;
    let mut sse = Sse::connect(&app, &format!("/api/workflows/{id}/events"), None).await;
    let mut beats = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while beats < 3 && Instant::now() < until {
        if let Some(f) = sse.next(Duration::from_secs(1)).await
            && f.comment.as_deref() == Some(" heartbeat")
        {
            beats += 1;
        }
    }
    assert_eq!(beats, 3);
}

#[tokio::test]
async fn stream_caps_answer_429_per_client_and_503_in_total_and_free_up_on_disconnect() {
    let app =
        spawn_app_with("[sse]\nheartbeat_ms = 100\nmax_streams = 10\nmax_streams_per_client = 2\n")
            .await;
    let id = app.start(chain(1, 1)).await;
    let path = format!("/api/workflows/{id}/events");
    let a = Sse::connect(&app, &path, None).await;
    let _b = Sse::connect(&app, &path, None).await;
    let refused = Sse::open(&app, &path, None).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    drop(a);
    // The slot comes back once the server notices the client left (at the next write).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = Sse::open(&app, &path, None).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let app = spawn_app_with("[sse]\nmax_streams = 1\n").await;
    let id = app.start(chain(1, 1)).await;
    let path = format!("/api/workflows/{id}/events");
    let _one = Sse::connect(&app, &path, None).await;
    assert_eq!(Sse::open(&app, &path, None).await.status(), 503);
}

#[tokio::test]
async fn the_workspace_stream_starts_with_the_list_and_carries_every_workflow() {
    let app = spawn_app().await;
    let first = app.start(chain(1, 1)).await;
    let mut sse = Sse::connect(&app, "/api/events", None).await;
    let snap = sse.next_event(WAIT).await.unwrap();
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    let body: Value = serde_json::from_str(&snap.data).unwrap();
    assert!(
        body["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == first)
    );
    assert_eq!(
        body["last_event_id"].as_i64().unwrap().to_string(),
        snap.id.unwrap()
    );

    let second = app.start(chain(2, 1)).await;
    // The first may have completed before the snapshot (it starts in the commit that creates
    // it), so wait for the second's end.
    let mut completed = vec![];
    while !completed.contains(&second) {
        let f = sse.next_event(WAIT).await.expect("feed ended");
        let rec: Value = serde_json::from_str(&f.data).unwrap();
        if f.event.as_deref() == Some("workflow.completed") {
            completed.push(rec["workflow_id"].as_str().unwrap().to_string());
        }
    }
    // The first may have completed before the snapshot; the second's events all arrive.
    assert!(completed.contains(&second));
}

#[tokio::test]
async fn the_replaced_systems_invoke_endpoints_answer_in_its_shapes() {
    let app = spawn_app().await;
    let resp = app
        .post(
            "/api/invoke/async",
            &json!({ "workflow": { "role": "developer", "task": "Say hello", "params": { "duration_ms": 5 } },
                     "projectId": "93b33a8b" }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "started");
    let thread = body["threadId"].as_str().unwrap().to_string();

    let mut sse = Sse::connect(&app, &format!("/api/invoke/stream/{thread}"), None).await;
    let mut names = vec![];
    let mut session = Value::Null;
    loop {
        let f = sse.next_event(WAIT).await.expect("stream ended");
        let data: Value = serde_json::from_str(&f.data).unwrap();
        assert_eq!(data["threadId"], thread);
        // Unnamed, so that `EventSource.onmessage` receives it; `type` tells them apart.
        assert_eq!(f.event, None);
        let name = data["type"].as_str().unwrap().to_string();
        if name == "step_complete" {
            session = data["sessionId"].clone();
            assert_eq!(data["output"], "Say hello");
        }
        names.push(name.clone());
        if name == "workflow_complete" {
            assert_eq!(data["sessionIds"]["step1"], session);
            break;
        }
    }
    assert_eq!(names, ["step_start", "step_complete", "workflow_complete"]);
    assert!(session.as_str().is_some_and(|s| !s.is_empty()));

    let status: Value = app
        .get(&format!("/api/invoke-status/status/{thread}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["sessionIds"]["step1"], session);
    assert_eq!(status["completedSteps"], json!(["step1"]));
    assert!(status["lastUpdate"].is_string());
    assert_eq!(status["steps"][0]["status"], "completed");

    // A bare array of steps, and a failing one.
    let body: Value = app
        .post(
            "/api/invoke/async",
            &json!({ "workflow": [{ "role": "developer", "task": "x",
                                    "retry": { "max_attempts": 1 },
                                    "params": { "duration_ms": 1, "fail_attempts": 1, "error": "boom" } }] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let thread = body["threadId"].as_str().unwrap();
    let mut sse = Sse::connect(&app, &format!("/api/invoke/stream/{thread}"), None).await;
    let mut names = vec![];
    while let Some(f) = sse.next_event(WAIT).await {
        let data: Value = serde_json::from_str(&f.data).unwrap();
        let name = data["type"].as_str().unwrap().to_string();
        names.push(name.clone());
        if name == "workflow_failed" {
            assert!(data["error"].as_str().unwrap().contains("boom"));
            break;
        }
    }
    assert_eq!(names, ["step_start", "step_failed", "workflow_failed"]);

    let bad = app
        .post(
            "/api/invoke/async",
            &json!({ "workflow": { "role": "wizard", "task": "x" } }),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["path"], "workflow.role");
    let missing = app.post("/api/invoke/async", &json!({ "steps": [] })).await;
    assert_eq!(missing.status(), 400);
}

#[tokio::test]
async fn the_dag_executions_stream_speaks_its_documented_shapes_with_an_id_per_frame() {
    let app = spawn_app_with("[sse]\nheartbeat_ms = 200\n").await;
    // Started as that API started executions: the workflow itself as the body.
    let resp = app
        .post(
            "/api/v1/execute-dag",
            &json!([
                { "id": "a", "role": "architect", "task": "A", "params": { "duration_ms": 5 } },
                { "id": "b", "role": "developer", "task": "{a.output}B", "deps": ["a"], "params": { "duration_ms": 5 } }
            ]),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.unwrap()["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/dag-executions/{id}/events");
    let mut sse = Sse::connect(&app, &path, None).await;
    let mut frames = vec![];
    let mut heartbeat = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(heartbeat && frames.iter().any(|(n, _, _)| n == "execution.completed")) {
        assert!(Instant::now() < deadline, "saw {frames:?}");
        let f = sse.next_event(WAIT).await.expect("stream ended");
        let data: Value = serde_json::from_str(&f.data).unwrap();
        let name = f.event.unwrap();
        assert_eq!(data["type"], name.as_str(), "every payload names itself");
        assert!(data["timestamp"].is_i64(), "epoch milliseconds: {data}");
        assert_eq!(data["executionId"], id.as_str());
        match name.as_str() {
            "heartbeat" => {
                heartbeat = true;
                assert!(f.id.is_none());
                continue;
            }
            "execution.created" => {
                assert_eq!(data["totalTasks"], 2);
                assert!(data["originalRequest"].is_string());
            }
            "substep.started" => assert!(data["description"].is_string()),
            "substep.completed" => {
                assert!(data["durationMs"].is_u64());
                assert!(data["result"].is_string());
                let task = data["taskId"].as_u64().unwrap();
                assert_eq!(data["subStepId"], ["a", "b"][task as usize - 1]);
            }
            "execution.updated" => {
                for k in ["completedTasks", "failedTasks", "waitingTasks"] {
                    assert!(data[k].is_u64(), "{k} in {data}");
                }
            }
            "execution.completed" => {
                assert_eq!(data["completedTasks"], 2);
                assert_eq!(data["failedTasks"], 0);
                assert_eq!(data["finalResult"], "AB");
            }
            _ => {}
        }
        frames.push((name, f.id.expect("an id"), data));
    }
    let names: Vec<&str> = frames.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "substep.completed").count(),
        2
    );
    assert_eq!(names[0], "execution.created");
    let ids: Vec<&str> = frames.iter().map(|(_, i, _)| i.as_str()).collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "one id per frame: {ids:?}");

    // A client that saw the sub-step's end but not the update sent with it resumes with the
    // first one's id and gets the second.
    let k = names
        .iter()
        .position(|n| *n == "substep.completed")
        .unwrap();
    assert_eq!(names[k + 1], "execution.updated");
    let mut resumed = Sse::connect_with_id(&app, &path, &frames[k].1).await;
    let f = resumed.next_except_heartbeat().await;
    assert_eq!(
        (f.event.as_deref(), f.id.as_deref()),
        (Some("execution.updated"), Some(frames[k + 1].1.as_str()))
    );
    assert_eq!(
        serde_json::from_str::<Value>(&f.data).unwrap(),
        frames[k + 1].2
    );
    let f = resumed.next_except_heartbeat().await;
    assert_eq!(f.id.as_deref(), Some(frames[k + 2].1.as_str()));

    let bad = app
        .post(
            "/api/v1/execute-dag",
            &json!({ "role": "wizard", "task": "x" }),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["path"], "role");
}

#[tokio::test]
async fn a_graceful_stop_ends_open_streams_instead_of_waiting_for_them() {
    let app = spawn_app().await;
    let id = app.start(chain(1, 1)).await;
    let mut sse = Sse::connect(&app, &format!("/api/workflows/{id}/events"), None).await;
    assert!(sse.next_event(WAIT).await.is_some());
    // With a stream open, stopping must still complete (it used to wait forever).
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the server did not stop with a stream open")
        .expect("clean stop");
    // What was sent before the stop may still be read (the workflow's own events); then
    // the stream ends.
    for _ in 0..50 {
        match sse.next(Duration::from_secs(5)).await {
            None => return,
            Some(f) => assert!(f.comment.is_none(), "the stream lived on: {f:?}"),
        }
    }
    panic!("the stream is not closed");
}
