//! `/api/workflows`: start, list, inspect and control workflows.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cairn::{ParseOptions, WorkflowState, WorkflowStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, ErrorDetail, auth::Caller};
use crate::{
    engine::{Control, ControlError, Created},
    store::{Change, ListQuery, Rejection, WorkflowSummary},
};

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Largest page of the list.
const MAX_PAGE: u32 = 200;

/// The workflow routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/workflows", post(start).get(list))
        .route("/api/workflows/{id}", get(snapshot))
        .route("/api/workflows/{id}/history", get(history))
        .route("/api/workflows/{id}/resume", post(resume))
        .route("/api/workflows/{id}/cancel", post(cancel))
        .route("/api/workflows/{id}/steps/{step}/retry", post(retry_step))
        .route(
            "/api/workflows/{id}/steps/{step}/retry-now",
            post(retry_now),
        )
        .route("/api/workflows/{id}/steps/{step}/skip", post(skip))
        .route("/api/workflows/{id}/steps/{step}/output", get(output))
}

/// The answer to a start.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Started {
    /// The new workflow's id.
    pub id: String,
    /// Its status now.
    #[schema(value_type = String)]
    pub status: WorkflowStatus,
    /// Where to read its state.
    pub status_url: String,
    /// Where to follow it live (SSE).
    pub events_url: String,
}

impl Started {
    fn new(id: String, status: WorkflowStatus) -> Self {
        Self {
            status_url: format!("/api/workflows/{id}"),
            events_url: format!("/api/workflows/{id}/events"),
            id,
            status,
        }
    }
}

/// A snapshot: the folded state plus derived progress (what `GET /api/workflows/{id}` and
/// the SSE `snapshot` frame carry).
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    /// The state, as `cairn::WorkflowState` serialises it.
    #[serde(flatten)]
    pub state: &'a WorkflowState,
    /// Done / total / running / failed.
    pub progress: cairn::Progress,
}

/// The snapshot JSON of a state.
pub fn snapshot_json(state: &WorkflowState) -> Value {
    serde_json::to_value(Snapshot {
        state,
        progress: state.progress(),
    })
    .unwrap_or(Value::Null)
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is too large".into())
    } else {
        ApiError::BadRequest {
            message: format!("cannot read the request body: {rejection}"),
            details: vec![],
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |m: &str| ApiError::BadRequest {
        message: format!("Idempotency-Key {m}"),
        details: vec![ErrorDetail {
            path: "Idempotency-Key".into(),
            message: m.into(),
        }],
    };
    let s = v.to_str().map_err(|_| bad("must be printable ASCII"))?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be 1 to 255 characters"));
    }
    Ok(Some(s.to_string()))
}

/// How specs are parsed on this server: its roles, its retry defaults, its timeout.
pub fn parse_options(state: &AppState) -> ParseOptions {
    let engine = &state.config.engine;
    ParseOptions {
        known_roles: Some(engine.role_names()),
        base_retry: engine.retry.clone(),
        default_timeout_s: engine.default_timeout_s,
        ..ParseOptions::default()
    }
}

/// Parses a start request's body into a spec: JSON (400 when it is not JSON at all) or YAML,
/// then the model's validation (422 with every problem and its path).
fn parse_body(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<cairn::ValidSpec, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest {
        message: "the body is not UTF-8 text".into(),
        details: vec![],
    })?;
    let opts = parse_options(state);
    if text.len() > opts.limits.max_spec_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "the spec is larger than {} bytes",
            opts.limits.max_spec_bytes
        )));
    }
    let yaml = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    let result = if yaml {
        cairn::parse_spec(text, &opts)
    } else {
        let value: Value = serde_json::from_str(text).map_err(|e| ApiError::BadRequest {
            message: format!("the body is not valid JSON: {e}"),
            details: vec![ErrorDetail {
                path: String::new(),
                message: e.to_string(),
            }],
        })?;
        cairn::parse_spec_value(&value, &opts)
    };
    result.map_err(|errors| {
        let n = errors.errors.len();
        ApiError::InvalidSpec {
            message: format!("the spec has {n} problem{}", if n == 1 { "" } else { "s" }),
            details: errors
                .errors
                .into_iter()
                .map(|e| ErrorDetail {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        }
    })
}

/// Starts a workflow.
#[utoipa::path(post, path = "/api/workflows", tag = "workflows",
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key with the same body answers the first workflow")),
    request_body(content = serde_json::Value, description = "A spec, one step or an array of steps (JSON; YAML with a yaml Content-Type)"),
    responses(
        (status = 202, description = "Started", body = Started, links(
            ("snapshot" = (operation_id = "snapshot", parameters(("id" = "$response.body#/id")))),
            ("history" = (operation_id = "history", parameters(("id" = "$response.body#/id")))),
            ("cancel" = (operation_id = "cancel", parameters(("id" = "$response.body#/id")))),
            ("resume" = (operation_id = "resume", parameters(("id" = "$response.body#/id")))),
            ("skip" = (operation_id = "skip", parameters(("id" = "$response.body#/id"), ("step" = "step1")))),
            ("retry" = (operation_id = "retry_step", parameters(("id" = "$response.body#/id"), ("step" = "step1")))),
            ("output" = (operation_id = "output", parameters(("id" = "$response.body#/id"), ("step" = "step1")))),
        )),
        (status = 400, description = "Not JSON", body = super::openapi::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with another body", body = super::openapi::ErrorBody),
        (status = 413, description = "Too large", body = super::openapi::ErrorBody),
        (status = 422, description = "Not a valid workflow: every problem with its path", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many writes", body = super::openapi::ErrorBody),
    ))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let key = idempotency_key(&headers)?;
    let spec = parse_body(&state, &headers, &body)?;
    let (id, status, replayed) = create(&state, &caller, spec, key, &body).await?;
    let mut resp = (StatusCode::ACCEPTED, Json(Started::new(id, status))).into_response();
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    Ok(resp)
}

/// Commits a new workflow in the caller's workspace and wakes the engine;
/// `(id, status, replayed)`.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    spec: cairn::ValidSpec,
    key: Option<String>,
    body: &[u8],
) -> Result<(String, WorkflowStatus, bool), ApiError> {
    // Keys are the workspace's own: the same key in two workspaces names two workflows
    // (a workspace name has no '/').
    let idempotency = key.map(|k| {
        (
            format!("{}/{k}", caller.workspace),
            hex(&Sha256::digest(body)),
        )
    });
    let by = caller.by("api").to_string();
    let change = Change::created(spec, Some(by), &caller.workspace, idempotency);
    let id = change.workflow_id.clone();
    // Through the engine: with room, it starts the workflow in the checkpoint that creates it.
    let outcome = state.engine.create(change).await.map_err(|e| {
        tracing::warn!(error = format!("{e:#}"), "a workflow could not be created");
        ApiError::Unavailable(e)
    })?;
    match outcome {
        Created::Committed(status) => Ok((id, status, false)),
        Created::Rejected(Rejection::IdempotentReplay(Some(existing))) => {
            let status = state
                .store
                .load(&existing)
                .await?
                .map(|s| s.status)
                .unwrap_or(WorkflowStatus::Pending);
            Ok((existing, status, true))
        }
        Created::Rejected(Rejection::IdempotentReplay(None)) => Err(ApiError::Conflict(
            "this Idempotency-Key was already used with a different request".into(),
        )),
        Created::Rejected(other) => Err(ApiError::Internal(anyhow::anyhow!(
            "creating a workflow was refused: {other}"
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
struct Page {
    workflows: Vec<WorkflowSummary>,
    /// Pass as `before` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<String>,
}

fn parse_status(s: &str) -> Option<WorkflowStatus> {
    serde_json::from_value(Value::String(s.to_string())).ok()
}

/// Lists workflows, newest first.
#[utoipa::path(get, path = "/api/workflows", tag = "workflows",
    params(
        ("status" = Option<String>, Query, description = "pending, running, paused, completed, failed, cancelled or stalled"),
        ("limit" = Option<u32>, Query, description = "1 to 200 (default 50)", minimum = 1, maximum = 200),
        ("before" = Option<String>, Query, description = "next_before of the previous page"),
    ),
    responses(
        (status = 200, description = "A page", body = super::openapi::PageBody),
        (status = 400, description = "Bad parameters", body = super::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let mut details = Vec::new();
    let mut q = ListQuery {
        limit: 50,
        workspace: Some(caller.workspace),
        ..ListQuery::default()
    };
    for (k, v) in &params {
        match k.as_str() {
            "status" => match parse_status(v) {
                Some(s) => q.status = Some(s),
                None => details.push(ErrorDetail {
                    path: "status".into(),
                    message: format!(
                        "unknown status {v:?}; one of pending, running, paused, completed, failed, cancelled, stalled"
                    ),
                }),
            },
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => q.limit = n,
                _ => details.push(ErrorDetail {
                    path: "limit".into(),
                    message: format!("must be a whole number from 1 to {MAX_PAGE}"),
                }),
            },
            "before" => q.before = Some(v.clone()),
            other => details.push(ErrorDetail {
                path: other.into(),
                message: "unknown parameter; use status, limit or before".into(),
            }),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::BadRequest {
            message: "bad query parameters".into(),
            details,
        });
    }
    let workflows = state.store.list(&q).await?;
    let next_before = (workflows.len() as u32 == q.limit)
        .then(|| workflows.last().map(|w| w.id.clone()))
        .flatten();
    Ok(Json(Page {
        workflows,
        next_before,
    }))
}

async fn load(state: &AppState, id: &str) -> Result<WorkflowState, ApiError> {
    state
        .store
        .load(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow {id:?}")))
}

/// A workflow's state and progress.
#[utoipa::path(get, path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "Its state", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),))]
async fn snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let wf = load(&state, &id).await?;
    Ok(Json(snapshot_json(&wf)))
}

/// A step's whole output as plain text (snapshots, events and the page carry its first
/// [`cairn::OUTPUT_PREVIEW_BYTES`] and its size, `output_bytes`).
/// A step's whole output, as text.
#[utoipa::path(get, path = "/api/workflows/{id}/steps/{step}/output", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id"), ("step" = String, Path, description = "The step's id")),
    responses((status = 200, description = "The output", body = String, content_type = "text/plain"),
        (status = 404, description = "No such workflow or step, or no output", body = super::openapi::ErrorBody),
    ))]
async fn output(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let wf = load(&state, &id).await?;
    let status = wf
        .step(&step)
        .ok_or_else(|| ApiError::NotFound(format!("workflow {id:?} has no step {step:?}")))?
        .status;
    let text = state.store.output(&id, &step).await?.ok_or_else(|| {
        ApiError::NotFound(format!("step '{step}' has no output: it is {status}"))
    })?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                axum::http::HeaderName::from_static("x-cairn-output-bytes"),
                text.len().to_string(),
            ),
        ],
        text,
    )
        .into_response())
}

/// `GET …/history[?after=ID]`: the workflow's events, all or those after an event id.
#[utoipa::path(get, path = "/api/workflows/{id}/history", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id"),
        ("after" = Option<i64>, Query, description = "Only events after this id", minimum = 0)),
    responses((status = 200, description = "Its events, oldest first", body = super::openapi::HistoryBody),
        (status = 400, description = "Bad parameters", body = super::openapi::ErrorBody),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),))]
async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut after = 0;
    for (k, v) in &params {
        match (k.as_str(), v.parse::<i64>()) {
            ("after", Ok(n)) if n >= 0 => after = n,
            ("after", _) => {
                return Err(ApiError::BadRequest {
                    message: "after must be an event id (a whole number >= 0)".into(),
                    details: vec![ErrorDetail {
                        path: "after".into(),
                        message: format!("not an event id: {v:?}"),
                    }],
                });
            }
            (other, _) => {
                return Err(ApiError::BadRequest {
                    message: "unknown query parameter; history takes only after".into(),
                    details: vec![ErrorDetail {
                        path: other.into(),
                        message: "unknown parameter".into(),
                    }],
                });
            }
        }
    }
    load(&state, &id).await?;
    let events = state.store.history(&id, after).await?;
    Ok(Json(
        serde_json::json!({ "workflow_id": id, "events": events }),
    ))
}

/// An optional JSON object body of a control; empty means "no options".
fn control_body<T: for<'de> Deserialize<'de> + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(body_error)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::BadRequest {
            message: format!("bad request body: {}", e.inner()),
            details: vec![ErrorDetail {
                path: if path == "." { String::new() } else { path },
                message: e.inner().to_string(),
            }],
        }
    })
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelBody {
    /// Why, recorded in the workflow's history.
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SkipBody {
    /// What later steps read as the skipped step's output (default empty).
    output: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

async fn run_control(
    state: &AppState,
    caller: &Caller,
    id: &str,
    control: Control,
) -> Result<Json<Value>, ApiError> {
    match state.engine.control(id, control, caller.by("api")).await {
        Ok(wf) => Ok(Json(snapshot_json(&wf))),
        Err(ControlError::NotFound(m)) => Err(ApiError::NotFound(m)),
        Err(ControlError::Conflict(m)) => Err(ApiError::Conflict(m)),
        Err(ControlError::Unavailable) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "the engine is not running"
        ))),
        Err(ControlError::Internal(e)) => Err(ApiError::Internal(e)),
    }
}

#[utoipa::path(post, path = "/api/workflows/{id}/resume", tag = "controls",
    params(("id" = String, Path, description = "The workflow's id")),
    request_body(content = super::openapi::NoBody, description = "Optional; may be empty"),
    responses((status = 200, description = "The state after it", body = serde_json::Value),
        (status = 400, description = "A bad body", body = super::openapi::ErrorBody),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),
        (status = 409, description = "The state does not allow it", body = super::openapi::ErrorBody),
    ))]
/// Runs a workflow again after a failure, a cancel, a stall or a pause.
async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let NoBody {} = control_body(body)?;
    run_control(&state, &caller, &id, Control::Resume).await
}

#[utoipa::path(post, path = "/api/workflows/{id}/cancel", tag = "controls",
    params(("id" = String, Path, description = "The workflow's id")),
    request_body(content = CancelBody, description = "Optional; may be empty"),
    responses((status = 200, description = "The state after it", body = serde_json::Value),
        (status = 400, description = "A bad body", body = super::openapi::ErrorBody),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),
        (status = 409, description = "The state does not allow it", body = super::openapi::ErrorBody),
    ))]
/// Cancels a workflow.
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let CancelBody { reason } = control_body(body)?;
    run_control(&state, &caller, &id, Control::Cancel { reason }).await
}

#[utoipa::path(post, path = "/api/workflows/{id}/steps/{step}/retry", tag = "controls",
    params(("id" = String, Path, description = "The workflow's id"), ("step" = String, Path, description = "The step's id")),
    request_body(content = super::openapi::NoBody, description = "Optional; may be empty"),
    responses((status = 200, description = "The state after it", body = serde_json::Value),
        (status = 400, description = "A bad body", body = super::openapi::ErrorBody),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),
        (status = 409, description = "The state does not allow it", body = super::openapi::ErrorBody),
    ))]
/// Runs a step again.
async fn retry_step(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, step_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let NoBody {} = control_body(body)?;
    run_control(&state, &caller, &id, Control::RetryStep { step_id }).await
}

#[utoipa::path(post, path = "/api/workflows/{id}/steps/{step}/retry-now", tag = "controls",
    params(("id" = String, Path, description = "The workflow's id"), ("step" = String, Path, description = "The step's id")),
    request_body(content = super::openapi::NoBody, description = "Optional; may be empty"),
    responses((status = 200, description = "The state after it", body = serde_json::Value),
        (status = 400, description = "A bad body", body = super::openapi::ErrorBody),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),
        (status = 409, description = "The state does not allow it", body = super::openapi::ErrorBody),
    ))]
/// Starts a step waiting for its backoff now.
async fn retry_now(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, step_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let NoBody {} = control_body(body)?;
    run_control(&state, &caller, &id, Control::RetryNow { step_id }).await
}

#[utoipa::path(post, path = "/api/workflows/{id}/steps/{step}/skip", tag = "controls",
    params(("id" = String, Path, description = "The workflow's id"), ("step" = String, Path, description = "The step's id")),
    request_body(content = SkipBody, description = "Optional; may be empty"),
    responses((status = 200, description = "The state after it", body = serde_json::Value),
        (status = 400, description = "A bad body", body = super::openapi::ErrorBody),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody),
        (status = 409, description = "The state does not allow it", body = super::openapi::ErrorBody),
    ))]
/// Marks a step done without running it.
async fn skip(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, step_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let SkipBody { output } = control_body(body)?;
    run_control(&state, &caller, &id, Control::Skip { step_id, output }).await
}
