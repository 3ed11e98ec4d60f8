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

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::HeaderMap,
    routing::{get, post},
};
use cairn::{WorkflowState, WorkflowStatus};
use serde_json::{Map, Value, json};

use super::{
    ApiError, AppState, ErrorDetail,
    auth::Caller,
    workflows::{create, parse_options},
};

mod streams;

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
        .route(
            "/api/invoke/stream/{thread_id}",
            get(streams::invoke_stream),
        )
        .route(
            "/api/v1/dag-executions/{id}/events",
            get(streams::dag_events),
        )
}

/// The replaced system's start: answers `{threadId, status: "started"}`.
#[utoipa::path(post, path = "/api/invoke/async", tag = "compatible",
    request_body(content = super::openapi::InvokeBody, description = "{workflow: a step, an array of steps or a spec}"),
    responses((status = 200, description = "Started", body = super::openapi::ThreadBody),
        (status = 400, description = "Not JSON, or no workflow", body = super::openapi::ErrorBody),
        (status = 422, description = "Not a valid workflow", body = super::openapi::ErrorBody)))]
async fn invoke_async(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = start(&state, &caller, &headers, body, Wrapped::Always).await?;
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
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = start(&state, &caller, &headers, body, Wrapped::Maybe).await?;
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
    caller: &Caller,
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
    let (id, _, _) = create(state, caller, spec, key, &body).await?;
    Ok(id)
}

/// The replaced system's status words.
pub(crate) fn legacy_status(s: WorkflowStatus) -> &'static str {
    match s {
        WorkflowStatus::Pending | WorkflowStatus::Running | WorkflowStatus::Stalled => "running",
        WorkflowStatus::Completed => "completed",
        WorkflowStatus::Failed => "failed",
        WorkflowStatus::Cancelled => "aborted",
        WorkflowStatus::Paused => "paused",
    }
}

/// Each step's agent session id, by step (the replaced system's `sessionIds`).
pub(crate) fn session_ids(wf: &WorkflowState) -> Map<String, Value> {
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
