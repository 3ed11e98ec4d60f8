//! The `cairn` binary as a client: `run --follow`, `ls`, `status`, `logs`, the controls, exit
//! statuses and errors, against a real server (also across its restart).

use std::{path::Path, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{Ran, spawn_app};

/// Runs the `cairn` binary as a client of the server at `server`.
async fn cairn(args: &[&str], server: &str) -> Ran {
    crate::helpers::cairn(args, &[("CAIRN_SERVER", server)]).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const CHAIN_YAML: &str = "\
name: ship-{inputs.feature}
steps:
  - id: design
    role: architect
    task: Design {inputs.feature}
    params: { duration_ms: 50, log_lines: 2 }
  - id: implement
    role: developer
    task: Build {design.output}
    deps: [design]
    params: { duration_ms: 50 }
";

#[tokio::test]
async fn run_follow_shows_the_steps_and_exits_by_how_the_workflow_ended() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "chain.yaml", CHAIN_YAML);

    let ran = cairn(
        &["run", &spec, "--input", "feature=login", "--follow"],
        &app.address,
    )
    .await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    // Without a terminal: a line per change, log lines under their step, then the summary.
    for expected in [
        "design started",
        "design │ ",
        "design completed in",
        "implement completed in",
        "workflow completed",
        "✓ design",
        "✓ implement",
    ] {
        assert!(
            ran.stdout.contains(expected),
            "{expected:?} in:\n{}",
            ran.stdout
        );
    }
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with("ship-") && l.contains(") completed in")),
        "a summary line: {}",
        ran.stdout
    );

    // A failing one: exit 1, the error shown.
    let failing = write(
        dir.path(),
        "fail.json",
        &json!({ "steps": [{ "id": "flaky", "role": "developer", "task": "x",
                             "retry": { "max_attempts": 2, "initial_interval_ms": 10, "jitter": false },
                             "params": { "duration_ms": 5, "fail_attempts": 5, "error": "boom: disk full" } }] })
        .to_string(),
    );
    let ran = cairn(&["run", &failing, "--follow"], &app.address).await;
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains("flaky attempt 1 failed: boom: disk full; retrying in"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("✗ flaky"), "{}", ran.stdout);
    assert!(ran.stdout.contains("(2 attempts)"), "{}", ran.stdout);

    // --json: one event per line, each once, in order, the same as the history.
    let ran = cairn(
        &["run", &spec, "-i", "feature=x", "--follow", "--json"],
        &app.address,
    )
    .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let events: Vec<Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let id = events[0]["workflow_id"].as_str().unwrap();
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let history: Vec<i64> = app
        .history(id)
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, history);
    assert_eq!(events.last().unwrap()["type"], "workflow.completed");
}

#[tokio::test]
async fn bad_specs_are_refused_before_sending_with_their_paths_and_exit_2() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();

    let ran = cairn(&["run", "/no/such/spec.yaml"], &app.address).await;
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .starts_with("cairn: cannot read /no/such/spec.yaml"),
        "{}",
        ran.stderr
    );

    let cycle = write(
        dir.path(),
        "cycle.yaml",
        "steps:\n  - {id: a, role: developer, task: x, deps: [b]}\n  - {id: b, role: developer, task: y, deps: [a]}\n",
    );
    let ran = cairn(&["run", &cycle], &app.address).await;
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("is not a valid workflow") && ran.stderr.contains("steps["),
        "{}",
        ran.stderr
    );

    let broken = write(dir.path(), "broken.json", "{\"steps\": [");
    let ran = cairn(&["run", &broken], &app.address).await;
    assert_eq!(ran.code, 2, "{}", ran.stderr);

    // Roles are the server's: its 422 comes back the same way.
    let wizard = write(dir.path(), "wizard.yaml", "role: wizard\ntask: x\n");
    let ran = cairn(&["run", &wizard], &app.address).await;
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("role: ") && ran.stderr.contains("wizard"),
        "{}",
        ran.stderr
    );
    // Nothing was started by any of them.
    let list = cairn(&["ls", "--json"], &app.address).await;
    assert_eq!(
        serde_json::from_str::<Value>(&list.stdout).unwrap(),
        json!([])
    );

    let ran = cairn(&["run", &wizard, "--input", "oops"], &app.address).await;
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("NAME=VALUE"), "{}", ran.stderr);

    let ran = cairn(&["ls"], "http://127.0.0.1:9").await;
    assert_eq!(ran.code, 4);
    assert!(
        ran.stderr
            .starts_with("cairn: cannot reach the cairn server at http://127.0.0.1:9"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"));
}

#[tokio::test]
async fn ls_status_logs_and_the_controls() {
    let app = spawn_app().await;
    let quick = app
        .start(
            json!({ "name": "quick", "steps": [{ "id": "only", "role": "developer", "task": "hello",
                       "params": { "duration_ms": 5, "log_lines": 3 } }] }),
        )
        .await;
    crate::helpers::wait_completed(
        &app.client,
        &app.address,
        &quick,
        std::time::Instant::now() + Duration::from_secs(20),
    )
    .await;
    let slow = app
        .start(json!({ "name": "slow", "steps": [
            { "id": "wait", "role": "developer", "task": "zzz", "params": { "duration_ms": 30000 } },
            { "id": "after", "role": "developer", "task": "then", "deps": ["wait"], "params": { "duration_ms": 5 } }
        ] }))
        .await;

    let ls = cairn(&["ls"], &app.address).await;
    assert_eq!(ls.code, 0);
    assert!(ls.stdout.starts_with("ID"), "{}", ls.stdout);
    assert!(
        ls.stdout.contains(&quick) && ls.stdout.contains(&slow),
        "{}",
        ls.stdout
    );
    let ls = cairn(&["ls", "--status", "completed", "--json"], &app.address).await;
    let rows: Value = serde_json::from_str(&ls.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["id"], quick.as_str());

    let status = cairn(&["status", &quick], &app.address).await;
    assert_eq!(status.code, 0);
    assert!(
        status.stdout.contains("quick") && status.stdout.contains("✓ only"),
        "{}",
        status.stdout
    );
    let status = cairn(&["status", &quick, "--json"], &app.address).await;
    assert_eq!(
        serde_json::from_str::<Value>(&status.stdout).unwrap()["status"],
        "completed"
    );

    let logs = cairn(&["logs", &quick, "only"], &app.address).await;
    assert_eq!(logs.code, 0);
    assert_eq!(logs.stdout.matches("only │ ").count(), 3, "{}", logs.stdout);
    let logs = cairn(&["logs", &quick, "nope"], &app.address).await;
    assert_eq!(logs.code, 1);
    assert!(
        logs.stderr
            .contains("has no step \"nope\"; its steps: only"),
        "{}",
        logs.stderr
    );

    // Controls: skip the waiting step of a cancelled workflow, resume it, and errors say why.
    let cancel = cairn(&["cancel", &slow, "--reason", "wrong branch"], &app.address).await;
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    assert!(cancel.stdout.contains("cancelled"), "{}", cancel.stdout);
    let again = cairn(&["cancel", &slow], &app.address).await;
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.starts_with("cairn: ") && again.stderr.contains("cancelled"),
        "{}",
        again.stderr
    );
    let skip = cairn(
        &["skip", &slow, "wait", "--output", "done by hand"],
        &app.address,
    )
    .await;
    assert_eq!(skip.code, 0, "{}", skip.stderr);
    let resume = cairn(&["resume", &slow], &app.address).await;
    assert_eq!(resume.code, 0, "{}", resume.stderr);
    crate::helpers::wait_completed(
        &app.client,
        &app.address,
        &slow,
        std::time::Instant::now() + Duration::from_secs(20),
    )
    .await;
    let retry = cairn(&["retry", &slow, "nope"], &app.address).await;
    assert_eq!(retry.code, 1);
    assert!(retry.stderr.contains("nope"), "{}", retry.stderr);
    let missing = cairn(&["status", "wf_nope"], &app.address).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("no workflow"), "{}", missing.stderr);
}

/// A free port on loopback, for a server that must come back where it was.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve_on(port: u16, db: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--database-url",
        ])
        .arg(format!("sqlite://{}", db.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_up(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/api/health")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{base} never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_follow_rides_out_a_server_restart_and_a_cancel_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve_on(port, &db);
    wait_up(&base).await;
    let client = reqwest::Client::new();
    let steps: Vec<Value> = (0..4)
        .map(|i| {
            let mut s = json!({ "id": format!("s{i}"), "role": "developer", "task": format!("step {i}"),
                                "params": { "duration_ms": 700 } });
            if i > 0 {
                s["deps"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    let id = crate::helpers::start_on(&client, &base, &json!({ "steps": steps })).await;

    let follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["logs", &id, "--follow", "--json", "--server", &base])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Restart the server (SIGTERM, then the same address and database) mid-run.
    tokio::time::sleep(Duration::from_millis(900)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = serve_on(port, &db);
    let out = tokio::time::timeout(Duration::from_secs(60), follower.wait_with_output())
        .await
        .expect("the follow ended")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let history =
        crate::helpers::get_json(&client, &base, &format!("/api/workflows/{id}/history")).await;
    let expected: Vec<i64> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids, expected,
        "every event once, in order, across the restart"
    );

    // A followed workflow that someone cancels: exit 3.
    let long = crate::helpers::start_on(
        &client,
        &base,
        &json!({ "role": "developer", "task": "long", "params": { "duration_ms": 30000 } }),
    )
    .await;
    let follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["logs", &long, "--follow", "--server", &base])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = client
        .post(format!("{base}/api/workflows/{long}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out = tokio::time::timeout(Duration::from_secs(30), follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("workflow cancelled"));
    server.kill().unwrap();
    let _ = server.wait();
}
