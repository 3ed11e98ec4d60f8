//! A role's secrets (`${NAME}` from the server's environment) never show: not in events, the
//! API, the page or the server's logs.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::helpers::{get_json, start_on};

const SECRET: &str = "sk-test-9f8e7d6c5b4a";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("cairn.toml");
    std::fs::write(
        &path,
        r#"
[roles.leaky]
runner = "command"
program = "sh"
args = ["-c", "echo \"key is $API_KEY\"; echo \"Authorization: Bearer $API_KEY\""]
env = { API_KEY = "${CAIRN_TEST_SECRET}" }

[roles.failing]
runner = "command"
program = "sh"
args = ["-c", "echo \"denied for $API_KEY\" >&2; exit 3"]
env = { API_KEY = "prefix-${CAIRN_TEST_SECRET}" }
"#,
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_runner_that_prints_its_secret_shows_it_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--log",
            "debug",
            "--config",
        ])
        .arg(&config)
        .arg("--database-url")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("cairn.db").display()
        ))
        .env("CAIRN_TEST_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let (logs, tx) = (logs.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let url = line[i + "listening on ".len()..].split_whitespace().next();
                    let _ = tx.send(url.unwrap_or("").to_string());
                }
                logs.lock().unwrap().push_str(&line);
                logs.lock().unwrap().push('\n');
            }
        });
    }
    let base = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let client = reqwest::Client::new();
    let id = start_on(
        &client,
        &base,
        &json!({ "steps": [
            { "id": "print", "role": "leaky", "task": "x" },
            { "id": "deny", "role": "failing", "task": "{print.output}", "deps": ["print"],
              "retry": { "max_attempts": 1 } }
        ] }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let s = get_json(&client, &base, &format!("/api/workflows/{id}")).await;
        if s["status"] == "failed" {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The masked values are there, in place of the secret.
    assert_eq!(
        state["steps"][0]["output"],
        "key is [masked]\nAuthorization: Bearer [masked]"
    );
    assert!(
        state["steps"][1]["error"]
            .as_str()
            .unwrap()
            .contains("denied for prefix-[masked]"),
        "{state:#}"
    );
    let mut everything = vec![state.to_string()];
    for path in [
        format!("/api/workflows/{id}/history"),
        format!("/api/workflows/{id}/steps/print/output"),
        "/api/workflows".to_string(),
        format!("/workflows/{id}"),
        format!("/api/invoke-status/status/{id}"),
    ] {
        let resp = client.get(format!("{base}{path}")).send().await.unwrap();
        everything.push(resp.text().await.unwrap());
    }
    for (i, text) in everything.iter().enumerate() {
        assert!(
            !text.contains(SECRET),
            "the secret is in answer {i}: {text}"
        );
        assert!(
            text.contains("[masked]"),
            "answer {i} shows the mask: {text}"
        );
    }
    child.kill().unwrap();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(100));
    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains("listening on"), "{logs}");
    assert!(
        !logs.contains(SECRET),
        "the secret is in the server's log:\n{logs}"
    );
}

#[test]
fn a_role_that_names_a_variable_the_server_lacks_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.toml");
    std::fs::write(
        &path,
        "[roles.agent]\nrunner = \"command\"\nprogram = \"claude\"\nenv = { ANTHROPIC_API_KEY = \"${CAIRN_TEST_NOT_SET}\" }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("CAIRN_TEST_NOT_SET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("roles.agent.env.ANTHROPIC_API_KEY takes ${CAIRN_TEST_NOT_SET} from the server's environment, but CAIRN_TEST_NOT_SET is not set there"),
        "{stderr}"
    );
}
