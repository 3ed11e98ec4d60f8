//! The HTTP surface: the JSON API, the server-rendered web monitor and its static files.
//!
//! Each area has its own `router()`; [`router`] merges them with the Leptos routes in one place.

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
use leptos::prelude::{LeptosOptions, provide_context};
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
    let data: DataSource = Arc::new(PageData(state.clone()));
    let provide_data = move || provide_context(data.clone());
    let page = leptos_axum::render_app_to_stream_with_context(provide_data.clone(), {
        let options = state.leptos_options.clone();
        move || shell(options.clone())
    });
    let pages = Router::new()
        .nest_service(
            &pkg_route,
            ServeDir::new(pkg).precompressed_br().precompressed_gzip(),
        )
        .route("/", get(page.clone()))
        .route("/workflows/{id}", get(page))
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(provide_data, shell))
        .with_state(state);
    let cors = guard::cors(&state_cors);
    api.nest_service("/mcp", mcp)
        .route("/metrics", get(metrics_text))
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
    let answered_at_once = Router::new()
        .merge(health::router())
        .route("/api/roles", axum::routing::get(roles))
        .route("/api/openapi.json", axum::routing::get(openapi::document))
        .merge(workflows::router())
        .merge(compat::router())
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
        .merge(events::router())
        .merge(compat::streams())
        .layer(axum::middleware::from_fn_with_state(
            guard::WriteLimit::new(http.write_limit),
            guard::limit_writes,
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

/// What the server-rendered pages read: the store, directly.
struct PageData(AppState);

impl WorkspaceData for PageData {
    fn workspace(&self) -> BoxFuture<Result<WorkspaceSnapshot, String>> {
        let store = self.0.store.clone();
        Box::pin(async move {
            let (last_event_id, workflows) = store.workspace_snapshot(200).await.map_err(|e| {
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
        let store = self.0.store.clone();
        Box::pin(async move {
            store.load(&id).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "rendering a workflow");
                "the workflow cannot be read right now".to_string()
            })
        })
    }

    fn roles(&self) -> Vec<String> {
        self.0.config.engine.role_names().into_iter().collect()
    }
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound("no such API route".into())
}
