//! What guards the HTTP side: write rate limits, CORS, the age limit of live streams.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{helpers::spawn_app_with, sse::Sse};

fn quick() -> Value {
    json!({ "role": "developer", "task": "x", "params": { "duration_ms": 5 } })
}

#[tokio::test]
async fn writes_over_the_limit_get_429_with_retry_after_and_reads_go_on() {
    let app = spawn_app_with("[http]\nwrites_per_second = 1\nwrite_burst = 2\n").await;
    let mut statuses = vec![];
    let mut refused = None;
    for _ in 0..3 {
        let resp = app.post("/api/workflows", &quick()).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            refused = Some(resp);
        }
    }
    assert_eq!(statuses, [202, 202, 429]);
    let refused = refused.unwrap();
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("try again in")
    );
    // Reads are not writes.
    for _ in 0..5 {
        assert_eq!(app.get("/api/workflows").await.status(), 200);
    }
    // After the wait, writes go through again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(app.post("/api/workflows", &quick()).await.status(), 202);
}

async fn preflight(app: &crate::helpers::TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/workflows", app.address),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_is_closed_unless_origins_are_named() {
    let closed = spawn_app_with("").await;
    let resp = preflight(&closed, "https://dash.example.com").await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp = closed
        .client
        .get(format!("{}/api/workflows", closed.address))
        .header("origin", "https://dash.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    let open = spawn_app_with("[http]\ncors_origins = [\"https://dash.example.com\"]\n").await;
    let resp = preflight(&open, "https://dash.example.com").await;
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    assert!(
        resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let resp = preflight(&open, "https://evil.example.com").await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_stream_ends_at_its_age_limit_and_a_reconnect_misses_nothing() {
    let app = spawn_app_with("[sse]\nmax_age_ms = 400\n").await;
    let first = app.start(quick()).await;
    let mut sse = Sse::connect(&app, &format!("/api/workflows/{first}/events"), Some(0)).await;
    let opened = Instant::now();
    let mut last = 0;
    while let Some(f) = sse.next_event(Duration::from_secs(5)).await {
        last = f.id.unwrap().parse().unwrap();
    }
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(350) && lived < Duration::from_secs(4),
        "the stream lived {lived:?}"
    );
    // The reconnect (with Last-Event-ID) gets exactly the events after it.
    let mut again = Sse::connect(&app, &format!("/api/workflows/{first}/events"), Some(last)).await;
    let history = app.history(&first).await;
    let expected: Vec<i64> = history
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .filter(|id| *id > last)
        .collect();
    let mut got = vec![];
    while got.len() < expected.len() {
        let f = again
            .next_event(Duration::from_secs(5))
            .await
            .expect("the rest");
        got.push(f.id.unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn on_loopback_foreign_hosts_and_cross_site_writes_are_refused() {
    let app = spawn_app_with("[http]\ncors_origins = [\"https://dash.example.com\"]\n").await;
    let url = |path: &str| format!("{}{path}", app.address);
    // DNS rebinding: a page of another name that now points here.
    for host in [
        "evil.example",
        "evil.example:3000",
        "localhost.evil.example",
    ] {
        let resp = app
            .client
            .get(url("/api/workflows"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{host}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let page = app
        .client
        .get(url("/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403, "the page too");
    let local = app
        .client
        .get(url("/api/health"))
        .header("host", "localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);

    // Writes from another site's page.
    let post = |origin: Option<&str>, fetch_site: Option<&str>| {
        let mut req = app.client.post(url("/api/workflows")).json(&quick());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = fetch_site {
            req = req.header("sec-fetch-site", s);
        }
        req.send()
    };
    let own = app.address.clone();
    assert_eq!(
        post(Some("https://evil.example"), None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(post(Some("null"), None).await.unwrap().status(), 403);
    assert_eq!(post(None, Some("cross-site")).await.unwrap().status(), 403);
    // The server's own pages, a named origin, and clients that are not browsers.
    assert_eq!(
        post(Some(&own), Some("same-origin"))
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post(Some("https://dash.example.com"), Some("cross-site"))
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(post(None, None).await.unwrap().status(), 202);
    // Reads from anywhere are not writes (CORS decides what a page may read).
    let read = app
        .client
        .get(url("/api/workflows"))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
}
