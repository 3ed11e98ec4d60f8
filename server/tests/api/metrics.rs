//! `/metrics` read as Prometheus reads it, after real work on a real binary (a process of its
//! own, so the counts are this server's alone).

use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use serde_json::json;

use crate::helpers::{
    config_file, get_json, serve_binary, serve_binary_on, start_on, wait_completed,
};

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_count_what_happened_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_binary(&dir.path().join("cairn.db"));
    let client = reqwest::Client::new();
    let id = start_on(
        &client,
        &base,
        &json!({ "steps": [
            { "id": "a", "role": "developer", "task": "x",
              "retry": { "initial_interval_ms": 10, "jitter": false },
              "params": { "duration_ms": 20, "fail_attempts": 1, "error": "flaky" } },
            { "id": "b", "role": "developer", "task": "y", "deps": ["a"], "params": { "duration_ms": 20 } }
        ] }),
    )
    .await;
    wait_completed(
        &client,
        &base,
        &id,
        Instant::now() + Duration::from_secs(20),
    )
    .await;
    let missing = client
        .get(format!("{base}/api/workflows/wf_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();

    let v = |name: &str, labels: &[(&str, &str)]| value(&scrape, name, labels);
    assert_eq!(
        v("cairn_workflows_total", &[("outcome", "created")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("cairn_workflows_total", &[("outcome", "completed")]),
        Some(1.0)
    );
    assert_eq!(
        v("cairn_steps_total", &[("outcome", "completed")]),
        Some(2.0)
    );
    assert_eq!(v("cairn_steps_total", &[("outcome", "retried")]), Some(1.0));
    // Histograms (summable across instances): a count per bucket, and a count in total.
    assert_eq!(
        v("cairn_step_duration_seconds", &[("outcome", "completed")]),
        Some(2.0)
    );
    assert!(v("cairn_checkpoint_commit_seconds", &[]).unwrap() >= 4.0);
    assert!(v("cairn_checkpoint_changes", &[]).unwrap() >= 4.0);
    assert_eq!(v("cairn_step_schedule_latency_seconds", &[]), Some(2.0));
    assert!(
        text.contains("cairn_checkpoint_commit_seconds_bucket{le=\"0.001\"}"),
        "{text}"
    );
    // Requests by route pattern, never by id.
    assert_eq!(
        v(
            "cairn_http_requests_total",
            &[
                ("route", "/api/workflows"),
                ("method", "POST"),
                ("status", "202")
            ]
        ),
        Some(1.0)
    );
    // (prometheus-parse reads no braces inside label values: this one is checked as text.)
    assert!(
        text.contains(
            "cairn_http_requests_total{route=\"/api/workflows/{id}\",method=\"GET\",status=\"404\"} 1\n"
        ),
        "{text}"
    );
    assert!(!text.contains(&id), "no workflow id in a label");

    // Health adds the checkpoint p95.
    let health = get_json(&client, &base, "/api/health").await;
    assert!(
        health["checkpoint_commit_p95_ms"].as_f64().unwrap() > 0.0,
        "{health}"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

async fn ticks(client: &reqwest::Client, base: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    value(&scrape(&text), "cairn_engine_ticks_total", &[]).unwrap_or(0.0)
}

/// With every slot taken, a step whose retry is due cannot start; the engine must wait for a
/// slot rather than wake up again at once, turn after turn (each turn queries the database),
/// until one frees.
#[tokio::test]
async fn a_retry_due_while_every_slot_is_taken_leaves_the_engine_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[engine]\nmax_concurrency = 1\n");
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let (mut child, base) = serve_binary_on(&url, Some(&config));
    let client = reqwest::Client::new();
    // `flaky` comes first, so it takes the one slot, fails at once and waits 100 ms to retry;
    // `long` takes the slot meanwhile and keeps it for two seconds.
    let id = start_on(
        &client,
        &base,
        &json!({ "steps": [
            { "id": "flaky", "role": "developer", "task": "x",
              "retry": { "initial_interval_ms": 100, "jitter": false },
              "params": { "duration_ms": 0, "fail_attempts": 1 } },
            { "id": "long", "role": "developer", "task": "y", "params": { "duration_ms": 2000 } }
        ] }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wf = get_json(&client, &base, &format!("/api/workflows/{id}")).await;
        let status = |step: usize| {
            wf["steps"][step]["status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        if status(0) == "retrying" && status(1) == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never got there: {wf}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = ticks(&client, &base).await;
    wait_completed(&client, &base, &id, deadline).await;
    let during = ticks(&client, &base).await - before;
    // Waiting, the loop turns for the slot that frees, the retry, the end and its polls (every
    // 500 ms): a handful. Spinning, it turned thousands of times in those two seconds.
    assert!(
        during < 100.0,
        "the engine turned {during} times while it waited for a slot"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
