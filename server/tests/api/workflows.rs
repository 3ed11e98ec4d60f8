//! The engine through the REST API: lifecycle, templates, retries, timeouts, controls,
//! idempotency and bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Polls the snapshot until `done` says so, with a deadline instead of a sleep.
pub(crate) async fn wait_for(
    app: &TestApp,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snap: Value = app
            .get(&format!("/api/workflows/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if done(&snap) {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {snap:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    wait_for(app, id, status, |s| s["status"] == status).await
}

pub(crate) fn step<'a>(snap: &'a Value, id: &str) -> &'a Value {
    snap["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {snap:#}"))
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] != "step.log")
        .map(|e| match e["step_id"].as_str() {
            Some(s) if e["type"].as_str().unwrap().starts_with("step.") => {
                format!("{}:{s}", e["type"].as_str().unwrap())
            }
            _ => e["type"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn fast(duration_ms: u64) -> Value {
    json!({ "duration_ms": duration_ms })
}

#[tokio::test]
async fn a_three_step_chain_runs_to_the_end_with_templates_resolved() {
    let app = spawn_app().await;
    let id = app.start(json!({
            "name": "ship-login",
            "inputs": { "feature": "login" },
            "steps": [
                { "id": "design", "role": "architect", "task": "Design {inputs.feature}", "params": fast(10) },
                { "id": "implement", "role": "developer", "task": "Build {design.output}", "deps": ["design"], "params": fast(10) },
                { "id": "test", "role": "tester", "task": "Test {implement.output} in {design.session_id}", "deps": ["implement"], "params": fast(10) }
            ]
        }),
    )
    .await;
    let snap = wait_status(&app, &id, "completed").await;
    assert_eq!(step(&snap, "design")["output"], "Design login");
    assert_eq!(step(&snap, "implement")["output"], "Build Design login");
    assert_eq!(
        step(&snap, "test")["output"],
        format!("Test Build Design login in sim-{id}-design")
    );
    assert_eq!(snap["progress"]["done"], 3);
    assert!(snap["last_event_id"].as_i64().unwrap() > 0);
    assert_eq!(
        types(&app.history(&id).await),
        [
            "workflow.created",
            "workflow.started",
            "step.started:design",
            "step.completed:design",
            "step.started:implement",
            "step.completed:implement",
            "step.started:test",
            "step.completed:test",
            "workflow.completed"
        ]
    );
}

#[tokio::test]
async fn independent_branches_run_in_parallel_and_the_join_sees_both() {
    let app = spawn_app().await;
    let id = app.start(json!([
            { "id": "a", "role": "architect", "task": "A", "params": fast(5) },
            { "id": "b", "role": "developer", "task": "B({a.output})", "deps": ["a"], "params": fast(300) },
            { "id": "c", "role": "developer", "task": "C({a.output})", "deps": ["a"], "params": fast(300) },
            { "id": "d", "role": "tester", "task": "{b.output}+{c.output}", "deps": ["b", "c"], "params": fast(5) }
        ]),
    )
    .await;
    let snap = wait_status(&app, &id, "completed").await;
    assert_eq!(step(&snap, "d")["output"], "B(A)+C(A)");
    let t = types(&app.history(&id).await);
    let pos = |s: &str| t.iter().position(|x| x == s).unwrap();
    // Both branches started before either finished.
    assert!(pos("step.started:b") < pos("step.completed:c"), "{t:?}");
    assert!(pos("step.started:c") < pos("step.completed:b"), "{t:?}");
}

#[tokio::test]
async fn a_flaky_step_backs_off_and_then_succeeds() {
    let app = spawn_app().await;
    let id = app
        .start(json!({ "id": "flaky", "role": "developer", "task": "try",
                "retry": { "max_attempts": 4, "initial_interval_ms": 50, "jitter": false },
                "params": { "duration_ms": 1, "fail_attempts": 2, "error": "503 upstream busy" } }))
        .await;
    let snap = wait_status(&app, &id, "completed").await;
    let s = step(&snap, "flaky");
    assert_eq!(s["attempt"], 3);
    assert_eq!(s["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(s["attempts"][0]["error"], "503 upstream busy");
    let events = app.history(&id).await;
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "step.retrying")
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0]["delay_ms"], 50);
    assert_eq!(retries[1]["delay_ms"], 100);
    assert!(retries[0]["next_attempt_at"].is_string());
}

#[tokio::test]
async fn a_non_retryable_error_fails_the_step_and_workflow_at_once() {
    let app = spawn_app().await;
    let id = app.start(json!({ "id": "call", "role": "developer", "task": "x",
                "params": { "duration_ms": 1, "fail_attempts": 9, "error": "401 Unauthorized: bad token" } }),
    )
    .await;
    let snap = wait_status(&app, &id, "failed").await;
    assert_eq!(step(&snap, "call")["attempt"], 1);
    assert_eq!(step(&snap, "call")["status"], "failed");
    assert!(
        snap["error"].as_str().unwrap().contains("Unauthorized"),
        "{snap:#}"
    );
}

#[tokio::test]
async fn a_step_past_its_timeout_is_stopped_and_counts_as_a_failed_attempt() {
    let app = spawn_app().await;
    let id = app
        .start(
            json!({ "id": "slow", "role": "developer", "task": "x", "timeout_s": 1,
                "retry": { "max_attempts": 1 }, "params": { "duration_ms": 60000 } }),
        )
        .await;
    let snap = wait_status(&app, &id, "failed").await;
    assert_eq!(step(&snap, "slow")["error"], "timed out after 1s");
}

#[tokio::test]
async fn exhausted_retries_fail_the_workflow_or_pause_it_by_policy() {
    let app = spawn_app().await;
    let failing = json!({ "duration_ms": 1, "fail_attempts": 99, "error": "boom" });
    let id = app
        .start(json!({ "id": "s", "role": "developer", "task": "x",
                "retry": { "max_attempts": 2, "initial_interval_ms": 10 }, "params": failing }))
        .await;
    let snap = wait_status(&app, &id, "failed").await;
    assert_eq!(step(&snap, "s")["attempt"], 2);

    let id = app.start(json!({ "steps": [
            { "id": "s", "role": "developer", "task": "x",
              "retry": { "max_attempts": 2, "initial_interval_ms": 10, "on_exhausted": "pause" }, "params": failing },
            { "id": "after", "role": "tester", "task": "got [{s.output}]", "deps": ["s"], "params": fast(1) }
        ]}),
    )
    .await;
    wait_status(&app, &id, "paused").await;
    // A person decides: skip it with an output, and the rest runs.
    let resp = app
        .post(
            &format!("/api/workflows/{id}/steps/s/skip"),
            &json!({ "output": "manual" }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let snap = wait_status(&app, &id, "completed").await;
    assert_eq!(step(&snap, "after")["output"], "got [manual]");
}

#[tokio::test]
async fn cancel_stops_a_running_workflow_and_resume_continues_it() {
    let app = spawn_app().await;
    let id = app
        .start(json!([
            { "id": "a", "role": "architect", "task": "A", "params": fast(1) },
            { "id": "b", "role": "developer", "task": "B", "deps": ["a"], "params": fast(60000) }
        ]))
        .await;
    wait_for(&app, &id, "b running", |s| {
        step(s, "b")["status"] == "running"
    })
    .await;
    let resp = app
        .post(
            &format!("/api/workflows/{id}/cancel"),
            &json!({ "reason": "wrong branch" }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let snap = wait_status(&app, &id, "cancelled").await;
    assert_eq!(step(&snap, "a")["status"], "completed");
    assert_eq!(step(&snap, "b")["status"], "cancelled");

    let again = app
        .post(&format!("/api/workflows/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");

    // Resume: b runs again (quickly this time is not possible to change, so skip after it starts).
    let resp = app
        .post(&format!("/api/workflows/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    wait_for(&app, &id, "b running again", |s| {
        step(s, "b")["status"] == "running"
    })
    .await;
    let events = app.history(&id).await;
    let a_completions = events
        .iter()
        .filter(|e| e["type"] == "step.completed" && e["step_id"] == "a")
        .count();
    assert_eq!(a_completions, 1, "a completed step ran again");
    let resumed = events
        .iter()
        .find(|e| e["type"] == "workflow.resumed")
        .unwrap();
    assert_eq!(resumed["by"], "api");
}

#[tokio::test]
async fn retrying_a_completed_step_runs_it_and_its_descendants_again() {
    let app = spawn_app().await;
    let id = app
        .start(json!([
            { "id": "a", "role": "architect", "task": "A", "params": fast(1) },
            { "id": "b", "role": "developer", "task": "B", "deps": ["a"], "params": fast(1) },
            { "id": "c", "role": "tester", "task": "C", "deps": ["b"], "params": fast(1) }
        ]))
        .await;
    wait_status(&app, &id, "completed").await;
    let resp = app
        .post(&format!("/api/workflows/{id}/steps/b/retry"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    let snap = wait_for(&app, &id, "rerun", |s| {
        s["status"] == "completed" && step(s, "c")["attempts"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(step(&snap, "a")["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(step(&snap, "b")["attempts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn retry_now_skips_a_long_backoff_wait() {
    let app = spawn_app().await;
    let id = app.start(json!({ "id": "s", "role": "developer", "task": "x",
                "retry": { "max_attempts": 3, "initial_interval_ms": 3600000, "max_interval_ms": 3600000 },
                "params": { "duration_ms": 1, "fail_attempts": 1 } }),
    )
    .await;
    wait_for(&app, &id, "backoff", |s| {
        step(s, "s")["status"] == "retrying"
    })
    .await;
    let resp = app
        .post(
            &format!("/api/workflows/{id}/steps/s/retry-now"),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let snap = wait_status(&app, &id, "completed").await;
    assert_eq!(step(&snap, "s")["attempt"], 2);
}

#[tokio::test]
async fn controls_the_state_does_not_allow_are_409_and_unknown_ids_404() {
    let app = spawn_app().await;
    let id = app
        .start(json!({ "id": "s", "role": "developer", "task": "x", "params": fast(1) }))
        .await;
    wait_status(&app, &id, "completed").await;
    for (path, why) in [
        (format!("/api/workflows/{id}/resume"), "completed"),
        (format!("/api/workflows/{id}/cancel"), "already completed"),
        (
            format!("/api/workflows/{id}/steps/s/skip"),
            "already completed",
        ),
        (
            format!("/api/workflows/{id}/steps/s/retry-now"),
            "not waiting to retry",
        ),
    ] {
        let resp = app.post(&path, &json!({})).await;
        assert_eq!(resp.status(), 409, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{path}: {body}"
        );
    }
    let resp = app
        .post(&format!("/api/workflows/{id}/steps/nope/retry"), &json!({}))
        .await;
    assert_eq!(resp.status(), 404);
    for path in ["/api/workflows/wf_nope", "/api/workflows/wf_nope/history"] {
        assert_eq!(app.get(path).await.status(), 404, "{path}");
    }
    let resp = app.post("/api/workflows/wf_nope/cancel", &json!({})).await;
    assert_eq!(resp.status(), 404);
    let resp = app
        .post(
            &format!("/api/workflows/{id}/steps/s/skip"),
            &json!({ "output": 5 }),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["path"], "output");
}

#[tokio::test]
async fn the_same_idempotency_key_starts_one_workflow() {
    let app = spawn_app().await;
    let spec = json!({ "id": "s", "role": "developer", "task": "x", "params": fast(1) });
    let send = |body: Value| {
        app.client
            .post(format!("{}/api/workflows", app.address))
            .header("Idempotency-Key", "deploy-42")
            .json(&body)
            .send()
    };
    let first: Value = send(spec.clone()).await.unwrap().json().await.unwrap();
    let second = send(spec.clone()).await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let different = send(json!({ "role": "developer", "task": "other" }))
        .await
        .unwrap();
    assert_eq!(different.status(), 409);
    let list: Value = app.get("/api/workflows").await.json().await.unwrap();
    assert_eq!(list["workflows"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_hundred_concurrent_workflows_all_complete() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            app.start(json!([
                    { "id": "a", "role": "architect", "task": format!("A{i}"), "params": fast(10) },
                    { "id": "b", "role": "developer", "task": "{a.output}!", "deps": ["a"], "params": fast(10) }
                ]),
            )
            .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let snap = wait_status(&app, id, "completed").await;
        assert_eq!(step(&snap, "b")["output"], format!("A{i}!"));
    }
    let page: Value = app
        .get("/api/workflows?status=completed&limit=30")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["workflows"].as_array().unwrap().len(), 30);
    let next = page["next_before"].as_str().unwrap();
    let page2: Value = app
        .get(&format!(
            "/api/workflows?status=completed&limit=200&before={next}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["workflows"].as_array().unwrap().len(), 70);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_that_names_the_field() {
    let app = spawn_app().await;
    let raw = |body: &'static str| {
        app.client
            .post(format!("{}/api/workflows", app.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = raw("{not json").await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");

    let cases = [
        (
            json!({ "steps": [{ "role": "developer", "task": 5 }] }),
            "steps[0].task",
        ),
        (
            json!({ "steps": [{ "role": "wizard", "task": "x" }] }),
            "steps[0].role",
        ),
        (
            json!({ "steps": [{ "id": "a", "role": "developer", "task": "x", "deps": ["b"] },
                { "id": "b", "role": "developer", "task": "x", "deps": ["a"] }] }),
            "steps[",
        ),
        (
            json!({ "steps": [{ "role": "developer", "task": "{ghost.output}" }] }),
            "steps[0].task",
        ),
    ];
    for (spec, path) in cases {
        let resp = app.post("/api/workflows", &spec).await;
        assert_eq!(resp.status(), 422, "{spec}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_spec");
        let paths: Vec<&str> = body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.iter().any(|p| p.starts_with(path)),
            "{path} not in {paths:?}"
        );
    }

    let huge = "x".repeat(3 * 1024 * 1024);
    let resp = app
        .post(
            "/api/workflows",
            &json!({ "role": "developer", "task": huge }),
        )
        .await;
    assert_eq!(resp.status(), 413);

    let resp = app.get("/api/workflows?limit=0&status=nope").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["details"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn log_lines_are_kept_up_to_the_cap_per_attempt_with_a_notice() {
    let app = spawn_app().await;
    let id = app
        .start(json!({ "id": "noisy", "role": "developer", "task": "x",
                "params": { "duration_ms": 50, "log_lines": 1200 } }))
        .await;
    let snap = wait_status(&app, &id, "completed").await;
    let logs: Vec<Value> = app
        .history(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "step.log")
        .collect();
    // 1200 lines written, 1000 kept, then one notice.
    assert_eq!(logs.len(), 1001);
    assert_eq!(logs[0]["line"], "noisy line 1");
    assert_eq!(logs[999]["line"], "noisy line 1000");
    assert!(
        logs[1000]["line"]
            .as_str()
            .unwrap()
            .contains("1000 lines kept")
    );
    // The state keeps only the tail.
    assert_eq!(
        step(&snap, "noisy")["logs"].as_array().unwrap().len(),
        cairn::LOG_TAIL
    );
}
