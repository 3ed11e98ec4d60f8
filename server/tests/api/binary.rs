//! The `cairn` binary itself: start-up messages, signals and exit codes.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::helpers::serve_binary;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

#[test]
fn cairn_serve_starts_on_a_free_port_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let (mut child, url) = serve_binary(&db);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(db.exists(), "database file not created");

    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cairn did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn an_unsupported_database_url_is_a_clear_error_not_a_panic() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--database-url",
            "mysql://x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported database URL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_config_file_names_the_file() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/cairn.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cairn.toml"), "{err}");
}

/// The id `/api/health` gives an instance is in its log too: on the start-up line and on
/// every line its engine writes, so the logs of many instances can be told apart.
#[tokio::test]
async fn the_instance_id_from_health_names_the_servers_log_lines() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let mut child = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--database-url", &url])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        if line.contains("listening on http://") {
            break line;
        }
    };
    let base = listening.split("listening on ").nth(1).unwrap();
    let base = base.split_whitespace().next().unwrap();
    let health = crate::helpers::get_json(&reqwest::Client::new(), base, "/api/health").await;
    let instance = health["instance"].as_str().unwrap();
    assert!(
        listening.contains(&format!("instance={instance}")),
        "{listening}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = lines.iter().collect();
    let stopped = rest
        .iter()
        .find(|l| l.contains("engine stopped"))
        .unwrap_or_else(|| panic!("no engine line in {rest:?}"));
    assert!(
        stopped.contains(&format!("engine{{instance={instance}}}")),
        "{stopped}"
    );
}
