//! The endpoints of the system cairn replaces, as views over the one event log, in the shapes
//! its own notes document (so its clients work unchanged):
//!
//! - `POST /api/invoke/async` `{"workflow": step | [steps] | spec, ...}` → `{"threadId", "status": "started"}`
//! - `GET /api/invoke/stream/{threadId}`: unnamed SSE frames (its browser client listens with
//!   `onmessage`) whose data has `type`: `step_start`, `step_complete` (with `sessionId`),
//!   `step_retry`, `step_failed`, `workflow_complete`, `workflow_failed`
//! - `GET|POST /api/invoke-status/status/{threadId}`: `status`, `sessionIds`, `currentStep`,
//!   `lastUpdate`, `completedSteps`, `results`, `steps`
//! - `POST /api/v1/execute-dag` (the workflow, or `{"workflow": …}`) → `{"executionId"}`
//! - `GET /api/v1/dag-executions/{id}/events`: named SSE frames `execution.created|updated|
//!   completed|failed`, `substep.started|completed|failed` and `heartbeat`, each payload with
//!   `type`, `executionId`, an epoch-millisecond `timestamp` and that API's counters
//!   (`completedTasks`, `failedTasks`, `waitingTasks`, `totalTasks`)
//!
//! Nothing here runs workflows: starting goes through the same `create` as
//! `POST /api/workflows`, and every frame is a translation of a committed event. Its `id:` is
//! that event's, or `41.0`, `41.1`, … for the frames before the last when one event becomes
//! several, so `Last-Event-ID` resumes these streams exactly too. Both streams replay the
//! workflow's history from the start for a new client, so a late client still sees the end.

use std::{collections::HashMap, net::SocketAddr};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, Path, Query, State, rejection::BytesRejection},
    http::HeaderMap,
    response::{Response, sse::Event as Frame},
    routing::{get, post},
};
use cairn::{Event, EventRecord, WorkflowState, WorkflowStatus};
use futures::{Stream, StreamExt, stream};
use serde_json::{Map, Value, json};

use super::{
    ApiError, AppState, ErrorDetail,
    events::{admit, sse_response},
    workflows::{create, parse_options},
};
use crate::live::Feed;

/// The compatible routes that answer at once.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/invoke/async", post(invoke_async))
        .route(
            "/api/invoke-status/status/{thread_id}",
            get(invoke_status).post(invoke_status),
        )
        .route("/api/v1/execute-dag", post(execute_dag))
}

/// The compatible streams.
pub fn streams() -> Router<AppState> {
    Router::new()
        .route("/api/invoke/stream/{thread_id}", get(invoke_stream))
        .route("/api/v1/dag-executions/{id}/events", get(dag_events))
}

/// The replaced system's start: answers `{threadId, status: "started"}`.
#[utoipa::path(post, path = "/api/invoke/async", tag = "compatible",
    request_body(content = super::openapi::InvokeBody, description = "{workflow: a step, an array of steps or a spec}"),
    responses((status = 200, description = "Started", body = super::openapi::ThreadBody),
        (status = 400, description = "Not JSON, or no workflow", body = super::openapi::ErrorBody),
        (status = 422, description = "Not a valid workflow", body = super::openapi::ErrorBody)))]
async fn invoke_async(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = start(&state, &headers, body, Wrapped::Always).await?;
    Ok(Json(json!({ "threadId": id, "status": "started" })))
}

/// `POST /api/v1/execute-dag`: the DAG-executions API's start, answering `{executionId}`. The
/// body is `{"workflow": …}` as for `/api/invoke/async`, or the workflow itself.
#[utoipa::path(post, path = "/api/v1/execute-dag", tag = "compatible",
    request_body(content = serde_json::Value, description = "The workflow, or {workflow: …}"),
    responses((status = 200, description = "Started", body = super::openapi::ExecutionBody),
        (status = 400, description = "Not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Not a valid workflow", body = super::openapi::ErrorBody)))]
async fn execute_dag(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = start(&state, &headers, body, Wrapped::Maybe).await?;
    Ok(Json(json!({ "executionId": id, "status": "started" })))
}

/// Whether a start request's workflow sits under `"workflow"` always, or only when that key
/// is there (otherwise the body is the workflow).
#[derive(Clone, Copy, PartialEq)]
enum Wrapped {
    Always,
    Maybe,
}

/// Parses a compatible start request (a step, an array of steps or a spec) and creates the
/// workflow as `POST /api/workflows` does, with the same idempotency key header.
async fn start(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    wrapped: Wrapped,
) -> Result<String, ApiError> {
    let body = body.map_err(|e| ApiError::BadRequest {
        message: format!("cannot read the request body: {e}"),
        details: vec![],
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        message: format!("the body is not valid JSON: {e}"),
        details: vec![],
    })?;
    // Where the workflow sits, and the path its problems are reported under.
    let (workflow, prefix) = match (value.get("workflow"), wrapped) {
        (Some(w), _) => (w, "workflow"),
        (None, Wrapped::Maybe) => (&value, ""),
        (None, Wrapped::Always) => {
            return Err(ApiError::BadRequest {
                message: "the body needs a \"workflow\": a step, an array of steps or a spec"
                    .into(),
                details: vec![ErrorDetail {
                    path: "workflow".into(),
                    message: "missing".into(),
                }],
            });
        }
    };
    let opts = parse_options(state);
    let spec = cairn::parse_spec_value(workflow, &opts).map_err(|errors| {
        let n = errors.errors.len();
        ApiError::InvalidSpec {
            message: format!(
                "the workflow has {n} problem{}",
                if n == 1 { "" } else { "s" }
            ),
            details: errors
                .errors
                .into_iter()
                .map(|e| ErrorDetail {
                    path: match (prefix, e.path.as_str()) {
                        ("", "") => "body".into(),
                        ("", p) => p.to_string(),
                        (w, "") => w.into(),
                        (w, p) if p.starts_with('[') => format!("{w}{p}"),
                        (w, p) => format!("{w}.{p}"),
                    },
                    message: e.message,
                })
                .collect(),
        }
    })?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string);
    let (id, _, _) = create(state, spec, key, &body).await?;
    Ok(id)
}

/// The replaced system's status words.
fn legacy_status(s: WorkflowStatus) -> &'static str {
    match s {
        WorkflowStatus::Pending | WorkflowStatus::Running | WorkflowStatus::Stalled => "running",
        WorkflowStatus::Completed => "completed",
        WorkflowStatus::Failed => "failed",
        WorkflowStatus::Cancelled => "aborted",
        WorkflowStatus::Paused => "paused",
    }
}

fn session_ids(wf: &WorkflowState) -> Map<String, Value> {
    wf.steps
        .iter()
        .filter_map(|s| Some((s.id.clone(), Value::String(s.session_id.clone()?))))
        .collect()
}

/// Every step's output as the state carries it (the first
/// [`cairn::OUTPUT_PREVIEW_BYTES`] of a long one): what the live streams send.
fn results(wf: &WorkflowState) -> Map<String, Value> {
    wf.steps
        .iter()
        .filter_map(|s| Some((s.id.clone(), Value::String(s.output.clone()?))))
        .collect()
}

/// Every step's output, whole (the state carries previews of long ones).
async fn whole_results(
    state: &AppState,
    wf: &WorkflowState,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for s in &wf.steps {
        let Some(preview) = &s.output else { continue };
        let whole = if s.output_is_cut() {
            state
                .store
                .output(&wf.id, &s.id)
                .await?
                .unwrap_or_else(|| preview.clone())
        } else {
            preview.clone()
        };
        out.insert(s.id.clone(), Value::String(whole));
    }
    Ok(out)
}

/// The replaced system's status shape.
#[utoipa::path(get, path = "/api/invoke-status/status/{thread_id}", tag = "compatible",
    params(("thread_id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "Its status", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody)))]
async fn invoke_status(
    State(state): State<AppState>,
    Path(thread_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let wf = state
        .store
        .load(&thread_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow {thread_id:?}")))?;
    let current = wf.current_steps().first().map(|s| s.id.clone());
    let completed: Vec<&str> = wf
        .steps
        .iter()
        .filter(|s| s.status.is_done())
        .map(|s| s.id.as_str())
        .collect();
    let steps: Vec<Value> = wf
        .steps
        .iter()
        .map(|s| {
            json!({
                "id": s.id, "status": s.status.as_str(), "role": s.role,
                "task": s.task.clone().unwrap_or_default(), "attempt": s.attempt,
                "sessionId": s.session_id, "output": s.output, "error": s.error,
            })
        })
        .collect();
    Ok(Json(json!({
        "threadId": wf.id,
        "status": legacy_status(wf.status),
        "sessionIds": session_ids(&wf),
        "currentStep": current,
        "lastUpdate": wf.updated_at,
        "completedSteps": completed,
        "results": whole_results(&state, &wf).await?,
        "steps": steps,
        "error": wf.error,
    })))
}

/// Folds the stream's events so translations can report counters and session ids; starts
/// from the state at the resume point.
struct Translator {
    state: WorkflowState,
}

impl Translator {
    async fn at(state: &AppState, id: &str, after: i64) -> Result<Self, ApiError> {
        let mut wf = WorkflowState::new(id);
        if after > 0 {
            for rec in state.store.history(id, 0).await? {
                if rec.id > after {
                    break;
                }
                let _ = wf.apply(&rec);
            }
        }
        Ok(Self { state: wf })
    }

    fn fold(&mut self, rec: &EventRecord) {
        if let Err(e) = self.state.apply(rec) {
            tracing::warn!(error = %e, "compat stream: event did not fold");
        }
    }
}

/// One translated frame before it gets its id: `name` is `None` for an unnamed frame (what
/// `EventSource.onmessage` receives).
struct Out {
    name: Option<&'static str>,
    data: Value,
}

/// A stream position in these translated streams: after frame `frame` of event `event`, or
/// after all of it when `frame` is `None`.
///
/// One committed event can become several frames (a sub-step's end is also an execution
/// update), and each frame needs an id of its own, or a client that reconnects between them
/// loses the second. The last frame of event 41 has the id `41`, the ones before it `41.0`,
/// `41.1`, …; a client that resumes with `41.0` gets the rest of event 41 first.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cursor {
    event: i64,
    frame: Option<usize>,
}

impl Cursor {
    fn parse(headers: &HeaderMap, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let (name, raw) = match (headers.get("last-event-id"), query.get("after")) {
            (Some(h), _) => ("Last-Event-ID", h.to_str().unwrap_or("?")),
            (None, Some(q)) => ("after", q.as_str()),
            (None, None) => {
                return Ok(Self {
                    event: 0,
                    frame: None,
                });
            }
        };
        let (event, frame) = match raw.trim().split_once('.') {
            Some((e, f)) => (e, Some(f)),
            None => (raw.trim(), None),
        };
        let event = event.parse::<i64>().ok().filter(|n| *n >= 0);
        let frame = frame.map(|f| f.parse::<usize>().ok());
        match (event, frame) {
            (Some(event), None) => Ok(Self { event, frame: None }),
            (Some(event), Some(Some(f))) => Ok(Self {
                event,
                frame: Some(f),
            }),
            _ => Err(ApiError::BadRequest {
                message: format!("{name} must be an event id (41, or 41.0 inside one event)"),
                details: vec![ErrorDetail {
                    path: name.into(),
                    message: format!("not an event id: {raw:?}"),
                }],
            }),
        }
    }

    /// The events to read: after this one, or from this one when part of it is still owed.
    fn read_after(self) -> i64 {
        match self.frame {
            Some(_) => (self.event - 1).max(0),
            None => self.event,
        }
    }
}

/// Gives each of one event's frames its id (see [`Cursor`]), dropping those the client has.
fn number(rec: &EventRecord, outs: Vec<Out>, skip: Option<Cursor>) -> Vec<Frame> {
    let last = outs.len().saturating_sub(1);
    outs.into_iter()
        .enumerate()
        .filter(|(k, _)| match skip {
            Some(Cursor {
                event,
                frame: Some(f),
            }) if event == rec.id => *k > f,
            _ => true,
        })
        .map(|(k, out)| {
            let id = if k == last {
                rec.id.to_string()
            } else {
                format!("{}.{k}", rec.id)
            };
            let frame = Frame::default().id(id).data(out.data.to_string());
            match out.name {
                Some(name) => frame.event(name),
                None => frame,
            }
        })
        .collect()
}

/// `/api/invoke/stream`: the replaced system's browser client listens with
/// `eventSource.onmessage`, which only sees unnamed frames, and tells them apart by `type`.
/// Timestamps are ISO 8601 strings, as its server's `JSON.stringify(new Date())` wrote them.
fn invoke_frames(t: &mut Translator, rec: &EventRecord) -> Vec<Out> {
    t.fold(rec);
    let wf = &t.state;
    let thread = &rec.workflow_id;
    let ts = rec.at;
    let one = |ty: &str, mut data: Value| {
        data["type"] = ty.into();
        vec![Out { name: None, data }]
    };
    match &rec.event {
        Event::StepStarted {
            step_id,
            attempt,
            task,
            session_id,
            ..
        } => one(
            "step_start",
            json!({ "threadId": thread, "stepId": step_id, "attempt": attempt, "task": task,
                    "sessionId": session_id, "timestamp": ts }),
        ),
        Event::StepCompleted {
            step_id,
            output,
            session_id,
            duration_ms,
            ..
        } => one(
            "step_complete",
            json!({ "threadId": thread, "stepId": step_id, "output": output,
                    "sessionId": session_id, "durationMs": duration_ms, "timestamp": ts }),
        ),
        Event::StepRetrying {
            step_id,
            attempt,
            error,
            delay_ms,
            next_attempt_at,
            ..
        } => one(
            "step_retry",
            json!({ "threadId": thread, "stepId": step_id, "attempt": attempt, "error": error,
                    "delayMs": delay_ms, "nextAttemptAt": next_attempt_at, "timestamp": ts }),
        ),
        Event::StepFailed {
            step_id,
            attempt,
            error,
            ..
        } => one(
            "step_failed",
            json!({ "threadId": thread, "stepId": step_id, "attempt": attempt, "error": error,
                    "sessionId": wf.step(step_id).and_then(|s| s.session_id.clone()),
                    "timestamp": ts }),
        ),
        Event::WorkflowCompleted {} => one(
            "workflow_complete",
            json!({ "threadId": thread, "status": "completed", "sessionIds": session_ids(wf),
                    "results": results(wf), "timestamp": ts }),
        ),
        Event::WorkflowFailed { step_id, error } => one(
            "workflow_failed",
            json!({ "threadId": thread, "status": "failed", "error": error, "failedStep": step_id,
                    "sessionIds": session_ids(wf), "timestamp": ts }),
        ),
        Event::WorkflowCancelled { reason, .. } => one(
            "workflow_failed",
            json!({ "threadId": thread, "status": "aborted",
                    "error": reason.clone().unwrap_or_else(|| "cancelled".into()),
                    "sessionIds": session_ids(wf), "timestamp": ts }),
        ),
        _ => vec![],
    }
}

/// The DAG-executions counters, under that API's names.
fn counters(wf: &WorkflowState) -> Value {
    let p = wf.progress();
    json!({ "completedTasks": p.done, "failedTasks": p.failed, "runningTasks": p.running,
            "waitingTasks": p.total - p.done - p.failed - p.running, "totalTasks": p.total })
}

/// A sub-step's number in that API (`taskId`): its place in the spec, from 1.
fn task_id(wf: &WorkflowState, step_id: &str) -> usize {
    wf.steps
        .iter()
        .position(|s| s.id == step_id)
        .map_or(0, |i| i + 1)
}

/// What that API called the execution's result: the output of the last step (in spec order)
/// that has one.
fn final_result(wf: &WorkflowState) -> Option<String> {
    wf.steps.iter().rev().find_map(|s| s.output.clone())
}

fn epoch_ms(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

/// `/api/v1/dag-executions/{id}/events`: named frames (its clients use `addEventListener`)
/// whose data repeats the name as `type`, with epoch-millisecond timestamps and that API's
/// field names (`subStepId`, `taskId`, `completedTasks`, `finalResult`, …).
fn dag_frames(t: &mut Translator, rec: &EventRecord) -> Vec<Out> {
    t.fold(rec);
    let wf = &t.state;
    let id = &rec.workflow_id;
    let ts = epoch_ms(rec.at);
    let out = |ty: &'static str, fields: Value| {
        let mut data = json!({ "type": ty, "executionId": id, "timestamp": ts });
        if let (Some(o), Value::Object(f)) = (data.as_object_mut(), fields) {
            o.extend(f);
        }
        Out {
            name: Some(ty),
            data,
        }
    };
    let with_counters = |mut v: Value| {
        if let (Some(o), Value::Object(c)) = (v.as_object_mut(), counters(wf)) {
            o.extend(c);
        }
        v
    };
    let updated = || {
        out(
            "execution.updated",
            with_counters(json!({ "status": wf.status.as_str(), "event": rec.event.type_name() })),
        )
    };
    let duration = || match (wf.started_at, wf.finished_at) {
        (Some(a), Some(b)) => (b - a).num_milliseconds(),
        _ => 0,
    };
    match &rec.event {
        Event::WorkflowCreated { spec, .. } => vec![out(
            "execution.created",
            json!({ "status": "pending", "totalTasks": spec.steps.len(),
                    "originalRequest": spec.name }),
        )],
        Event::StepStarted {
            step_id,
            attempt,
            task,
            ..
        } => vec![
            out(
                "substep.started",
                json!({ "subStepId": step_id, "taskId": task_id(wf, step_id),
                        "description": task, "attempt": attempt }),
            ),
            updated(),
        ],
        Event::StepCompleted {
            step_id,
            output,
            session_id,
            duration_ms,
            ..
        } => vec![
            out(
                "substep.completed",
                json!({ "subStepId": step_id, "taskId": task_id(wf, step_id),
                        "durationMs": duration_ms, "result": output, "sessionId": session_id }),
            ),
            updated(),
        ],
        Event::StepFailed {
            step_id,
            attempt,
            error,
            duration_ms,
        } => vec![
            out(
                "substep.failed",
                json!({ "subStepId": step_id, "taskId": task_id(wf, step_id),
                        "attempt": attempt, "error": error, "durationMs": duration_ms }),
            ),
            updated(),
        ],
        // The end changes the status too: clients that only merge `execution.updated` (its
        // webApp did) see it there as well as in the end's own frame.
        Event::WorkflowCompleted {} => vec![
            updated(),
            out(
                "execution.completed",
                with_counters(json!({ "status": "completed", "durationMs": duration(),
                                      "finalResult": final_result(wf), "results": results(wf) })),
            ),
        ],
        Event::WorkflowFailed { error, step_id } => vec![
            updated(),
            out(
                "execution.failed",
                with_counters(
                    json!({ "status": "failed", "error": error, "subStepId": step_id,
                                      "taskId": step_id.as_deref().map(|s| task_id(wf, s)),
                                      "durationMs": duration() }),
                ),
            ),
        ],
        Event::WorkflowCancelled { reason, .. } => vec![
            updated(),
            out(
                "execution.failed",
                with_counters(json!({ "status": "cancelled", "durationMs": duration(),
                    "error": reason.clone().unwrap_or_else(|| "cancelled".into()) })),
            ),
        ],
        Event::StepLog { .. } => vec![],
        _ => vec![updated()],
    }
}

/// A translated stream of one workflow: replay after the resume point (or from the start),
/// then live.
async fn translated(
    state: &AppState,
    id: &str,
    from: Cursor,
    translate: fn(&mut Translator, &EventRecord) -> Vec<Out>,
) -> Result<impl Stream<Item = Frame> + Send + use<>, ApiError> {
    let after = from.read_after();
    let feed = Feed::subscribe(&state.store, Some(id.to_string())).after(after);
    if state.store.load(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no workflow {id:?}")));
    }
    let mut t = Translator::at(state, id, after).await?;
    let mut skip = from.frame.map(|_| from);
    Ok(feed
        .into_stream()
        .take_while(|r| std::future::ready(r.is_ok()))
        .flat_map(move |r| {
            let frames = match r {
                Ok(rec) => {
                    let outs = translate(&mut t, &rec);
                    let frames = number(&rec, outs, skip);
                    if skip.is_some_and(|c| rec.id >= c.event) {
                        skip = None;
                    }
                    frames
                }
                Err(_) => vec![],
            };
            stream::iter(frames)
        }))
}

async fn invoke_stream(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(thread_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let from = Cursor::parse(&headers, &query)?;
    let guard = admit(&state, client)?;
    let frames = translated(&state, &thread_id, from, invoke_frames).await?;
    Ok(sse_response(&state, frames, guard))
}

async fn dag_events(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let from = Cursor::parse(&headers, &query)?;
    let guard = admit(&state, client)?;
    let frames = translated(&state, &id, from, dag_frames).await?;
    // This API's clients expect a real `heartbeat` event, not only an SSE comment.
    let every = state.config.engine.sse.heartbeat;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let execution = id.clone();
    let heartbeats = stream::unfold(interval, move |mut iv| {
        let execution = execution.clone();
        async move {
            iv.tick().await;
            let data = json!({ "type": "heartbeat", "executionId": execution,
                               "timestamp": epoch_ms(chrono::Utc::now()) });
            Some((
                Frame::default().event("heartbeat").data(data.to_string()),
                iv,
            ))
        }
    });
    Ok(sse_response(
        &state,
        stream::select(frames, heartbeats),
        guard,
    ))
}
