//! Server-Sent Events: one workflow's stream and the whole workspace's (DESIGN §5).
//!
//! Every frame has `id:` (the event's position in the log), `event:` (its type) and `data:`
//! (the event as JSON, as `GET .../history` lists it). A new client first gets
//! `event: snapshot`; a client that sends `Last-Event-ID` (browsers do on reconnect) or
//! `?after=ID` gets every event after that id from the database instead, then the live
//! ones. A `: heartbeat` comment keeps proxies from closing a quiet stream.

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, Path, Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event as Frame, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{Stream, StreamExt, stream};
use serde_json::json;

use super::{ApiError, AppState, ErrorDetail, auth::Caller, workflows::snapshot_json};
use crate::{
    live::{Feed, StreamGuard, StreamRefusal},
    store::LiveEvent,
};

/// Workflows in the workspace stream's first snapshot.
const WORKSPACE_SNAPSHOT: u32 = 200;

/// The SSE routes of the contract.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/workflows/{id}/events", get(workflow_events))
        .route("/api/events", get(workspace_events))
}

/// Where a client resumes from: the `Last-Event-ID` header, else `?after=ID`, else nowhere
/// (a new client, which gets a snapshot).
pub fn resume_point(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Option<i64>, ApiError> {
    // The header wins: a browser reconnecting sends it with the id it saw last, while the
    // URL still carries the `after` it first connected with.
    let (name, raw) = match (headers.get("last-event-id"), query.get("after")) {
        (Some(h), _) => ("Last-Event-ID", h.to_str().unwrap_or("?")),
        (None, Some(q)) => ("after", q.as_str()),
        (None, None) => return Ok(None),
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(ApiError::BadRequest {
            message: format!("{name} must be an event id (a whole number >= 0)"),
            details: vec![ErrorDetail {
                path: name.into(),
                message: format!("not an event id: {raw:?}"),
            }],
        }),
    }
}

/// Takes a stream slot for the client or answers 429/503.
pub fn admit(state: &AppState, client: SocketAddr) -> Result<StreamGuard, ApiError> {
    state.streams.acquire(client.ip()).map_err(|r| match r {
        StreamRefusal::PerClient(n) => ApiError::TooManyRequests(format!(
            "this client already has {n} streams open; close one first"
        )),
        StreamRefusal::Total(n) => {
            ApiError::Unavailable(anyhow::anyhow!("the server has {n} streams open"))
        }
    })
}

/// Wraps a frame stream as the SSE response: heartbeats, no proxy buffering, and the
/// stream slot held for as long as the client is connected.
pub fn sse_response<S>(state: &AppState, frames: S, guard: StreamGuard) -> Response
where
    S: Stream<Item = Frame> + Send + 'static,
{
    // Browsers wait 3 s by default before reconnecting; after a restart 1 s is kinder.
    let retry = Frame::default().retry(Duration::from_secs(1));
    let closing = state.closing.clone().cancelled_owned();
    let too_old = tokio::time::sleep(state.config.engine.sse.max_age);
    let frames = stream::iter([retry])
        .chain(frames)
        .take_until(closing)
        .take_until(too_old)
        .map(move |f| {
            let _slot = &guard;
            Ok::<_, Infallible>(f)
        });
    let mut resp = Sse::new(frames)
        .keep_alive(
            KeepAlive::new()
                .interval(state.config.engine.sse.heartbeat)
                .text("heartbeat"),
        )
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("static header"));
    resp
}

/// The contract's frame for an event.
pub fn event_frame(e: &LiveEvent) -> Frame {
    Frame::default()
        .id(e.id.to_string())
        .event(e.event.type_name())
        .data(&e.json)
}

/// Feed events as frames; a database error ends the stream (the client reconnects with its
/// last id and loses nothing).
fn frames(feed: Feed) -> impl Stream<Item = Frame> + Send {
    feed.into_stream()
        .take_while(|r| {
            if let Err(e) = r {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "event stream ended by a read error"
                );
            }
            std::future::ready(r.is_ok())
        })
        .filter_map(|r| std::future::ready(r.ok().map(|e: Arc<LiveEvent>| event_frame(&e))))
}

/// One workflow's live events (SSE): a snapshot, then every event; resumes with
/// `Last-Event-ID` or `?after=`.
#[utoipa::path(get, path = "/api/workflows/{id}/events", tag = "streams",
    params(("id" = String, Path, description = "The workflow's id"),
        ("after" = Option<i64>, Query, description = "Resume after this event id", minimum = 0)),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such workflow", body = super::openapi::ErrorBody)))]
async fn workflow_events(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = resume_point(&headers, &query)?;
    let guard = admit(&state, client)?;
    // Subscribe before reading the snapshot: see live::feed for why that leaves no gap.
    let feed = Feed::subscribe(&state.store, Some(id.clone()), None);
    let wf = state
        .store
        .load(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow {id:?}")))?;
    let (first, feed) = match after {
        Some(after) => (None, feed.after(after)),
        None => {
            let frame = Frame::default()
                .id(wf.last_event_id.to_string())
                .event("snapshot")
                .data(snapshot_json(&wf).to_string());
            (Some(frame), feed.after(wf.last_event_id))
        }
    };
    Ok(sse_response(
        &state,
        stream::iter(first).chain(frames(feed)),
        guard,
    ))
}

/// Every workflow's live events (SSE): the list, then every event.
#[utoipa::path(get, path = "/api/events", tag = "streams",
    params(("after" = Option<i64>, Query, description = "Resume after this event id", minimum = 0)),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String)))]
async fn workspace_events(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut after = resume_point(&headers, &query)?;
    let guard = admit(&state, client)?;
    let feed = Feed::subscribe(&state.store, None, Some(caller.workspace.clone()));
    // Retention deleted workflows since this client's position: the log cannot tell it which
    // (their events are gone), so it starts over from a snapshot.
    if let Some(a) = after
        && a <= state.store.pruned_through().await?
    {
        after = None;
    }
    let (first, feed) = match after {
        Some(after) => (None, feed.after(after)),
        None => {
            let (last, workflows) = state
                .store
                .workspace_snapshot(WORKSPACE_SNAPSHOT, Some(&caller.workspace))
                .await?;
            let frame = Frame::default()
                .id(last.to_string())
                .event("snapshot")
                .data(json!({ "workflows": workflows, "last_event_id": last }).to_string());
            (Some(frame), feed.after(last))
        }
    };
    Ok(sse_response(
        &state,
        stream::iter(first).chain(frames(feed)),
        guard,
    ))
}

/// Settings of the live streams (the `[sse]` table of `cairn.toml`).
#[derive(Debug, Clone)]
pub struct SseSettings {
    /// How often a quiet stream gets a `: heartbeat` comment.
    pub heartbeat: Duration,
    /// Streams open at once, in total.
    pub max_streams: usize,
    /// Streams open at once per client address.
    pub max_streams_per_client: usize,
    /// How long one stream stays open; then it ends, and the client reconnects with its
    /// `Last-Event-ID` (to any instance) and misses nothing.
    pub max_age: Duration,
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            max_streams: 20_000,
            max_streams_per_client: 500,
            max_age: Duration::from_secs(3600),
        }
    }
}
