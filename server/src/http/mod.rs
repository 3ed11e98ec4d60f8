//! The HTTP surface: the JSON API, the server-rendered web monitor and its static files.
//!
//! Each area has its own `router()`; [`router`] merges them with the Leptos routes in one place.

pub mod auth;
pub(crate) mod compat;
pub mod error;
pub mod events;
mod guard;
mod health;
pub mod openapi;
pub mod workflows;

use std::sync::Arc;

use app::{
    data::{BoxFuture, DataSource, WorkspaceData, WorkspaceSnapshot},
    shell,
};
use axum::{
    Router,
    extract::FromRef,
    routing::{any, get},
};
use cairn::WorkflowState;
use leptos::prelude::{LeptosOptions, provide_context, use_context};
use tower_http::{services::ServeDir, trace::TraceLayer};

use crate::{config::Config, engine::EngineHandle, live::StreamLimits, store::Store};
pub use error::{ApiError, ErrorDetail};

/// What every handler can reach.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// Where the web assets are and what the bundle is called.
    pub leptos_options: LeptosOptions,
    /// The database.
    pub store: Store,
    /// The token check.
    pub auth: auth::Auth,
    /// The engine's control channel.
    pub engine: EngineHandle,
    /// Open SSE streams, capped.
    pub streams: StreamLimits,
    /// Cancelled when the server starts shutting down: live streams end then, or a
    /// graceful shutdown would wait for them forever.
    pub closing: tokio_util::sync::CancellationToken,
    /// This process's id, for health and (later) lease ownership.
    pub instance: Arc<str>,
    /// The configuration the server started with.
    pub config: Arc<Config>,
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let state_cors = state.config.engine.http.cors_origins.clone();
    let local_only = guard::LocalOnly {
        loopback: state.config.addr.ip().is_loopback(),
        allowed_origins: Arc::new(state_cors.clone()),
    };
    let api = api(state.clone());
    let mcp = crate::mcp::service(&state, api.clone());

    // The browser bundle: `cargo leptos build --precompress` writes a `.br` and a `.gz` beside
    // each file, and the one the browser accepts is sent (the plain file otherwise).
    let pkg = std::path::Path::new(&*state.leptos_options.site_root)
        .join(&*state.leptos_options.site_pkg_dir);
    let pkg_route = format!("/{}", state.leptos_options.site_pkg_dir);

    // The pages: the app reads which one from the path (`app::nav::Page`), as the browser
    // does. Any other path gets a file from the site root, or the app's not-found page (404).
    // Rendering spawns tasks on Leptos' executor: tokio's (already set on a second call).
    let _ = any_spawner::Executor::init_tokio();
    // Each page reads the store as the workspace of whoever asks (`auth::pages` put them in
    // the request, which Leptos provides as context before this runs).
    let provide_data = {
        let state = state.clone();
        move || {
            let caller = use_context::<axum::http::request::Parts>()
                .and_then(|p| p.extensions.get::<auth::Caller>().cloned());
            if let Some(c) = &caller {
                provide_context(app::viewer::Viewer {
                    workspace: c.workspace.clone(),
                    label: c.label.clone(),
                });
            }
            let data: DataSource = Arc::new(PageData {
                state: state.clone(),
                caller,
            });
            provide_context(data);
        }
    };
    let page = leptos_axum::render_app_to_stream_with_context(provide_data.clone(), {
        let options = state.leptos_options.clone();
        move || shell(options.clone())
    });
    let pages = Router::new()
        .route("/", get(page.clone()))
        .route("/workflows/{id}", get(page))
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(provide_data, shell))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::pages,
        ))
        .with_state(state.clone());
    let open_pages = Router::new()
        .nest_service(
            &pkg_route,
            ServeDir::new(pkg).precompressed_br().precompressed_gzip(),
        )
        .route("/sign-in", get(auth::sign_in_page).post(auth::sign_in))
        .route("/sign-out", axum::routing::post(auth::sign_out))
        .with_state(state.auth.clone());
    let guarded = Router::new()
        .nest_service("/mcp", mcp)
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate,
        ));
    let cors = guard::cors(&state_cors);
    api.merge(guarded)
        .merge(open_pages)
        .merge(pages)
        .layer(axum::middleware::from_fn(track))
        .layer(axum::middleware::from_fn_with_state(
            local_only,
            guard::local_only,
        ))
        .layer(cors)
        .layer(TraceLayer::new_for_http())
}

/// `GET /metrics`: every metric in Prometheus' text format.
async fn metrics_text() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::install().render(),
    )
}

/// Counts each request by its route pattern (`/api/workflows/{id}`, never the id itself),
/// method and status.
async fn track(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    crate::metrics::http_request(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

/// The JSON API (with the replaced system's endpoints): what clients call, and what the MCP
/// tools call in-process.
pub fn api(state: AppState) -> Router {
    let http = &state.config.engine.http;
    let own = axum::middleware::from_fn_with_state(state.clone(), auth::own_workflows_only);
    let answered_at_once = Router::new()
        .merge(health::router())
        .route("/api/roles", axum::routing::get(roles))
        .route("/api/openapi.json", axum::routing::get(openapi::document))
        .merge(workflows::router().route_layer(own.clone()))
        .merge(compat::router().route_layer(own.clone()))
        // Anything else under /api is a JSON 404, not the HTML not-found page.
        .route("/api", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found))
        .layer(axum::middleware::from_fn_with_state(
            http.request_timeout,
            guard::time_limit,
        ));
    Router::new()
        .merge(answered_at_once)
        // Streams: no request timeout (they end at `[sse] max_age_ms`).
        .merge(events::router().route_layer(own.clone()))
        .merge(compat::streams().route_layer(own))
        .layer(axum::middleware::from_fn_with_state(
            guard::WriteLimit::new(http.write_limit),
            guard::limit_writes,
        ))
        // Outside the write limit, which counts per token too.
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate,
        ))
        // Bodies over the spec limit (plus room for JSON overhead) are refused while reading,
        // as a 413 the handlers turn into the JSON error shape.
        .layer(axum::extract::DefaultBodyLimit::max(2 * 1024 * 1024))
        .with_state(state)
}

/// `GET /api/roles`: the role names a spec may use (the start form validates with them).
#[utoipa::path(get, path = "/api/roles", tag = "workflows",
    responses((status = 200, description = "The roles", body = openapi::RolesBody)))]
async fn roles(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "roles": state.config.engine.role_names() }))
}

/// What the server-rendered pages read: the store, directly, as the workspace of whoever
/// asks (nothing at all when nobody was admitted).
struct PageData {
    state: AppState,
    caller: Option<auth::Caller>,
}

impl WorkspaceData for PageData {
    fn workspace(&self) -> BoxFuture<Result<WorkspaceSnapshot, String>> {
        let store = self.state.store.clone();
        let Some(workspace) = self.caller.as_ref().map(|c| c.workspace.clone()) else {
            return Box::pin(async { Ok(WorkspaceSnapshot::default()) });
        };
        Box::pin(async move {
            let snapshot = store.workspace_snapshot(200, Some(&workspace)).await;
            let (last_event_id, workflows) = snapshot.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "rendering the workspace");
                "the workspace cannot be read right now".to_string()
            })?;
            Ok(WorkspaceSnapshot {
                workflows,
                last_event_id,
            })
        })
    }

    fn workflow(&self, id: String) -> BoxFuture<Result<Option<WorkflowState>, String>> {
        let store = self.state.store.clone();
        let workspace = self.caller.as_ref().map(|c| c.workspace.clone());
        Box::pin(async move {
            let wf = store.load(&id).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "rendering a workflow");
                "the workflow cannot be read right now".to_string()
            })?;
            // Another workspace's workflow is not found, like one that does not exist.
            Ok(wf.filter(|wf| Some(&wf.workspace) == workspace.as_ref()))
        })
    }

    fn roles(&self) -> Vec<String> {
        self.state.config.engine.role_names().into_iter().collect()
    }
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound("no such API route".into())
}
