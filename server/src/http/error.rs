//! The one error type of the HTTP layer and its JSON shape.
//!
//! Every error leaves as `{"error": {"code", "message", "details": [{"path", "message"}]}}`.
//! Client mistakes say what is wrong and where; server faults are logged with their cause chain
//! and the client only learns that something failed on our side.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// One problem at one place in the request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// JSON path of the offending field, e.g. `steps[1].deps[0]`; empty for the whole body.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (not JSON, wrong types, bad parameters).
    #[error("{message}")]
    BadRequest {
        /// Summary for the client.
        message: String,
        /// Each problem with its path.
        details: Vec<ErrorDetail>,
    },
    /// 401: no token, or one that is unknown, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: this request may not do that here (a foreign `Host`, a cross-site write).
    #[error("{0}")]
    Forbidden(String),
    /// 403: the token's scope is too small for this request.
    #[error("this needs a token with the {0} scope")]
    InsufficientScope(crate::auth::Scope),
    /// 404: no such thing (also for ids of another workspace).
    #[error("{0}")]
    NotFound(String),
    /// 409: the current state does not allow the action.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: the workflow spec is well-formed JSON but not a valid workflow.
    #[error("{message}")]
    InvalidSpec {
        /// Summary for the client.
        message: String,
        /// Each problem with its path.
        details: Vec<ErrorDetail>,
    },
    /// 429: this client has too many streams (or requests) open.
    #[error("{0}")]
    TooManyRequests(String),
    /// 503: a dependency (the database) is unavailable, or the server is at capacity.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 500: a fault on our side; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::InvalidSpec { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec"),
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [ErrorDetail],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            Self::Internal(cause) | Self::Unavailable(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
            }
            _ => {}
        }
        let details: &[ErrorDetail] = match &self {
            Self::BadRequest { details, .. } | Self::InvalidSpec { details, .. } => details,
            _ => &[],
        };
        let body = Body {
            error: Inner {
                code,
                message: self.to_string(),
                details,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        // RFC 6750: how to authenticate, and why this attempt failed.
        let challenge = match &self {
            Self::Unauthorized(_) => {
                Some(r#"Bearer realm="cairn", error="invalid_token""#.to_string())
            }
            Self::InsufficientScope(scope) => Some(format!(
                r#"Bearer realm="cairn", error="insufficient_scope", scope="{scope}""#
            )),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| c.parse().ok()) {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(err: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = err.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_internal_error_never_shows_its_cause_to_the_client() {
        let err = ApiError::Internal(anyhow::anyhow!("disk /var/secret is full"));
        let (status, body) = body_of(err).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("secret"), "{body}");
    }

    #[tokio::test]
    async fn an_invalid_spec_lists_each_problem_with_its_path() {
        let err = ApiError::InvalidSpec {
            message: "the spec has 1 problem".into(),
            details: vec![ErrorDetail {
                path: "steps[1].deps[0]".into(),
                message: "unknown step 'desing'".into(),
            }],
        };
        let (status, body) = body_of(err).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "invalid_spec");
        assert_eq!(body["error"]["details"][0]["path"], "steps[1].deps[0]");
    }
}
