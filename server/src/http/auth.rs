//! Who is asking, and may they: the token check in front of `/api` (both streams and the
//! compatible endpoints included), `/mcp`, `/metrics` and the pages, the workspace check in
//! front of every route that names a workflow, and the browser's sign-in.
//!
//! A server with no token in its database is open, in workspace `default` (it runs only on a
//! loopback address then; see `startup`). Once a token exists, every request needs one: as
//! `Authorization: Bearer cairn_…`, or from a browser, as the HttpOnly, SameSite=Strict cookie
//! that signing in sets (an `EventSource` cannot send headers, and a token in a URL would end
//! up in logs). `/api/health` stays open for probes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRequestParts, RawPathParams, Request, State},
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};

use super::{ApiError, AppState};
use crate::{
    auth::{self, Scope},
    store::Store,
};

/// The browser's session cookie: the token itself, readable by the server only.
pub const COOKIE: &str = "cairn_session";

/// How long "no token exists" is believed before the database is asked again: a token made
/// with `cairn token create` while the server runs is required within this time.
const RECHECK_OPEN: Duration = Duration::from_secs(1);

/// Who a request comes from: the workspace it acts in and what it may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The workspace: every workflow it starts belongs there, and it sees no other.
    pub workspace: String,
    /// The token's label (`None` on an open server).
    pub label: Option<String>,
    /// What it may do.
    pub scope: Scope,
    /// The token's public id (`None` on an open server).
    pub token: Option<String>,
    /// Whether the token came in the session cookie (a browser) rather than a header.
    pub by_cookie: bool,
}

impl Caller {
    /// Anyone, on a server without tokens.
    pub fn open() -> Self {
        Self {
            workspace: cairn::DEFAULT_WORKSPACE.to_string(),
            label: None,
            scope: Scope::Admin,
            token: None,
            by_cookie: false,
        }
    }

    /// Who controls record as `by`: the token's label, or `fallback` on an open server.
    pub fn by<'a>(&'a self, fallback: &'a str) -> &'a str {
        self.label.as_deref().unwrap_or(fallback)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Every route that takes a `Caller` sits behind `authenticate`; without it, refuse
        // rather than guess.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("a route is missing its token check"))
        })
    }
}

/// The token check's state: the store, and whether tokens are required.
#[derive(Clone)]
pub struct Auth {
    store: Store,
    /// How often an open stream checks that its token still works.
    stream_recheck: Duration,
    /// Once a token exists, always true: revoking every token does not open the server.
    required: Arc<AtomicBool>,
    checked_open_at: Arc<Mutex<Option<Instant>>>,
}

impl Auth {
    /// The check over `store`'s tokens; open streams check theirs every `stream_recheck`.
    pub fn new(store: Store, stream_recheck: Duration) -> Self {
        Self {
            store,
            stream_recheck,
            required: Arc::new(AtomicBool::new(false)),
            checked_open_at: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether requests need a token.
    pub async fn required(&self) -> Result<bool, ApiError> {
        if self.required.load(Ordering::Relaxed) {
            return Ok(true);
        }
        {
            let mut at = self.checked_open_at.lock().expect("not poisoned");
            if at.is_some_and(|t| t.elapsed() < RECHECK_OPEN) {
                return Ok(false);
            }
            *at = Some(Instant::now());
        }
        let required = self
            .store
            .has_tokens()
            .await
            .map_err(ApiError::Unavailable)?;
        if required {
            self.required.store(true, Ordering::Relaxed);
        }
        Ok(required)
    }

    /// The caller a presented token stands for, or why it is refused.
    pub async fn verify(&self, token: &str, by_cookie: bool) -> Result<Caller, ApiError> {
        let refused = || ApiError::Unauthorized("the token is not valid".into());
        let id = auth::token_id(token).ok_or_else(refused)?;
        let (info, hash) = self
            .store
            .token(id)
            .await
            .map_err(ApiError::Unavailable)?
            .ok_or_else(refused)?;
        if !auth::matches(token, &hash) {
            return Err(refused());
        }
        match info.state(chrono::Utc::now()) {
            "revoked" => Err(ApiError::Unauthorized("the token was revoked".into())),
            "expired" => Err(ApiError::Unauthorized("the token has expired".into())),
            _ => Ok(Caller {
                workspace: info.workspace,
                label: Some(info.label),
                scope: info.scope,
                token: Some(info.id),
                by_cookie,
            }),
        }
    }

    /// Resolves once the token `id` no longer works (revoked, expired or deleted), looking
    /// every `stream_recheck`; a database that does not answer is no reason to end a stream.
    async fn until_invalid(self, id: String) {
        loop {
            tokio::time::sleep(self.stream_recheck).await;
            match self.store.token(&id).await {
                Ok(Some((info, _))) if info.state(chrono::Utc::now()) == "active" => {}
                Ok(_) => return,
                Err(_) => {}
            }
        }
    }

    /// The caller of a request: from its `Authorization` header, else its session cookie;
    /// `Ok(None)` when it carries neither.
    async fn caller_of(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "the Authorization header must be `Bearer <token>`".into(),
                    )
                })?;
            return self.verify(token, false).await.map(Some);
        }
        match CookieJar::from_headers(headers).get(COOKIE) {
            Some(cookie) => self.verify(cookie.value(), true).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The scope a request needs: `admin` for `/metrics`, `run` for writes, `read` otherwise.
/// `/mcp` needs `read`: its tools call the API with the caller's token, which then decides
/// (starting or controlling a workflow needs `run` there). The replaced system's status
/// route answers POST too, as a read.
fn needed(method: &Method, path: &str) -> Scope {
    if path == "/metrics" {
        Scope::Admin
    } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || path == "/mcp"
        || path.starts_with("/mcp/")
        || path.starts_with("/api/invoke-status/")
    {
        Scope::Read
    } else {
        Scope::Run
    }
}

/// A write from a browser that authenticated with the cookie must come from this server's
/// own pages: `Sec-Fetch-Site` says so, or else `Origin` names this host. (SameSite=Strict
/// already keeps the cookie off other sites' requests; this is the second lock.)
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (
        headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
        host,
    ) {
        (Some(origin), Some(host)) => {
            let origin = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// In front of `/api`, `/mcp` and `/metrics`: puts the [`Caller`] in the request, or answers
/// 401 (no token, or an unknown, expired or revoked one, with `WWW-Authenticate`) or 403
/// (a scope too small, a cross-site write).
pub async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    if req.uri().path() == "/api/health" {
        return next.run(req).await;
    }
    match admit(&auth, req.method(), req.uri().path(), req.headers()).await {
        Ok(caller) => {
            let token = caller.token.clone();
            req.extensions_mut().insert(caller);
            let resp = next.run(req).await;
            match token {
                Some(id) if is_stream(&resp) => end_when_invalid(resp, auth.until_invalid(id)),
                _ => resp,
            }
        }
        Err(e) => e.into_response(),
    }
}

fn is_stream(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// A stream opened with a token ends when the token is revoked or expires (the client's
/// reconnect is then refused), not only at `[sse] max_age_ms`.
fn end_when_invalid(
    resp: Response,
    invalid: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    use futures::StreamExt;
    resp.map(|body| axum::body::Body::from_stream(body.into_data_stream().take_until(invalid)))
}

async fn admit(
    auth: &Auth,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    if !auth.required().await? {
        return Ok(Caller::open());
    }
    let caller = auth.caller_of(headers).await?.ok_or_else(|| {
        ApiError::Unauthorized(
            "this server needs a token: send `Authorization: Bearer <token>` \
             (make one with `cairn token create`)"
                .into(),
        )
    })?;
    let needs = needed(method, path);
    if caller.scope < needs {
        return Err(ApiError::InsufficientScope(needs));
    }
    let write = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if caller.by_cookie && write && cross_site(headers) {
        return Err(ApiError::Forbidden(
            "a write from another site's page is refused (Origin / Sec-Fetch-Site)".into(),
        ));
    }
    Ok(caller)
}

/// In front of the pages: like [`authenticate`], but a browser without a valid session is
/// sent to the sign-in page instead of getting a 401.
pub async fn pages(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    match admit(&auth, req.method(), req.uri().path(), req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(ApiError::Unauthorized(_)) => {
            let next = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            Redirect::to(&format!("/sign-in?next={}", urlencode(&next))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// In front of every route that names a workflow (`{id}`, `{thread_id}`): a workflow of
/// another workspace answers exactly as one that does not exist (404), so ids of other
/// workspaces cannot even be probed.
pub async fn own_workflows_only(
    State(state): State<AppState>,
    params: RawPathParams,
    req: Request,
    next: Next,
) -> Response {
    let id = params
        .iter()
        .find(|(name, _)| matches!(*name, "id" | "thread_id"))
        .map(|(_, v)| v.to_string());
    if let Some(id) = id {
        let Some(caller) = req.extensions().get::<Caller>() else {
            return ApiError::Internal(anyhow::anyhow!("a route is missing its token check"))
                .into_response();
        };
        match state.store.workspace_of(&id).await {
            Ok(Some(ws)) if ws != caller.workspace => {
                return ApiError::NotFound(format!("no workflow {id:?}")).into_response();
            }
            Ok(_) => {}
            Err(e) => return ApiError::Unavailable(e).into_response(),
        }
    }
    next.run(req).await
}

/// Where a sign-in goes afterwards: a path of this server only (never `//other.site`), in
/// printable ASCII (it becomes a `Location` header).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 2048
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// Why a sign-in failed, as the page's `?error=` names it: a fixed word, so a crafted link
/// cannot make the sign-in page say whatever it likes.
fn failure_code(why: &str) -> &'static str {
    if why.contains("revoked") {
        "revoked"
    } else if why.contains("expired") {
        "expired"
    } else {
        "invalid"
    }
}

/// `GET /sign-in`: the page that takes a token.
pub async fn sign_in_page(
    State(auth): State<Auth>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let open = !auth.required().await.unwrap_or(true);
    let html = app::sign_in::page(
        q.get("error").map(|code| match code.as_str() {
            "revoked" => "this token was revoked",
            "expired" => "this token has expired",
            "empty" => "enter a token",
            _ => "the token is not valid",
        }),
        &safe_next(q.get("next").map(String::as_str)),
        open,
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::response::Html(html),
    )
        .into_response()
}

/// The sign-in form.
#[derive(serde::Deserialize)]
pub struct SignIn {
    token: String,
    next: Option<String>,
}

/// `POST /sign-in`: checks the token and keeps it in the session cookie (HttpOnly: page
/// scripts never see it; SameSite=Strict: other sites' requests never carry it; Secure when
/// the page was reached over HTTPS).
pub async fn sign_in(
    State(auth): State<Auth>,
    headers: HeaderMap,
    jar: CookieJar,
    form: Result<axum::extract::Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    if cross_site(&headers) {
        return ApiError::Forbidden("signing in from another site's page is refused".into())
            .into_response();
    }
    let back = |code: &str, next: &str| {
        let to = format!("/sign-in?error={code}&next={}", urlencode(next));
        (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
    };
    // A form without a token (or not a form at all) goes back to the page, which says so.
    let Ok(axum::extract::Form(form)) = form else {
        return back("empty", "/");
    };
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim().to_string();
    if token.is_empty() {
        return back("empty", &next);
    }
    match auth.verify(&token, true).await {
        Ok(_) => {
            let cookie = Cookie::build((COOKIE, token))
                .path("/")
                .http_only(true)
                .same_site(SameSite::Strict)
                .secure(over_https(&headers))
                .build();
            (jar.add(cookie), Redirect::to(&next)).into_response()
        }
        Err(ApiError::Unauthorized(why)) => back(failure_code(&why), &next),
        Err(e) => e.into_response(),
    }
}

/// `POST /sign-out`: forgets the session cookie.
pub async fn sign_out(headers: HeaderMap, jar: CookieJar) -> Response {
    if cross_site(&headers) {
        return ApiError::Forbidden("signing out from another site's page is refused".into())
            .into_response();
    }
    let gone = Cookie::build((COOKIE, "")).path("/").build();
    (jar.remove(gone), Redirect::to("/sign-in")).into_response()
}

/// Whether the browser reached this server over HTTPS: directly never (cairn serves plain
/// HTTP), so through a reverse proxy that says so.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_run_reads_need_read_and_metrics_admin() {
        assert_eq!(needed(&Method::GET, "/api/workflows"), Scope::Read);
        assert_eq!(needed(&Method::POST, "/api/workflows"), Scope::Run);
        assert_eq!(needed(&Method::POST, "/api/workflows/x/cancel"), Scope::Run);
        assert_eq!(needed(&Method::POST, "/api/invoke/async"), Scope::Run);
        assert_eq!(
            needed(&Method::POST, "/api/invoke-status/status/x"),
            Scope::Read
        );
        assert_eq!(needed(&Method::POST, "/mcp"), Scope::Read);
        assert_eq!(needed(&Method::GET, "/metrics"), Scope::Admin);
    }

    #[test]
    fn a_sign_in_only_goes_on_to_this_servers_paths() {
        assert_eq!(safe_next(Some("/workflows/wf_1")), "/workflows/wf_1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "evil",
            "/a\r\nSet-Cookie: x=1",
            "/é",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn cross_site_is_what_the_browser_says_or_a_foreign_origin() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&h(&[
            ("host", "cairn.example"),
            ("origin", "https://cairn.example")
        ])));
        assert!(cross_site(&h(&[
            ("host", "cairn.example"),
            ("origin", "https://evil.example")
        ])));
        assert!(
            !cross_site(&h(&[("host", "cairn.example")])),
            "not a browser"
        );
    }
}
