//! `GET /api/health`: is this instance up, and can it reach its database?

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde::Serialize;

use super::AppState;

/// The health routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/health", get(health))
}

/// What `/api/health` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the database does not answer (with a 503).
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// The server's version.
    pub version: &'static str,
    /// This instance's id (differs per process, useful when several share a database).
    pub instance: String,
    /// The 95th percentile of this instance's recent checkpoint commits, in milliseconds
    /// (`null` before the first).
    pub checkpoint_commit_p95_ms: Option<f64>,
}

/// Is this instance up, and can it reach its database?
#[utoipa::path(get, path = "/api/health", tag = "operations", security(()),
    responses((status = 200, description = "Up", body = Health),
        (status = 503, description = "The database does not answer", body = Health)))]
pub(super) async fn health(State(state): State<AppState>) -> impl IntoResponse {
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
        checkpoint_commit_p95_ms: p95(state.store.commit_latencies_ms()),
    };
    (code, Json(body))
}

fn p95(mut samples: Vec<f64>) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 * 0.95).ceil() as usize).clamp(1, samples.len()) - 1;
    Some((samples[i] * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_p95_is_the_sample_below_which_95_percent_lie() {
        assert_eq!(super::p95(vec![]), None);
        assert_eq!(super::p95(vec![3.0]), Some(3.0));
        let samples: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(super::p95(samples), Some(95.0));
    }
}
