//! A client of cairn's JSON API: what the command line's client commands and the MCP tools
//! speak through.
//!
//! It talks to a server over HTTP ([`Api::remote`]), or, inside the server itself, straight to
//! the API router without a socket ([`Api::local`]): the MCP endpoint then answers exactly
//! what the JSON API answers (same validation, same 404 and 409 rules), on whichever instance
//! it reaches, with no state of its own.

pub mod describe;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use cairn::{EventRecord, WorkflowState, WorkflowSummary};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use tower::ServiceExt;

/// Largest answer read from the API (a list page, a snapshot, a whole output).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A handle on one cairn server's JSON API.
#[derive(Clone)]
pub struct Api {
    transport: Transport,
    /// Where the server is, as a client outside would reach it (for URLs in answers).
    base: String,
    /// Sent with every call: the caller's credentials (`Authorization`, or a browser's
    /// session `Cookie` that an MCP call came with).
    credentials: std::sync::Arc<Vec<(header::HeaderName, header::HeaderValue)>>,
}

#[derive(Clone)]
enum Transport {
    Remote(reqwest::Client),
    Local(Router),
}

/// Why a call did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// No connection: the server is down, or the URL is wrong.
    #[error("cannot reach the cairn server at {url}: {reason}")]
    Unreachable {
        /// The server's URL.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{0}")]
    Refused(Refusal),
    /// The server answered, but not with what cairn's API answers.
    #[error("the server's answer could not be read: {0}")]
    Garbled(String),
}

impl ApiFailure {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused(r) => Some(r.status),
            _ => None,
        }
    }
}

/// An error answer of the API: `{"error": {"code", "message", "details"}}` and its status.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The error's code (`not_found`, `conflict`, `invalid_spec`, …).
    pub code: String,
    /// The server's sentence.
    pub message: String,
    /// Each problem with its path.
    pub details: Vec<Detail>,
}

/// One problem at one place.
#[derive(Debug, Clone, Deserialize)]
pub struct Detail {
    /// Where (`steps[1].role`); empty for the whole thing.
    #[serde(default)]
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        for d in &self.details {
            if d.path.is_empty() {
                write!(f, "\n  {}", d.message)?;
            } else {
                write!(f, "\n  {}: {}", d.path, d.message)?;
            }
        }
        Ok(())
    }
}

/// A control of a workflow, as the API's routes name them.
#[derive(Debug, Clone)]
pub enum ControlRequest {
    /// `POST …/resume`
    Resume,
    /// `POST …/cancel`
    Cancel {
        /// Why, for the event.
        reason: Option<String>,
    },
    /// `POST …/steps/{step}/retry`
    Retry {
        /// The step.
        step: String,
    },
    /// `POST …/steps/{step}/retry-now`
    RetryNow {
        /// The step.
        step: String,
    },
    /// `POST …/steps/{step}/skip`
    Skip {
        /// The step.
        step: String,
        /// The output later steps see.
        output: Option<String>,
    },
}

impl Api {
    /// A client of the server at `base` (`http://127.0.0.1:3000`).
    pub fn remote(base: &str) -> Self {
        Self {
            transport: Transport::Remote(reqwest::Client::new()),
            base: base.trim_end_matches('/').to_string(),
            credentials: Default::default(),
        }
    }

    /// A client of `api` (the server's own API router), which outside clients reach at `base`.
    pub fn local(api: Router, base: &str) -> Self {
        Self {
            transport: Transport::Local(api),
            base: base.trim_end_matches('/').to_string(),
            credentials: Default::default(),
        }
    }

    /// The server's address as clients reach it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same API, reached by outside clients at another address.
    pub fn with_base(&self, base: &str) -> Self {
        Self {
            transport: self.transport.clone(),
            base: base.trim_end_matches('/').to_string(),
            credentials: self.credentials.clone(),
        }
    }

    /// The same API, called with a token (`Authorization: Bearer …`); `None` changes nothing.
    /// A token that cannot be a header value is left out (the server then says it needs one).
    pub fn with_token(self, token: Option<&str>) -> Self {
        let value = token.and_then(|t| format!("Bearer {}", t.trim()).parse().ok());
        match value {
            Some(v) => self.with_credentials(vec![(header::AUTHORIZATION, v)]),
            None => self,
        }
    }

    /// The same API, called with these credential headers.
    pub fn with_credentials(
        mut self,
        headers: Vec<(header::HeaderName, header::HeaderValue)>,
    ) -> Self {
        self.credentials = std::sync::Arc::new(headers);
        self
    }

    /// The credential headers every call sends (for requests made outside [`Api`], such as
    /// following a stream).
    pub fn credentials(&self) -> &[(header::HeaderName, header::HeaderValue)] {
        &self.credentials
    }

    /// `path` made absolute.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, axum::body::Bytes), ApiFailure> {
        let body = body.map(|b| b.to_string());
        match &self.transport {
            Transport::Remote(http) => {
                let mut req = http.request(method, self.url(path));
                for (k, v) in self.credentials.iter() {
                    req = req.header(k, v);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                if let Some(b) = body {
                    req = req.header(header::CONTENT_TYPE, "application/json").body(b);
                }
                let resp = req.send().await.map_err(|e| ApiFailure::Unreachable {
                    url: self.base.clone(),
                    reason: reqwest_reason(&e),
                })?;
                let status = resp.status();
                let bytes = resp.bytes().await.map_err(|e| ApiFailure::Unreachable {
                    url: self.base.clone(),
                    reason: reqwest_reason(&e),
                })?;
                Ok((status, bytes))
            }
            Transport::Local(router) => {
                let mut req = Request::builder().method(method).uri(path);
                for (k, v) in self.credentials.iter() {
                    req = req.header(k, v);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                let req = match body {
                    Some(b) => req
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(b)),
                    None => req.body(Body::empty()),
                }
                .map_err(|e| ApiFailure::Garbled(format!("bad request: {e}")))?;
                let resp = router
                    .clone()
                    .oneshot(req)
                    .await
                    .unwrap_or_else(|never| match never {});
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER)
                    .await
                    .map_err(|e| ApiFailure::Garbled(e.to_string()))?;
                Ok((status, bytes))
            }
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, ApiFailure> {
        let (status, bytes) = self.call(method, path, body, headers).await?;
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiFailure::Garbled(format!("{e} (is {} a cairn server?)", self.base)))
        } else {
            Err(refusal(status, &bytes))
        }
    }

    /// `GET path`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        self.json(Method::GET, path, None, &[]).await
    }

    /// Starts a workflow from a spec (any of its three shapes); the API's `Started` answer.
    pub async fn start(&self, spec: &Value, key: Option<&str>) -> Result<Value, ApiFailure> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.json(Method::POST, "/api/workflows", Some(spec), &headers)
            .await
    }

    /// A workflow's state.
    pub async fn workflow(&self, id: &str) -> Result<WorkflowState, ApiFailure> {
        self.get(&format!("/api/workflows/{}", segment(id))).await
    }

    /// A page of the list, newest first.
    pub async fn list(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WorkflowSummary>, ApiFailure> {
        #[derive(Deserialize)]
        struct Page {
            workflows: Vec<WorkflowSummary>,
        }
        let mut path = format!("/api/workflows?limit={limit}");
        if let Some(s) = status {
            path.push_str(&format!("&status={}", segment(s)));
        }
        Ok(self.get::<Page>(&path).await?.workflows)
    }

    /// A workflow's events after the event id `after` (all of them with 0), oldest first.
    pub async fn history(&self, id: &str, after: i64) -> Result<Vec<EventRecord>, ApiFailure> {
        #[derive(Deserialize)]
        struct History {
            events: Vec<EventRecord>,
        }
        let path = format!("/api/workflows/{}/history?after={after}", segment(id));
        Ok(self.get::<History>(&path).await?.events)
    }

    /// A step's whole output.
    pub async fn output(&self, id: &str, step: &str) -> Result<String, ApiFailure> {
        let path = format!(
            "/api/workflows/{}/steps/{}/output",
            segment(id),
            segment(step)
        );
        let (status, bytes) = self.call(Method::GET, &path, None, &[]).await?;
        if status.is_success() {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            Err(refusal(status, &bytes))
        }
    }

    /// Sends a control; the workflow's state after it.
    pub async fn control(
        &self,
        id: &str,
        control: &ControlRequest,
    ) -> Result<WorkflowState, ApiFailure> {
        let id = segment(id);
        let (path, body) = match control {
            ControlRequest::Resume => (format!("/api/workflows/{id}/resume"), None),
            ControlRequest::Cancel { reason } => (
                format!("/api/workflows/{id}/cancel"),
                Some(serde_json::json!({ "reason": reason })),
            ),
            ControlRequest::Retry { step } => (
                format!("/api/workflows/{id}/steps/{}/retry", segment(step)),
                None,
            ),
            ControlRequest::RetryNow { step } => (
                format!("/api/workflows/{id}/steps/{}/retry-now", segment(step)),
                None,
            ),
            ControlRequest::Skip { step, output } => (
                format!("/api/workflows/{id}/steps/{}/skip", segment(step)),
                Some(serde_json::json!({ "output": output })),
            ),
        };
        self.json(Method::POST, &path, body.as_ref(), &[]).await
    }
}

/// An id as one path segment: anything but the characters ids are made of is escaped, so an
/// odd id is looked up (and not found) instead of changing the route.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn refusal(status: StatusCode, bytes: &[u8]) -> ApiFailure {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        message: String,
        #[serde(default)]
        details: Vec<Detail>,
    }
    match serde_json::from_slice::<Body>(bytes) {
        Ok(Body { error }) => ApiFailure::Refused(Refusal {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
            details: error.details,
        }),
        Err(_) => ApiFailure::Refused(Refusal {
            status: status.as_u16(),
            code: String::new(),
            message: format!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
            details: vec![],
        }),
    }
}

/// reqwest's error with its causes, in one line (its Display alone says "error sending request").
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}
