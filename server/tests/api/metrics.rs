//! `/metrics` read as Prometheus reads it, after real work on a real binary (a process of its
//! own, so the counts are this server's alone).

use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use serde_json::json;

use crate::helpers::{get_json, serve_binary, start_on, wait_completed};

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
