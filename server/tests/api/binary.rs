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
