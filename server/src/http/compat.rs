//! The endpoints of the system cairn replaces, as views over the one event log.
//!
//! - `POST /api/invoke/async` `{"workflow": step | [steps] | spec, ...}` → `{"threadId", "status": "started"}`
//! - `GET /api/invoke/stream/{threadId}`: SSE `step_start`, `step_complete` (with `sessionId`),
//!   `step_retry`, `step_failed`, `workflow_complete`, `workflow_failed`
//! - `GET|POST /api/invoke-status/status/{threadId}`: `status`, `sessionIds`, `currentStep`,
//!   `lastUpdate`, `completedSteps`, `results`, `steps`
//! - `GET /api/v1/dag-executions/{id}/events`: SSE `execution.created|updated|completed|failed`,
//!   `substep.started|completed|failed`, and an `event: heartbeat` every heartbeat interval
//!
//! Nothing here runs workflows: starting goes through the same `create` as
//! `POST /api/workflows`, and every frame is a translation of a committed event (its `id:`
//! is that event's, so `Last-Event-ID` resumes these streams too). Both streams replay the
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
    events::{admit, resume_point, sse_response},
    workflows::{create, parse_options},
};
use crate::live::Feed;

/// The compatible routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/invoke/async", post(invoke_async))
        .route("/api/invoke/stream/{thread_id}", get(invoke_stream))
        .route(
            "/api/invoke-status/status/{thread_id}",
            get(invoke_status).post(invoke_status),
        )
        .route("/api/v1/dag-executions/{id}/events", get(dag_events))
}

async fn invoke_async(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| ApiError::BadRequest {
        message: format!("cannot read the request body: {e}"),
        details: vec![],
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        message: format!("the body is not valid JSON: {e}"),
        details: vec![],
    })?;
    let Some(workflow) = value.get("workflow") else {
        return Err(ApiError::BadRequest {
            message: "the body needs a \"workflow\": a step, an array of steps or a spec".into(),
            details: vec![ErrorDetail {
                path: "workflow".into(),
                message: "missing".into(),
            }],
        });
    };
    let opts = parse_options(&state);
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
                    path: if e.path.is_empty() {
                        "workflow".into()
                    } else if e.path.starts_with('[') {
                        format!("workflow{}", e.path)
                    } else {
                        format!("workflow.{}", e.path)
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
    let (id, _, _) = create(&state, spec, key, &body).await?;
    Ok(Json(json!({ "threadId": id, "status": "started" })))
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

fn frame(rec: &EventRecord, name: &str, data: Value) -> Frame {
    Frame::default()
        .id(rec.id.to_string())
        .event(name)
        .data(data.to_string())
}

fn invoke_frames(t: &mut Translator, rec: &EventRecord) -> Vec<Frame> {
    t.fold(rec);
    let wf = &t.state;
    let thread = &rec.workflow_id;
    let ts = rec.at;
    let one = |name: &str, data: Value| vec![frame(rec, name, data)];
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

fn counters(wf: &WorkflowState) -> Value {
    let p = wf.progress();
    json!({ "completedSteps": p.done, "totalSteps": p.total, "runningSteps": p.running,
            "failedSteps": p.failed })
}

fn dag_frames(t: &mut Translator, rec: &EventRecord) -> Vec<Frame> {
    t.fold(rec);
    let wf = &t.state;
    let id = &rec.workflow_id;
    let ts = rec.at;
    let with = |mut v: Value| {
        if let (Some(o), Value::Object(c)) = (v.as_object_mut(), counters(wf)) {
            o.extend(c);
        }
        v
    };
    let updated = || {
        frame(
            rec,
            "execution.updated",
            with(
                json!({ "executionId": id, "status": wf.status.as_str(), "event": rec.event.type_name(), "timestamp": ts }),
            ),
        )
    };
    match &rec.event {
        Event::WorkflowCreated { spec, .. } => vec![frame(
            rec,
            "execution.created",
            with(
                json!({ "executionId": id, "name": spec.name, "status": "pending", "timestamp": ts }),
            ),
        )],
        Event::StepStarted {
            step_id, attempt, ..
        } => vec![
            frame(
                rec,
                "substep.started",
                with(json!({ "executionId": id, "substepId": step_id,
                "attempt": attempt, "timestamp": ts })),
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
            frame(
                rec,
                "substep.completed",
                with(json!({ "executionId": id, "substepId": step_id,
                "result": output, "sessionId": session_id, "durationMs": duration_ms, "timestamp": ts })),
            ),
            updated(),
        ],
        Event::StepFailed {
            step_id,
            attempt,
            error,
            duration_ms,
        } => vec![
            frame(
                rec,
                "substep.failed",
                with(json!({ "executionId": id, "substepId": step_id,
                "attempt": attempt, "error": error, "durationMs": duration_ms, "timestamp": ts })),
            ),
            updated(),
        ],
        Event::WorkflowCompleted {} => {
            let duration = match (wf.started_at, wf.finished_at) {
                (Some(a), Some(b)) => (b - a).num_milliseconds(),
                _ => 0,
            };
            vec![frame(
                rec,
                "execution.completed",
                with(json!({ "executionId": id, "status": "completed",
                "durationMs": duration, "results": results(wf), "timestamp": ts })),
            )]
        }
        Event::WorkflowFailed { error, step_id } => vec![frame(
            rec,
            "execution.failed",
            with(
                json!({ "executionId": id, "status": "failed", "error": error, "failedSubstep": step_id, "timestamp": ts }),
            ),
        )],
        Event::WorkflowCancelled { reason, .. } => vec![frame(
            rec,
            "execution.failed",
            with(json!({ "executionId": id, "status": "cancelled",
                "error": reason.clone().unwrap_or_else(|| "cancelled".into()), "timestamp": ts })),
        )],
        Event::StepLog { .. } => vec![],
        _ => vec![updated()],
    }
}

/// A translated stream of one workflow: replay after the resume point (or from the start),
/// then live.
async fn translated(
    state: &AppState,
    id: &str,
    after: i64,
    translate: fn(&mut Translator, &EventRecord) -> Vec<Frame>,
) -> Result<impl Stream<Item = Frame> + Send + use<>, ApiError> {
    let feed = Feed::subscribe(&state.store, Some(id.to_string())).after(after);
    if state.store.load(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no workflow {id:?}")));
    }
    let mut t = Translator::at(state, id, after).await?;
    Ok(feed
        .into_stream()
        .take_while(|r| std::future::ready(r.is_ok()))
        .flat_map(move |r| {
            let frames = match r {
                Ok(rec) => translate(&mut t, &rec),
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
    let after = resume_point(&headers, &query)?.unwrap_or(0);
    let guard = admit(&state, client)?;
    let frames = translated(&state, &thread_id, after, invoke_frames).await?;
    Ok(sse_response(&state, frames, guard))
}

async fn dag_events(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = resume_point(&headers, &query)?.unwrap_or(0);
    let guard = admit(&state, client)?;
    let frames = translated(&state, &id, after, dag_frames).await?;
    // This API's clients expect a real `heartbeat` event, not only an SSE comment.
    let every = state.config.engine.sse.heartbeat;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let execution = id.clone();
    let heartbeats = stream::unfold(interval, move |mut iv| {
        let execution = execution.clone();
        async move {
            iv.tick().await;
            let data = json!({ "executionId": execution, "timestamp": chrono::Utc::now() });
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
