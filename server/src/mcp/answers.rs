//! What each tool answers: the JSON API's answers read and put the way an agent needs them.

use std::{collections::BTreeMap, time::Duration};

use cairn::{EventRecord, StepStatus, WorkflowState, WorkflowStatus, WorkflowSummary};
use rmcp::{RoleServer, model::ProgressNotificationParam, service::RequestContext};
use serde_json::{Map, Value, json};

use super::{Action, InvokeAsync, InvokeResume, InvokeStream, Monitor};
use crate::{
    client::{Api, ApiFailure, ControlRequest, describe},
    http::compat::{legacy_status, session_ids},
};

/// The longest output a status shows of a step; the rest is one call away.
const OUTPUT_SHOWN: usize = 2_000;
/// The most events one `invoke_stream` answer carries.
const EVENTS_PER_ANSWER: usize = 200;
/// How long `invoke_stream` follows with progress notifications before it answers.
const FOLLOW_FOR: Duration = Duration::from_secs(180);
/// How often a following `invoke_stream` looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// A tool's failure: the sentence the agent reads.
pub(super) struct Problem(pub(super) String);

impl From<ApiFailure> for Problem {
    fn from(f: ApiFailure) -> Self {
        Problem(match &f {
            ApiFailure::Refused(r) if r.status == 404 => {
                format!(
                    "{}; workflow_monitor lists the workflows there are",
                    r.message
                )
            }
            ApiFailure::Refused(r) if r.code == "invalid_spec" || r.status == 422 => {
                format!("the workflow is not valid: {r}")
            }
            _ => f.to_string(),
        })
    }
}

pub(super) type Answer = Result<Value, Problem>;

pub(super) async fn invoke_async(api: &Api, args: InvokeAsync) -> Answer {
    let mut workflow = args.workflow;
    if args.name.is_some() || args.inputs.is_some() {
        // The three shapes take `name` and `inputs` beside the steps, except a bare array.
        if let Value::Array(steps) = workflow {
            workflow = json!({ "steps": steps });
        }
        let Value::Object(spec) = &mut workflow else {
            return Err(Problem(
                "workflow must be a spec object, a step object or an array of steps".into(),
            ));
        };
        if let Some(name) = args.name {
            spec.insert("name".into(), Value::String(name));
        }
        if let Some(inputs) = args.inputs {
            let merged = spec
                .entry("inputs")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(merged) = merged else {
                return Err(Problem("workflow.inputs must be an object".into()));
            };
            merged.extend(inputs.into_iter().map(|(k, v)| (k, Value::String(v))));
        }
    }
    let started = api
        .start(&workflow, args.idempotency_key.as_deref())
        .await?;
    let id = started["id"].as_str().unwrap_or_default();
    Ok(json!({
        "threadId": id,
        "status": "started",
        "status_url": api.url(&format!("/api/workflows/{id}")),
        "events_url": api.url(&format!("/api/workflows/{id}/events")),
        "monitor_url": api.url(&format!("/workflows/{id}")),
    }))
}

/// At most [`OUTPUT_SHOWN`] characters of an output, and a note when there is more.
fn shown_output(api: &Api, wf: &WorkflowState, step: &cairn::StepState) -> (Value, Value) {
    let Some(output) = &step.output else {
        return (Value::Null, Value::Null);
    };
    let whole = step.output_bytes.unwrap_or(output.len() as u64);
    let cut: String = output.chars().take(OUTPUT_SHOWN).collect();
    if (cut.len() as u64) < whole {
        let note = format!(
            "output cut: {} of {whole} bytes shown; all of it: GET {}",
            cut.len(),
            api.url(&format!(
                "/api/workflows/{}/steps/{}/output",
                wf.id, step.id
            ))
        );
        (Value::String(cut), Value::String(note))
    } else {
        (Value::String(cut), Value::Null)
    }
}

pub(super) fn status_of(api: &Api, wf: &WorkflowState) -> Value {
    let steps: Vec<Value> = wf
        .steps
        .iter()
        .map(|s| {
            let (output, note) = shown_output(api, wf, s);
            let mut step = json!({
                "id": s.id, "role": s.role, "status": s.status.as_str(),
                "attempt": s.attempt, "max_attempts": s.max_attempts,
                "error": s.error, "sessionId": s.session_id, "output": output,
                "duration_ms": s.duration_ms, "next_attempt_at": s.next_attempt_at,
            });
            if !note.is_null() {
                step["output_note"] = note;
            }
            step
        })
        .collect();
    let p = wf.progress();
    json!({
        "threadId": wf.id,
        "name": wf.spec.as_ref().map(|s| s.name.clone()),
        "status": legacy_status(wf.status),
        "state": wf.status.as_str(),
        "sessionIds": session_ids(wf),
        "currentStep": wf.current_steps().first().map(|s| s.id.clone()),
        "lastUpdate": wf.updated_at,
        "progress": { "done": p.done, "total": p.total, "running": p.running, "failed": p.failed },
        "steps": steps,
        "error": wf.error,
        "attention": attention(wf.status, &wf.steps, wf.error.as_deref()),
    })
}

pub(super) async fn invoke_status(api: &Api, id: &str) -> Answer {
    let wf = api.workflow(id).await?;
    Ok(status_of(api, &wf))
}

/// What a person (or an agent) should know about a workflow that cannot move by itself, and
/// what would move it.
fn attention(
    status: WorkflowStatus,
    steps: &[cairn::StepState],
    error: Option<&str>,
) -> Option<String> {
    match status {
        WorkflowStatus::Stalled => Some(
            "stalled: its engine stopped renewing its lease; another instance takes it over, \
             or invoke_resume with action resume"
                .into(),
        ),
        WorkflowStatus::Paused => {
            Some("paused: waiting for a person; invoke_resume with resume, retry or skip".into())
        }
        WorkflowStatus::Failed => {
            let failed = steps.iter().find(|s| s.status == StepStatus::Failed);
            Some(match failed {
                Some(s) => format!(
                    "failed at step {}: {}; invoke_resume with retry (stepId {}) or skip",
                    s.id,
                    describe::line(
                        s.error.as_deref().or(error).unwrap_or("no error given"),
                        300
                    ),
                    s.id
                ),
                None => format!("failed: {}", error.unwrap_or("no error given")),
            })
        }
        _ => {
            // Waiting out a backoff: a retry someone asked for starts at once and is not.
            let now = chrono::Utc::now();
            let waiting: Vec<String> = steps
                .iter()
                .filter(|s| s.status == StepStatus::Retrying)
                .filter(|s| s.next_attempt_at.is_some_and(|t| t > now))
                .map(|s| {
                    format!(
                        "step {} waits to retry (attempt {} of {}){}{}",
                        s.id,
                        s.attempt + 1,
                        s.max_attempts,
                        s.next_attempt_at
                            .map(|t| format!(" until {}", t.to_rfc3339()))
                            .unwrap_or_default(),
                        s.error
                            .as_deref()
                            .map(|e| format!(" after: {}", describe::line(e, 200)))
                            .unwrap_or_default()
                    )
                })
                .collect();
            (!waiting.is_empty()).then(|| {
                format!(
                    "backing off: {}; invoke_resume with retry_now starts it at once",
                    waiting.join("; ")
                )
            })
        }
    }
}

/// The event schema `invoke_stream` describes (the SSE stream's frames and the events here).
fn event_schema() -> Value {
    json!({
        "frame": "id: <event id>, event: <type>, data: the event as JSON",
        "fields": "id, workflow_id, at (RFC 3339), type, and the type's own fields",
        "types": {
            "workflow.created": "spec",
            "workflow.started": "",
            "step.started": "step_id, attempt, task, session_id",
            "step.log": "step_id, attempt, stream (stdout|stderr), line",
            "step.retrying": "step_id, attempt, error, delay_ms, next_attempt_at",
            "step.completed": "step_id, attempt, output, output_bytes, session_id, duration_ms",
            "step.failed": "step_id, attempt, error, duration_ms",
            "step.skipped": "step_id, output, by",
            "workflow.completed": "",
            "workflow.failed": "step_id, error",
            "workflow.cancelled": "by, reason",
            "workflow.stalled": "reason, previous_owner",
            "workflow.resumed": "by",
        },
        "resume": "reconnect with the Last-Event-ID header (browsers do) or ?after=<id>",
    })
}

/// An event as `invoke_stream` lists it: its JSON, long text cut.
fn listed(rec: &EventRecord) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        for key in ["output", "task", "error", "line"] {
            if let Some(Value::String(s)) = o.get_mut(key)
                && s.chars().count() > OUTPUT_SHOWN
            {
                *s = s.chars().take(OUTPUT_SHOWN).collect::<String>() + "…";
            }
        }
        if let Value::Object(spec) = o.get("spec").cloned().unwrap_or_default() {
            // The steps' definitions are in invoke_status; the name and size are enough here.
            let steps = spec
                .get("steps")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            o.insert(
                "spec".into(),
                json!({ "name": spec.get("name"), "steps": steps }),
            );
        }
        if let Some(message) = describe::describe(rec) {
            o.insert("message".into(), Value::String(message));
        }
    }
    v
}

fn is_end(status: WorkflowStatus) -> bool {
    matches!(
        status,
        WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
    )
}

pub(super) async fn invoke_stream(
    api: &Api,
    args: InvokeStream,
    ctx: &RequestContext<RoleServer>,
) -> Answer {
    let id = &args.thread_id;
    let after = args.after.unwrap_or(0);
    if after < 0 {
        return Err(Problem("after must be an event id, 0 or more".into()));
    }
    let token = ctx
        .meta
        .get_progress_token()
        .filter(|_| args.follow.unwrap_or(true));
    let (wf, mut events, notified) = match token {
        None => (api.workflow(id).await?, api.history(id, after).await?, 0),
        Some(token) => {
            // Follow: fold from the start (for progress), then a notification per change
            // until the end, a cancel, a full answer or the time is up.
            let all = api.history(id, 0).await?;
            let mut state = WorkflowState::new(id);
            for rec in all.iter().filter(|r| r.id <= after) {
                let _ = state.apply(rec);
            }
            let mut events: Vec<EventRecord> = all.into_iter().filter(|r| r.id > after).collect();
            let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
            let (mut sent, mut notified) = (0, 0u32);
            loop {
                for rec in &events[sent..] {
                    let _ = state.apply(rec);
                    let Some(message) = describe::describe(rec) else {
                        continue;
                    };
                    let p = state.progress();
                    let name = state.spec.as_ref().map_or(id.as_str(), |s| s.name.as_str());
                    let param = ProgressNotificationParam::new(token.clone(), p.done as f64)
                        .with_total(p.total as f64)
                        .with_message(format!("{name}: {message}"));
                    if ctx.peer.notify_progress(param).await.is_ok() {
                        notified += 1;
                    }
                }
                sent = events.len();
                if is_end(state.status)
                    || events.len() >= EVENTS_PER_ANSWER
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
                tokio::select! {
                    _ = ctx.ct.cancelled() => break,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
                let last = events.last().map_or(after, |e| e.id);
                events.extend(api.history(id, last).await?);
            }
            (state, events, notified)
        }
    };
    let more = events.len() > EVENTS_PER_ANSWER;
    events.truncate(EVENTS_PER_ANSWER);
    let next_after = events.last().map_or(after, |e| e.id);
    Ok(json!({
        "threadId": id,
        "status": legacy_status(wf.status),
        "state": wf.status.as_str(),
        "ended": is_end(wf.status) && !more,
        "events": events.iter().map(listed).collect::<Vec<_>>(),
        "next_after": next_after,
        "more": more,
        "progress_notifications": notified,
        "sse_url": api.url(&format!("/api/workflows/{id}/events")),
        "compatible_sse_url": api.url(&format!("/api/invoke/stream/{id}")),
        "event_schema": event_schema(),
    }))
}

/// The one step an action fits when the agent did not name one.
fn pick_step(wf: &WorkflowState, action: Action) -> Result<String, Problem> {
    let fits = |s: &&cairn::StepState| match action {
        Action::Retry => matches!(s.status, StepStatus::Failed | StepStatus::Cancelled),
        Action::RetryNow => s.status == StepStatus::Retrying,
        Action::Skip => !s.status.is_done() && s.status != StepStatus::Running,
        Action::Resume => false,
    };
    let candidates: Vec<&str> = wf
        .steps
        .iter()
        .filter(|s| fits(s))
        .map(|s| s.id.as_str())
        .collect();
    let verb = match action {
        Action::Retry => "retry",
        Action::RetryNow => "retry_now",
        Action::Skip => "skip",
        Action::Resume => "resume",
    };
    // Skip: the failed step first, else the only step left.
    if let Action::Skip = action
        && let Some(failed) = wf.steps.iter().find(|s| s.status == StepStatus::Failed)
    {
        return Ok(failed.id.clone());
    }
    match candidates.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Problem(format!(
            "no step of workflow {} can {verb} now (steps: {}); name one with stepId",
            wf.id,
            wf.steps
                .iter()
                .map(|s| format!("{} {}", s.id, s.status))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        many => Err(Problem(format!(
            "more than one step could {verb}: {}; name one with stepId",
            many.join(", ")
        ))),
    }
}

pub(super) async fn invoke_resume(api: &Api, args: InvokeResume) -> Answer {
    let id = &args.thread_id;
    let step = match (args.action, args.step_id) {
        (Action::Resume, _) => String::new(),
        (_, Some(step)) => step,
        (action, None) => pick_step(&api.workflow(id).await?, action)?,
    };
    let control = match args.action {
        Action::Resume => ControlRequest::Resume,
        Action::Retry => ControlRequest::Retry { step },
        Action::RetryNow => ControlRequest::RetryNow { step },
        Action::Skip => ControlRequest::Skip {
            step,
            output: args.output,
        },
    };
    let mut wf = api.control(id, &control).await?;
    // Skipping the step a workflow failed at is a repair: it runs on from there (a person in
    // the browser presses Resume after Skip; an agent asked for both in one call).
    if matches!(args.action, Action::Skip)
        && wf.status == WorkflowStatus::Failed
        && !wf.steps.iter().any(|s| s.status == StepStatus::Failed)
    {
        wf = api.control(id, &ControlRequest::Resume).await?;
    }
    Ok(status_of(api, &wf))
}

pub(super) async fn workflow_monitor(api: &Api, args: Monitor) -> Answer {
    let limit = args.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(Problem("limit must be from 1 to 200".into()));
    }
    let list: Vec<WorkflowSummary> = api.list(args.status.as_deref(), limit).await?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rows = Vec::with_capacity(list.len());
    for w in &list {
        *counts.entry(w.status.as_str()).or_default() += 1;
        // Only what needs attention costs a second read.
        let needs_look = matches!(
            w.status,
            WorkflowStatus::Failed | WorkflowStatus::Stalled | WorkflowStatus::Paused
        ) || w.next_attempt_at.is_some();
        let attention = if needs_look {
            match api.workflow(&w.id).await {
                Ok(wf) => attention(wf.status, &wf.steps, wf.error.as_deref()),
                Err(_) => attention(w.status, &[], w.error.as_deref()),
            }
        } else {
            None
        };
        if attention
            .as_deref()
            .is_some_and(|a| a.starts_with("backing off"))
        {
            *counts.entry("backing_off").or_default() += 1;
        }
        rows.push(json!({
            "threadId": w.id,
            "name": w.name,
            "status": w.status.as_str(),
            "progress": format!("{}/{}", w.progress.done, w.progress.total),
            "current_steps": w.current_steps,
            "attention": attention,
            "error": w.error,
            "created_at": w.created_at,
            "updated_at": w.updated_at,
        }));
    }
    let needing: usize = rows.iter().filter(|r| !r["attention"].is_null()).count();
    Ok(json!({
        "summary": counts,
        "needing_attention": needing,
        "workflows": rows,
    }))
}
