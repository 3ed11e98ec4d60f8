//! Nothing stuck, nothing unbounded: steps in flight when a workflow fails, runaway and big
//! outputs, and changes the store cannot hold.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    helpers::{spawn_app, spawn_app_with},
    workflows::{step, wait_for, wait_status},
};

/// Roles bound to ordinary programs, as a user would bind them.
const ROLES: &str = r#"
[roles.runaway]
runner = "command"
program = "sh"
args = ["-c", "head -c 300000000 /dev/zero"]

[roles.chatty]
runner = "command"
program = "sh"
args = ["-c", "yes"]
max_output_bytes = 1048576

[roles.clipped]
runner = "command"
program = "sh"
args = ["-c", "yes cairn | head -c 5000000"]
max_output_bytes = 1048576
on_output_overflow = "truncate"

[roles.count]
runner = "command"
program = "wc"
args = ["-c"]

[roles.huge-session]
runner = "command"
program = "sh"
args = ["-c", "printf '{\"result\":\"ok\",\"session_id\":\"'; head -c 9000000 /dev/zero | tr '\\000' x; printf '\"}'"]
"#;

fn statuses(snap: &Value) -> Vec<(String, String)> {
    snap["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn nothing_in_flight(snap: &Value) {
    for (id, status) in statuses(snap) {
        assert!(
            status != "running" && status != "retrying",
            "step {id} is {status} under a {} workflow",
            snap["status"]
        );
    }
    assert_eq!(snap["progress"]["running"], 0, "{snap:#}");
}

#[tokio::test]
async fn a_wide_fan_out_whose_step_fails_for_good_leaves_no_step_running() {
    let mut app = spawn_app().await;
    let mut steps = vec![
        json!({ "id": "start", "role": "architect", "task": "go", "params": { "duration_ms": 1 } }),
    ];
    for i in 0..30 {
        let params = if i == 7 {
            json!({ "duration_ms": 200, "fail_attempts": 99, "error": "disk on fire" })
        } else {
            json!({ "duration_ms": 60_000 })
        };
        steps.push(
            json!({ "id": format!("w{i}"), "role": "developer", "task": "work {start.output}",
                           "deps": ["start"], "retry": { "max_attempts": 1 }, "params": params }),
        );
    }
    let id = app.start(json!({ "steps": steps })).await;
    let snap = wait_status(&app, &id, "failed").await;
    nothing_in_flight(&snap);
    assert_eq!(step(&snap, "w7")["status"], "failed");
    let sibling = step(&snap, "w3");
    assert_eq!(sibling["status"], "cancelled");
    assert_eq!(sibling["error"], "cancelled: step 'w7' failed");
    assert_eq!(
        sibling["attempts"][0]["error"], "cancelled: step 'w7' failed",
        "the interrupted attempt is closed with the reason"
    );
    // The history says so, and no event follows the failure.
    let history = app.history(&id).await;
    assert_eq!(history.last().unwrap()["type"], "workflow.failed");

    // Seconds later, and after a restart, still nothing runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snap: Value = app
        .get(&format!("/api/workflows/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(snap["status"], "failed");
    nothing_in_flight(&snap);
    assert_eq!(
        app.history(&id).await.len(),
        history.len(),
        "nothing happened after the failure"
    );

    // Resume runs the failed step and the cancelled siblings again.
    let resp = app
        .post(&format!("/api/workflows/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    let snap: Value = resp.json().await.unwrap();
    assert_eq!(step(&snap, "w3")["status"], "pending");
}

#[tokio::test]
async fn runaway_output_fails_or_is_truncated_by_the_role_limit_while_others_carry_on() {
    let app = spawn_app_with(ROLES).await;
    let runaway = app
        .start(json!({ "id": "s", "role": "runaway", "task": "x" }))
        .await;
    let chatty = app
        .start(json!({ "id": "s", "role": "chatty", "task": "x" }))
        .await;
    let clipped = app
        .start(json!({ "id": "s", "role": "clipped", "task": "x" }))
        .await;
    let fine = app
        .start(json!({ "id": "s", "role": "architect", "task": "fine", "params": { "duration_ms": 10 } }))
        .await;

    let snap = wait_status(&app, &runaway, "failed").await;
    let s = step(&snap, "s");
    assert_eq!(s["error"], "output exceeded 16 MiB (max_output_bytes)");
    assert_eq!(s["attempt"], 1, "an overflow is final: not retried");

    let snap = wait_status(&app, &chatty, "failed").await;
    assert_eq!(
        step(&snap, "s")["error"],
        "output exceeded 1 MiB (max_output_bytes)"
    );
    // Endless lines: the log keeps its cap.
    let logs = app
        .history(&chatty)
        .await
        .iter()
        .filter(|e| e["type"] == "step.log")
        .count();
    assert!(logs <= 1001, "{logs} log lines");

    let snap = wait_status(&app, &clipped, "completed").await;
    let s = step(&snap, "s");
    let whole = app
        .get(&format!("/api/workflows/{clipped}/steps/s/output"))
        .await
        .text()
        .await
        .unwrap();
    assert!(whole.starts_with("cairn\ncairn\n"));
    assert!(
        whole.ends_with("[cairn] output truncated: kept 1 MiB of 4.8 MiB"),
        "{}",
        &whole[whole.len() - 80..]
    );
    assert_eq!(s["output_bytes"], whole.len());

    wait_status(&app, &fine, "completed").await;
}

#[tokio::test]
async fn a_big_output_is_stored_once_previewed_everywhere_and_rendered_whole() {
    let mut app = spawn_app_with(ROLES).await;
    let id = app
        .start(json!({ "steps": [
            { "id": "design", "role": "architect", "task": "d", "params": { "duration_ms": 1, "output_bytes": 5_000_000 } },
            { "id": "wait", "role": "developer", "task": "w", "deps": ["design"], "params": { "duration_ms": 1500 } },
            { "id": "build", "role": "count", "task": "Build {design.output}", "deps": ["wait"] }
        ]}))
        .await;
    // Restart while `wait` runs: the whole output must come back from the store.
    wait_for(&app, &id, "wait running", |s| {
        step(s, "wait")["status"] == "running"
    })
    .await;
    app.restart().await;
    let snap = wait_status(&app, &id, "completed").await;

    // The template read the whole 5 MB output, not the preview.
    assert_eq!(step(&snap, "build")["output"], "5000006");
    assert_eq!(step(&snap, "build")["task_bytes"], 5_000_006);
    assert_eq!(step(&snap, "build")["task"].as_str().unwrap().len(), 4096);
    // Nothing ran twice.
    assert_eq!(
        step(&snap, "design")["attempts"].as_array().unwrap().len(),
        1
    );

    // The snapshot carries a preview and the size; the whole is at its URL.
    let design = step(&snap, "design");
    assert_eq!(design["output"].as_str().unwrap().len(), 4096);
    assert_eq!(design["output_bytes"], 5_000_000);
    let text = app
        .get(&format!("/api/workflows/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.len() < 100_000, "snapshot is {} bytes", text.len());
    let resp = app
        .get(&format!("/api/workflows/{id}/steps/design/output"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let whole = resp.text().await.unwrap();
    assert_eq!(whole.len(), 5_000_000);
    assert!(whole.starts_with(design["output"].as_str().unwrap()));

    // The history (and so SSE, which sends the same JSON) carries the preview.
    let history = app.history(&id).await;
    let done = history
        .iter()
        .find(|e| e["type"] == "step.completed" && e["step_id"] == "design")
        .unwrap();
    assert_eq!(done["output"].as_str().unwrap().len(), 4096);
    assert_eq!(done["output_bytes"], 5_000_000);
    let started = history
        .iter()
        .find(|e| e["type"] == "step.started" && e["step_id"] == "build")
        .unwrap();
    assert!(
        started.to_string().len() < 10_000,
        "step.started stays small"
    );

    // The page is small too.
    let html = app
        .get(&format!("/workflows/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.len() < 200_000, "page is {} bytes", html.len());

    // The whole output is in the database once, not once per checkpoint after it.
    let db = std::fs::metadata(&app.db_path).unwrap().len()
        + std::fs::metadata(app.db_path.with_extension("db-wal")).map_or(0, |m| m.len());
    assert!(db < 12_000_000, "database and WAL hold {db} bytes");

    // Unknown steps and steps without output are 404s with a JSON error.
    let resp = app
        .get(&format!("/api/workflows/{id}/steps/nope/output"))
        .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_step_with_no_output_yet_has_no_output_url_answer() {
    let app = spawn_app().await;
    let id = app
        .start(json!({ "id": "s", "role": "architect", "task": "x", "params": { "duration_ms": 60_000 } }))
        .await;
    wait_for(&app, &id, "running", |s| {
        step(s, "s")["status"] == "running"
    })
    .await;
    let resp = app
        .get(&format!("/api/workflows/{id}/steps/s/output"))
        .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("running"),
        "{body}"
    );
}

#[tokio::test]
async fn an_uncommittable_result_becomes_a_failed_attempt_with_its_reason() {
    let app = spawn_app_with(ROLES).await;
    let bad = app
        .start(json!({ "id": "s", "role": "huge-session", "task": "x" }))
        .await;
    let good = app
        .start(json!({ "id": "s", "role": "architect", "task": "ok", "params": { "duration_ms": 300 } }))
        .await;
    let snap = wait_status(&app, &bad, "failed").await;
    let error = step(&snap, "s")["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("the attempt's result could not be saved: a step.completed event is"),
        "{error}"
    );
    assert!(error.contains("over the store's limit"), "{error}");
    nothing_in_flight(&snap);
    let history = app.history(&bad).await;
    assert!(history.iter().any(|e| e["type"] == "step.failed"));
    wait_status(&app, &good, "completed").await;
}
