//! What guards the HTTP side: a time limit on requests that answer at once, a rate limit on
//! writes per client address, CORS (closed unless `[http] cors_origins` names origins), and,
//! on a loopback address, the `Host` and cross-site checks that keep other sites' pages out.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderName, HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::ApiError;

/// Answers 503 when a request that should answer at once has not within `limit` (a stuck
/// database, a lock held too long); the work it started is not undone.
pub async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Unavailable(anyhow::anyhow!(
            "the request took longer than {} ms",
            limit.as_millis()
        ))
        .into_response(),
    }
}

/// The write rate limit, per client address and per token (`None`: no limit).
#[derive(Clone)]
pub struct WriteLimit(Option<Arc<Limiters>>);

struct Limiters {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_token: DefaultKeyedRateLimiter<String>,
}

impl WriteLimit {
    /// `per_second` writes on average, up to `burst` at once, per client address and,
    /// separately, per token.
    pub fn new(limit: Option<(NonZeroU32, NonZeroU32)>) -> Self {
        Self(limit.map(|(per_second, burst)| {
            let quota = Quota::per_second(per_second).allow_burst(burst);
            Arc::new(Limiters {
                by_address: RateLimiter::keyed(quota),
                by_token: RateLimiter::keyed(quota),
            })
        }))
    }
}

/// Refuses writes (anything but GET, HEAD and OPTIONS) over the limit with 429 and
/// `Retry-After`: a token's writes count against it from any address (the MCP tools calling
/// the API in-process included), and an address's against it whatever token they carry.
pub async fn limit_writes(State(limit): State<WriteLimit>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let (true, Some(limiters)) = (write, &limit.0) else {
        return next.run(req).await;
    };
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = req
        .extensions()
        .get::<super::auth::Caller>()
        .and_then(|c| c.token.clone());
    let refused = token
        .and_then(|t| limiters.by_token.check_key(&t).err())
        .map(|n| (n, "this token"))
        .or_else(|| {
            client
                .and_then(|ip| limiters.by_address.check_key(&ip).err())
                .map(|n| (n, "this address"))
        });
    if let Some((not_until, who)) = refused {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp =
            ApiError::TooManyRequests(format!("too many writes from {who}; try again in {secs} s"))
                .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
    }
    next.run(req).await
}

/// Who may talk to a server bound to a loopback address.
#[derive(Clone)]
pub struct LocalOnly {
    /// Whether the server listens on loopback only (the checks apply then).
    pub loopback: bool,
    /// Origins `[http] cors_origins` lets in.
    pub allowed_origins: Arc<Vec<HeaderValue>>,
}

fn is_loopback_host(host: &str) -> bool {
    // `name`, `name:port`, `[::1]`, `[::1]:port`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// On a loopback address, two browser attacks are refused with 403:
/// - **DNS rebinding**: a page of `evil.example` whose name now points at 127.0.0.1 calls the
///   API; its requests carry `Host: evil.example`. Only loopback names are answered.
/// - **Cross-site writes**: a page elsewhere posting to `127.0.0.1` (a form or `fetch`).
///   A write whose `Sec-Fetch-Site` is `cross-site`, or whose `Origin` is neither this
///   server's nor one `[http] cors_origins` names, is refused. Clients that are not browsers
///   send neither header and are not affected.
pub async fn local_only(State(rule): State<LocalOnly>, req: Request, next: Next) -> Response {
    if !rule.loopback {
        return next.run(req).await;
    }
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host.is_empty() && !is_loopback_host(host) {
        return ApiError::Forbidden(format!(
            "this server answers only to localhost, not to {host:?}"
        ))
        .into_response();
    }
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write {
        let origin = headers.get(header::ORIGIN);
        let allowed = origin.is_some_and(|o| rule.allowed_origins.iter().any(|a| a == o));
        let same_origin = origin
            .and_then(|o| o.to_str().ok())
            .map(|o| o.split_once("://").map_or(o, |(_, rest)| rest))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if !allowed && (cross_site || (origin.is_some() && !same_origin)) {
            return ApiError::Forbidden(
                "a write from another site's page is refused (Origin / Sec-Fetch-Site)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// CORS: no cross-origin access unless origins are named; those get reads, writes and the
/// headers cairn's clients send.
pub fn cors(origins: &[HeaderValue]) -> CorsLayer {
    if origins.is_empty() {
        // No CORS headers at all: browsers keep other sites' pages out.
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, routing::get};
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn loopback_hosts_are_the_loopback_names_with_or_without_a_port() {
        for host in [
            "localhost",
            "localhost:3000",
            "127.0.0.1:8080",
            "[::1]:3000",
            "[::1]",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:3000",
            "localhost.evil.example",
            "10.0.0.1:3000",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[tokio::test]
    async fn a_request_over_its_time_limit_gets_a_json_503_and_a_quick_one_passes() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }),
            )
            .route("/quick", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_millis(50),
                time_limit,
            ));
        let slow = app
            .clone()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(slow.status(), 503);
        let body = axum::body::to_bytes(slow.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        let quick = app
            .oneshot(Request::get("/quick").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(quick.status(), 200);
    }
}
