//! What guards the HTTP side: a time limit on requests that answer at once, a rate limit on
//! writes per client address, and CORS (closed unless `[http] cors_origins` names origins).

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

/// The write rate limit, per client address (`None`: no limit).
#[derive(Clone)]
pub struct WriteLimit(Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>);

impl WriteLimit {
    /// `per_second` writes on average, up to `burst` at once, per client address.
    pub fn new(limit: Option<(NonZeroU32, NonZeroU32)>) -> Self {
        Self(limit.map(|(per_second, burst)| {
            Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ))
        }))
    }
}

/// Refuses writes (anything but GET, HEAD and OPTIONS) over the limit with 429 and
/// `Retry-After`. Requests without a client address (the MCP tools calling the API
/// in-process) are not counted here.
pub async fn limit_writes(State(limit): State<WriteLimit>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let (true, Some(limiter), Some(ip)) = (write, &limit.0, client)
        && let Err(not_until) = limiter.check_key(&ip)
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = ApiError::TooManyRequests(format!(
            "too many writes from this address; try again in {secs} s"
        ))
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
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
