//! The HTTP surface: the JSON API, the server-rendered web monitor and its static files.
//!
//! Each area has its own `router()`; [`router`] merges them with the Leptos routes in one place.

mod compat;
pub mod error;
pub mod events;
mod health;
pub mod workflows;

use std::sync::Arc;

use app::{App, shell};
use axum::{Router, extract::FromRef, routing::any};
use leptos::prelude::LeptosOptions;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tower_http::trace::TraceLayer;

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
    /// This process's id, for health and (later) lease ownership.
    pub instance: Arc<str>,
    /// The configuration the server started with.
    pub config: Arc<Config>,
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let api = Router::new()
        .merge(health::router())
        .merge(workflows::router())
        .merge(events::router())
        .merge(compat::router())
        // Anything else under /api is a JSON 404, not the HTML not-found page.
        .route("/api", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found));

    Router::new()
        .merge(api)
        .leptos_routes(&state, routes, {
            let options = state.leptos_options.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        // Bodies over the spec limit (plus room for JSON overhead) are refused while reading,
        // as a 413 the handlers turn into the JSON error shape.
        .layer(axum::extract::DefaultBodyLimit::max(2 * 1024 * 1024))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound("no such API route".into())
}
