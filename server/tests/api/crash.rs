//! The real binary, killed with SIGKILL mid-run and started again on the same database:
//! every workflow finishes and no completed step runs twice.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{get_json, serve_binary, start_on, wait_completed};

async fn snapshot(client: &reqwest::Client, url: &str, id: &str) -> Value {
    get_json(client, url, &format!("/api/workflows/{id}")).await
}

fn step_status<'a>(snap: &'a Value, step: &str) -> &'a str {
    snap["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .unwrap()["status"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn a_killed_server_resumes_every_workflow_without_rerunning_completed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let client = reqwest::Client::new();
    let (mut first, url) = serve_binary(&db);

    // Three kinds of workflow, several of each: one mid-step, one in backoff, one whose last
    // step waits on a running dependency.
    let running = json!([
        { "id": "a", "role": "architect", "task": "A", "params": { "duration_ms": 1 } },
        { "id": "b", "role": "developer", "task": "B {a.output}", "deps": ["a"], "params": { "duration_ms": 1500 } }
    ]);
    let backoff = json!({ "steps": [
        { "id": "a", "role": "architect", "task": "A", "params": { "duration_ms": 1 } },
        { "id": "flaky", "role": "developer", "task": "F", "deps": ["a"],
          "retry": { "initial_interval_ms": 1500, "jitter": false },
          "params": { "duration_ms": 1, "fail_attempts": 1 } }
    ]});
    let waiting = json!([
        { "id": "a", "role": "architect", "task": "A", "params": { "duration_ms": 1 } },
        { "id": "b", "role": "developer", "task": "B", "deps": ["a"], "params": { "duration_ms": 1500 } },
        { "id": "c", "role": "tester", "task": "C {b.output}", "deps": ["b"], "params": { "duration_ms": 1 } }
    ]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        for (kind, spec) in [
            ("running", &running),
            ("backoff", &backoff),
            ("waiting", &waiting),
        ] {
            ids.push((kind, start_on(&client, &url, spec).await));
        }
    }

    // Wait (with a deadline) until every workflow is where we want to kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = true;
        for (kind, id) in &ids {
            let s = snapshot(&client, &url, id).await;
            ready &= match *kind {
                "backoff" => step_status(&s, "flaky") == "retrying",
                _ => step_status(&s, "b") == "running",
            };
        }
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workflows never reached their states"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL: no goodbye, no cleanup
    first.wait().unwrap();

    let (mut second, url) = serve_binary(&db);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (_, id) in &ids {
        wait_completed(&client, &url, id, deadline).await;
    }
    for (kind, id) in &ids {
        let h = get_json(&client, &url, &format!("/api/workflows/{id}/history")).await;
        let events = h["events"].as_array().unwrap();
        let mut completions: HashMap<&str, usize> = HashMap::new();
        for e in events.iter().filter(|e| e["type"] == "step.completed") {
            *completions
                .entry(e["step_id"].as_str().unwrap())
                .or_default() += 1;
        }
        assert!(
            completions.values().all(|&n| n == 1),
            "{kind} {id}: {completions:?}"
        );
        // `a` completed before the crash; it must not have started again after it.
        let a_starts = events
            .iter()
            .filter(|e| e["type"] == "step.started" && e["step_id"] == "a")
            .count();
        assert_eq!(a_starts, 1, "{kind} {id}: a ran twice");
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        if *kind != "backoff" {
            let stalled = kinds.iter().position(|t| *t == "workflow.stalled");
            let resumed = kinds.iter().position(|t| *t == "workflow.resumed");
            assert!(
                stalled.is_some() && stalled < resumed,
                "{kind} {id}: {kinds:?}"
            );
        }
    }
    second.kill().unwrap();
    second.wait().unwrap();
}
