//! The compatible streams: `/api/invoke/stream/{threadId}` and
//! `/api/v1/dag-executions/{id}/events`, each event of the log translated into that system's
//! frames (see the module above for the shapes).

use std::{collections::HashMap, net::SocketAddr};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::HeaderMap,
    response::{Response, sse::Event as Frame},
};
use cairn::{Event, EventRecord, WorkflowState};
use futures::{Stream, StreamExt, stream};
use serde_json::{Value, json};

use super::{results, session_ids};
use crate::{
    http::{
        ApiError, AppState, ErrorDetail,
        events::{admit, sse_response},
    },
    live::Feed,
};

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
    let feed = Feed::subscribe(&state.store, Some(id.to_string()), None).after(after);
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

pub(super) async fn invoke_stream(
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

pub(super) async fn dag_events(
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
