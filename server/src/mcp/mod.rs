//! The MCP server: the tools an agent drives workflows with, as the replaced system named
//! them (`invoke_async`, `invoke_status`, `invoke_stream`, `invoke_resume`, `invoke_cancel`,
//! `workflow_monitor`).
//!
//! Every tool is a call of the JSON API through [`Api`]: in the server (`/mcp`, streamable
//! HTTP, stateless) straight to its own router, in `cairn mcp --server URL` (stdio) over HTTP.
//! Nothing is kept between calls, so any instance answers any call. Problems come back as
//! tool errors (`isError`) whose text says what to do next.

use std::collections::BTreeMap;

use rmcp::{
    RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig},
    schemars::{self, JsonSchema},
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use serde::Deserialize;
use serde_json::Value;

use crate::client::{Api, ControlRequest};

mod answers;
use answers::{
    Answer, Problem, invoke_async, invoke_resume, invoke_status, invoke_stream, status_of,
    workflow_monitor,
};

/// The tools, over one server's API.
#[derive(Clone)]
pub struct Tools {
    api: Api,
    /// In the server: URLs in answers use the host the client called (`Host`).
    base_from_request: bool,
    tool_router: ToolRouter<Self>,
}

fn respond(answer: Answer) -> CallToolResult {
    match answer {
        Ok(v) => CallToolResult::structured(v),
        Err(Problem(message)) => CallToolResult::error(vec![ContentBlock::text(message)]),
    }
}

/// `invoke_async`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeAsync {
    /// The workflow: a spec `{"name", "inputs", "defaults", "steps": [...]}`, one step
    /// `{"role", "task"}`, or an array of steps. A step is `{"id", "role", "task", "deps",
    /// "retry", "timeout_s"}`; its task may use `{STEP.output}` of a step in its `deps` and
    /// `{inputs.NAME}`.
    pub workflow: Value,
    /// A display name (instead of the spec's).
    pub name: Option<String>,
    /// Values for `{inputs.NAME}` (over the spec's own).
    pub inputs: Option<BTreeMap<String, String>>,
    /// Makes a retried call safe: the same key with the same workflow answers the first
    /// call's workflow instead of starting another.
    pub idempotency_key: Option<String>,
}

/// A workflow's id.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Thread {
    /// The workflow's id (`threadId` from `invoke_async`).
    #[serde(rename = "threadId")]
    pub thread_id: String,
}

/// `invoke_stream`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeStream {
    /// The workflow's id.
    #[serde(rename = "threadId")]
    pub thread_id: String,
    /// The cursor: only events after this event id (the `next_after` of the previous answer).
    pub after: Option<i64>,
    /// Whether to follow with progress notifications (when the call carries a progress
    /// token) until the workflow ends; default true. false answers at once.
    pub follow: Option<bool>,
}

/// What `invoke_resume` does.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run the workflow again after a failure, a cancel, a stall or a pause.
    Resume,
    /// Run a failed step again (with a fresh retry budget).
    Retry,
    /// Start a step that waits for its retry backoff now.
    RetryNow,
    /// Mark a step done without running it; later steps read `output` as its output.
    Skip,
}

/// `invoke_resume`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeResume {
    /// The workflow's id.
    #[serde(rename = "threadId")]
    pub thread_id: String,
    /// resume, retry, retry_now or skip.
    pub action: Action,
    /// The step for retry, retry_now and skip; when left out, the one step the action fits
    /// (the failed step for retry and skip, the waiting one for retry_now).
    #[serde(rename = "stepId")]
    pub step_id: Option<String>,
    /// For skip: what later steps read as the skipped step's output.
    pub output: Option<String>,
}

/// `invoke_cancel`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeCancel {
    /// The workflow's id.
    #[serde(rename = "threadId")]
    pub thread_id: String,
    /// Why, recorded in the workflow's history.
    pub reason: Option<String>,
}

/// `workflow_monitor`'s arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Monitor {
    /// Only workflows with this status: pending, running, paused, stalled, completed, failed
    /// or cancelled.
    pub status: Option<String>,
    /// How many workflows, newest first (1 to 200, default 20).
    pub limit: Option<u32>,
}

impl Tools {
    /// The tools in the server, over its own API router.
    pub fn in_server(api: Api) -> Self {
        Self {
            api,
            base_from_request: true,
            tool_router: Self::tool_router(),
        }
    }

    /// The tools of `cairn mcp`, over a server's API at its URL.
    pub fn remote(api: Api) -> Self {
        Self {
            api,
            base_from_request: false,
            tool_router: Self::tool_router(),
        }
    }

    /// The API as the calling client reaches it: with its credentials (so the API decides
    /// what the caller's token may see and do, as for any request), and URLs in answers
    /// built from the `Host` it called.
    fn api(&self, ctx: &RequestContext<RoleServer>) -> Api {
        if !self.base_from_request {
            return self.api.clone();
        }
        let Some(parts) = ctx.extensions.get::<axum::http::request::Parts>() else {
            return self.api.clone();
        };
        use axum::http::header::{AUTHORIZATION, COOKIE, HOST};
        let credentials = [AUTHORIZATION, COOKIE]
            .into_iter()
            .filter_map(|name| parts.headers.get(&name).map(|v| (name, v.clone())))
            .collect();
        let api = self.api.clone().with_credentials(credentials);
        match parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
            Some(host) => api.with_base(&format!("http://{host}")),
            None => api,
        }
    }
}

#[tool_router]
impl Tools {
    #[tool(
        description = "Start a workflow in the background and answer at once with its threadId. \
        `workflow` is a spec {name, inputs, steps: [...]}, one step {role, task}, or an array of \
        steps [{id, role, task, deps}]; a task may use {STEP.output} of a dependency and \
        {inputs.NAME}. Follow it with invoke_stream or invoke_status."
    )]
    async fn invoke_async(
        &self,
        Parameters(args): Parameters<InvokeAsync>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        respond(invoke_async(&self.api(&ctx), args).await)
    }

    #[tool(
        description = "A workflow's status: status (running, completed, failed, aborted, \
        paused), sessionIds per step, currentStep, lastUpdate, progress, and each step's \
        status, attempt, error and output (long outputs are cut, with where to read them whole)."
    )]
    async fn invoke_status(
        &self,
        Parameters(args): Parameters<Thread>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        respond(invoke_status(&self.api(&ctx), &args.thread_id).await)
    }

    #[tool(
        description = "Follow a workflow: its events after the cursor `after` with the next \
        cursor, the SSE URL and the event schema. When the call carries a progress token, it \
        sends a progress notification per step change until the workflow ends (or 3 minutes \
        pass) and then answers; call again with next_after to go on."
    )]
    async fn invoke_stream(
        &self,
        Parameters(args): Parameters<InvokeStream>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        respond(invoke_stream(&self.api(&ctx), args, &ctx).await)
    }

    #[tool(
        description = "Repair a workflow: action resume (run it again after a failure, cancel, \
        stall or pause), retry (run a failed step again), retry_now (skip a step's backoff \
        wait) or skip (mark a step done; `output` is what later steps read; a workflow that \
        failed at that step runs on). stepId defaults to the one step the action fits. Answers \
        the workflow's status after it."
    )]
    async fn invoke_resume(
        &self,
        Parameters(args): Parameters<InvokeResume>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        respond(invoke_resume(&self.api(&ctx), args).await)
    }

    #[tool(
        description = "Cancel a workflow: running steps are stopped, completed ones are kept; \
        invoke_resume with action resume runs it again later."
    )]
    async fn invoke_cancel(
        &self,
        Parameters(args): Parameters<InvokeCancel>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let api = self.api(&ctx);
        let answer = async {
            let wf = api
                .control(
                    &args.thread_id,
                    &ControlRequest::Cancel {
                        reason: args.reason,
                    },
                )
                .await?;
            Ok(status_of(&api, &wf))
        }
        .await;
        respond(answer)
    }

    #[tool(
        description = "Oversee workflows: active and recent ones (newest first) with progress, \
        and which need attention and why: stalled, waiting on a retry backoff, paused for a \
        person, or failed (with the error and the step). Filter with status, size with limit."
    )]
    async fn workflow_monitor(
        &self,
        Parameters(args): Parameters<Monitor>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        respond(workflow_monitor(&self.api(&ctx), args).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("cairn", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "cairn runs workflows of agent and script steps durably in the background. \
                 Start one with invoke_async, follow it with invoke_stream (progress \
                 notifications) or invoke_status, repair it with invoke_resume, stop it with \
                 invoke_cancel, and see every workflow that needs attention with \
                 workflow_monitor.",
            )
    }
}

/// `/mcp`: streamable HTTP, stateless (no session another instance would lack), over the
/// server's own API router.
pub fn service(
    state: &crate::http::AppState,
    api: axum::Router,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    Tools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let base = format!("http://{}", state.leptos_options.site_addr);
    let tools = Tools::in_server(Api::local(api, &base));
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_cancellation_token(state.closing.child_token());
    if !state.config.addr.ip().is_loopback() {
        // rmcp accepts only loopback `Host`s unless told otherwise (DNS rebinding); a server
        // bound to a network address is reached by other names.
        config = config.disable_allowed_hosts();
    }
    StreamableHttpService::new(move || Ok(tools.clone()), Default::default(), config)
}

/// `cairn mcp --server URL`: the same tools over stdio, for clients that spawn a process.
/// Only the protocol goes to stdout.
pub async fn serve_stdio(server: &str, token: Option<&str>) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let running = Tools::remote(Api::remote(server).with_token(token))
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    Ok(())
}
