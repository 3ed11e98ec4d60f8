//! Retention: old finished workflows deleted in the background while streams stay open, and
//! `cairn prune` by hand.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    helpers::{serve_binary, spawn_app_with, start_on, wait_completed},
    sse::Sse,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn retention_deletes_exactly_the_old_finished_workflows_while_a_stream_is_open() {
    let app = spawn_app_with("[retention]\nfinished_after = \"1s\"\nevery = \"200ms\"\n").await;
    let quick = |name: &str| json!({ "name": name, "steps": [{ "id": "a", "role": "developer", "task": "x", "params": { "duration_ms": 5 } }] });
    let old1 = app.start(quick("old-1")).await;
    let old2 = app.start(quick("old-2")).await;
    // What starts later runs long: it must not finish (and go) while the test looks.
    let long = |name: &str| json!({ "name": name, "steps": [{ "id": "a", "role": "developer", "task": "x", "params": { "duration_ms": 20000 } }] });
    let running = app.start(long("long")).await;
    for id in [&old1, &old2] {
        wait_completed(&app.client, &app.address, id, Instant::now() + WAIT).await;
    }
    let mut stream = Sse::connect(&app, "/api/events", None).await;
    let snapshot = stream.next_event(WAIT).await.unwrap();
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let before: i64 = snapshot.id.unwrap().parse().unwrap();

    // Both finished ones go once they are a second old; the running one stays.
    let deadline = Instant::now() + WAIT;
    for id in [&old1, &old2] {
        while app.get(&format!("/api/workflows/{id}")).await.status() != 404 {
            assert!(Instant::now() < deadline, "{id} was never pruned");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let still = app.get(&format!("/api/workflows/{running}")).await;
    assert_eq!(still.status(), 200);
    assert_eq!(still.json::<Value>().await.unwrap()["status"], "running");

    // The open stream is not disturbed: the next workflow's events arrive on it.
    let next = app.start(long("after")).await;
    loop {
        let f = stream.next_event(WAIT).await.expect("the stream goes on");
        let data: Value = serde_json::from_str(&f.data).unwrap();
        if data["workflow_id"] == next.as_str() && f.event.as_deref() == Some("workflow.created") {
            break;
        }
    }

    // Resuming from before the deletions: a fresh snapshot, without the deleted ones.
    let mut resumed = Sse::connect(&app, "/api/events", Some(before)).await;
    let f = resumed.next_event(WAIT).await.unwrap();
    assert_eq!(f.event.as_deref(), Some("snapshot"));
    let data: Value = serde_json::from_str(&f.data).unwrap();
    let ids: Vec<&str> = data["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&running.as_str()) && ids.contains(&next.as_str()),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&old1.as_str()) && !ids.contains(&old2.as_str()),
        "{ids:?}"
    );
    // Resuming after them: the events, no snapshot.
    let last: i64 = f.id.unwrap().parse().unwrap();
    let mut recent = Sse::connect(&app, "/api/events", Some(last)).await;
    app.start(long("later")).await;
    let f = recent.next_event(WAIT).await.unwrap();
    assert_eq!(f.event.as_deref(), Some("workflow.created"));
}

#[tokio::test]
async fn cairn_prune_deletes_by_hand_and_a_dry_run_only_tells() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let (mut server, base) = serve_binary(&db);
    let client = reqwest::Client::new();
    let mut ids = vec![];
    for _ in 0..2 {
        let id = start_on(
            &client,
            &base,
            &json!({ "role": "developer", "task": "x", "params": { "duration_ms": 5 } }),
        )
        .await;
        wait_completed(&client, &base, &id, Instant::now() + WAIT).await;
        ids.push(id);
    }
    let url = format!("sqlite://{}", db.display());
    let prune = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("prune")
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap()
    };
    // While the server runs: a dry run lists them, deletes nothing.
    let out = prune(&["--older-than", "1ms", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("would delete 2 finished workflows ("),
        "{text}"
    );
    assert!(ids.iter().all(|id| text.contains(id.as_str())), "{text}");
    let out = prune(&["--older-than", "7d"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deleted 0 finished workflows (0 events)\n"
    );
    let out = prune(&["--older-than", "1ms"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("deleted 2 finished workflows ("));
    for id in &ids {
        let status = client
            .get(format!("{base}/api/workflows/{id}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
    }
    let out = prune(&["--older-than", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("like 30d"));
    server.kill().unwrap();
    let _ = server.wait();
}
