//! `GET /api/health`: is this instance up, and can it reach its database?

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde::Serialize;

use super::AppState;

/// The health routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/health", get(health))
}

/// What `/api/health` answers.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok`, or `unavailable` when the database does not answer (with a 503).
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// The server's version.
    pub version: &'static str,
    /// This instance's id (differs per process, useful when several share a database).
    pub instance: String,
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (code, status) = match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "health check: database unavailable"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    let body = Health {
        status,
        store: state.store.kind(),
        version: env!("CARGO_PKG_VERSION"),
        instance: state.instance.to_string(),
    };
    (code, Json(body))
}
