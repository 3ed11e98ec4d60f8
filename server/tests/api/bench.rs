//! `cairn bench`, the real binary: its stdout is one JSON line whatever it logs, and the
//! numbers it reports describe the run (every workflow checked, four commits per chain).

use serde_json::Value;

use crate::helpers::cairn;

/// Runs a benchmark and returns its one JSON line.
async fn bench(args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let ran = cairn(&all, &[]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is one JSON line: {:?}", ran.stdout);
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

#[tokio::test]
async fn a_chain_costs_four_commits_per_workflow_on_both_stores() {
    for store in ["sqlite", "postgres"] {
        let url = crate::pg::admin_url();
        let r = bench(&[
            "--workload",
            "chain",
            "--n",
            "20",
            "--store",
            store,
            "--database-url",
            &url,
        ])
        .await;
        assert_eq!(r["store"], store);
        assert_eq!(r["workflows"], 20);
        assert_eq!(r["steps"], 60);
        assert_eq!(r["commits_per_workflow"], 4.0, "{r}");
        assert_eq!(r["re_executed_completed_steps"], 0);
        let floor = r["commit_floor_ms"].as_f64().unwrap();
        let ratio = r["floor_ratio"].as_f64().unwrap();
        assert!(floor > 0.0 && ratio > 0.0, "{r}");
        // One chain after another: the writer is busy for part of the wall time, never more.
        let share = r["commit_share"].as_f64().unwrap();
        assert!(share > 0.0 && share <= 1.0, "{r}");
    }
}

#[tokio::test]
async fn concurrent_chains_spread_over_instances_sharing_postgres() {
    let r = bench(&[
        "--workload",
        "concurrent",
        "--n",
        "30",
        "--store",
        "postgres",
        "--instances",
        "2",
        "--database-url",
        &crate::pg::admin_url(),
    ])
    .await;
    assert_eq!(r["instances"], 2);
    assert_eq!(r["steps"], 90);
    assert_eq!(r["re_executed_completed_steps"], 0);
}

#[tokio::test]
async fn instances_on_sqlite_are_refused_with_the_reason() {
    let ran = cairn(&["bench", "--workload", "chain", "--instances", "2"], &[]).await;
    assert_ne!(ran.code, 0);
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    assert!(
        ran.stderr.contains("--instances needs --store postgres"),
        "{}",
        ran.stderr
    );
}
