//! Runs that go forward: success, retries, failure, pause, skip, and what the state keeps.

use chrono::Duration;
use serde_json::json;

use super::*;

#[test]
fn a_workflow_runs_from_created_to_completed() {
    let mut h = Harness::new(chain());
    assert_eq!(h.state.status, WorkflowStatus::Pending);
    assert_eq!(h.state.name, "ship");
    assert_eq!(statuses(&h.state), [StepStatus::Pending; 3]);
    assert!(
        h.state.ready_steps(h.now).is_empty(),
        "nothing runs before workflow.started"
    );

    h.ok(Event::WorkflowStarted {});
    let ready: Vec<_> = h
        .state
        .ready_steps(h.now)
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(ready, ["design"]);

    h.start("design");
    assert_eq!(h.step("design").task.as_deref(), Some("Design login"));
    assert_eq!(h.state.current_steps().len(), 1);
    h.ok(Event::StepLog {
        step_id: "design".into(),
        attempt: 1,
        stream: LogStream::Stdout,
        line: "thinking".into(),
    });
    h.complete("design", "a plan");
    assert_eq!(
        h.state.render_task("implement").unwrap(),
        "Build a plan (sess-design)"
    );

    h.run("implement", "code").run("test", "green");
    assert!(h.state.is_finished());
    h.ok(Event::WorkflowCompleted {});

    let s = &h.state;
    assert_eq!(s.status, WorkflowStatus::Completed);
    assert_eq!(
        s.progress(),
        Progress {
            done: 3,
            total: 3,
            running: 0,
            failed: 0
        }
    );
    assert_eq!(s.created_at, Some(t0() + Duration::seconds(1)));
    assert_eq!(s.started_at, Some(t0() + Duration::seconds(2)));
    assert_eq!(s.finished_at, Some(h.now));
    assert_eq!(s.updated_at, Some(h.now));
    assert_eq!(s.last_event_id, h.log.len() as i64);
    let design = h.step("design");
    assert_eq!(design.output.as_deref(), Some("a plan"));
    assert_eq!(design.session_id.as_deref(), Some("sess-design"));
    assert_eq!(design.duration_ms, Some(250));
    assert_eq!(design.logs.len(), 1);
    assert_eq!(design.attempts.len(), 1);
    assert_eq!(design.attempts[0].duration_ms, Some(250));
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn a_failed_attempt_waits_and_then_retries() {
    let mut h = Harness::started();
    h.start("design").fail_attempt("design", 10);
    let design = h.step("design");
    assert_eq!(design.status, StepStatus::Retrying);
    assert_eq!(design.error.as_deref(), Some("boom"));
    let wake = h.now + Duration::seconds(10);
    assert_eq!(design.next_attempt_at, Some(wake));
    assert_eq!(design.attempts[0].error.as_deref(), Some("boom"));
    assert_eq!(
        design.attempts[0].duration_ms,
        Some(1000),
        "measured from the event times"
    );
    assert_eq!(h.state.next_wake(), Some(wake));
    assert!(h.state.ready_steps(h.now).is_empty());
    assert_eq!(h.state.ready_steps(wake).len(), 1);
    assert_eq!(h.state.current_steps().len(), 1);

    h.start("design");
    let design = h.step("design");
    assert_eq!((design.status, design.attempt), (StepStatus::Running, 2));
    assert_eq!((design.error.clone(), design.next_attempt_at), (None, None));
    assert_eq!(design.attempts.len(), 2);
    h.complete("design", "plan");
    assert_eq!(h.state.next_wake(), None);
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn an_exhausted_step_fails_the_workflow_and_resume_gives_it_a_fresh_budget() {
    let mut h = Harness::started();
    h.run("design", "p")
        .run("implement", "c")
        .start("test")
        .fail_attempt("test", 1)
        .start("test");
    h.ok(failed("test", 2));
    assert_eq!(h.step("test").status, StepStatus::Failed);
    assert_eq!(
        h.state.status,
        WorkflowStatus::Running,
        "the engine fails the workflow next"
    );
    assert_eq!(h.state.progress().failed, 1);
    h.ok(Event::WorkflowFailed {
        step_id: Some("test".into()),
        error: "test failed".into(),
    });
    assert_eq!(h.state.status, WorkflowStatus::Failed);
    assert_eq!(h.state.error.as_deref(), Some("test failed"));
    assert!(h.state.finished_at.is_some());

    h.ok(Event::WorkflowResumed {
        by: Some("ann".into()),
    });
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!((h.state.error.clone(), h.state.finished_at), (None, None));
    let test = h.step("test");
    assert_eq!(
        (test.status, test.attempt, test.error.clone()),
        (StepStatus::Pending, 0, None)
    );
    assert_eq!(test.attempts.len(), 2, "the history stays");
    assert_eq!(statuses(&h.state)[..2], [StepStatus::Completed; 2]);
    h.run("test", "green").ok(Event::WorkflowCompleted {});
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn a_pause_policy_holds_the_workflow_until_someone_skips() {
    let spec = json!({"steps": [
        {"id": "a", "role": "r", "task": "t", "retry": {"max_attempts": 1, "on_exhausted": "pause"}},
        {"id": "b", "role": "r", "task": "after [{a.output}]", "deps": ["a"]}
    ]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {})
        .start("a")
        .ok(failed("a", 1));
    assert_eq!(h.state.status, WorkflowStatus::Paused);
    assert!(h.state.ready_steps(h.now).is_empty());
    h.ok(skipped("a", None));
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!(h.step("a").output.as_deref(), Some(""));
    assert_eq!(h.state.render_task("b").unwrap(), "after []");
    h.run("b", "done").ok(Event::WorkflowCompleted {});
    assert_eq!(h.state.progress().done, 2);
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn a_paused_workflow_resumes_with_the_failed_step_pending() {
    let spec =
        json!([{"role": "r", "task": "t", "retry": {"max_attempts": 1, "on_exhausted": "pause"}}]);
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {})
        .start("step1")
        .ok(failed("step1", 1));
    h.ok(Event::WorkflowResumed {
        by: Some("ann".into()),
    });
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!(h.step("step1").status, StepStatus::Pending);
}

#[test]
fn a_skipped_step_hands_its_given_output_downstream() {
    let mut h = Harness::started();
    h.ok(skipped("design", Some("borrowed plan")));
    assert_eq!(h.step("design").status, StepStatus::Skipped);
    assert_eq!(
        h.state.render_task("implement").unwrap(),
        "Build borrowed plan ()"
    );
    // A retrying step can be skipped too; its wait is forgotten.
    h.start("implement")
        .fail_attempt("implement", 60)
        .ok(skipped("implement", None));
    assert_eq!(h.step("implement").next_attempt_at, None);
    assert_eq!(h.state.next_wake(), None);
    assert_eq!(h.state.status, WorkflowStatus::Running);
}

#[test]
fn session_ids_are_kept_unless_an_event_brings_a_new_one() {
    let mut h = Harness::started();
    h.ok(Event::StepStarted {
        step_id: "design".into(),
        attempt: 1,
        task: "x".into(),
        session_id: Some("s1".into()),
        task_bytes: None,
    });
    h.ok(Event::StepCompleted {
        step_id: "design".into(),
        attempt: 1,
        output: "o".into(),
        session_id: None,
        duration_ms: 1,
        output_bytes: None,
    });
    assert_eq!(h.step("design").session_id.as_deref(), Some("s1"));
    h.start("implement");
    h.ok(Event::StepCompleted {
        step_id: "implement".into(),
        attempt: 1,
        output: "o".into(),
        session_id: Some("s2".into()),
        duration_ms: 1,
        output_bytes: None,
    });
    assert_eq!(h.step("implement").session_id.as_deref(), Some("s2"));
}

#[test]
fn the_log_tail_keeps_the_newest_lines_and_cuts_long_ones() {
    let mut h = Harness::started();
    h.start("design");
    for i in 0..LOG_TAIL + 50 {
        let line = if i == 0 {
            "é".repeat(LOG_LINE_MAX_BYTES)
        } else {
            format!("line {i}")
        };
        let stream = if i % 2 == 0 {
            LogStream::Stdout
        } else {
            LogStream::Stderr
        };
        h.ok(Event::StepLog {
            step_id: "design".into(),
            attempt: 1,
            stream,
            line,
        });
    }
    let logs = &h.step("design").logs;
    assert_eq!(logs.len(), LOG_TAIL);
    assert_eq!(logs[0].line, "line 50");
    assert_eq!(logs[LOG_TAIL - 1].line, format!("line {}", LOG_TAIL + 49));
    let mut h = Harness::started();
    h.start("design");
    h.ok(Event::StepLog {
        step_id: "design".into(),
        attempt: 1,
        stream: LogStream::Stdout,
        line: "é".repeat(LOG_LINE_MAX_BYTES),
    });
    let kept = &h.step("design").logs[0].line;
    assert!(kept.len() <= LOG_LINE_MAX_BYTES + "…".len());
    assert!(kept.ends_with('…'));
}

#[test]
fn attempt_history_is_capped() {
    let spec = json!([{"role": "r", "task": "t", "retry": {"max_attempts": 100}}]);
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {});
    for _ in 0..MAX_ATTEMPT_RECORDS + 5 {
        h.start("step1").fail_attempt("step1", 0);
    }
    let s = h.step("step1");
    assert_eq!(s.attempts.len(), MAX_ATTEMPT_RECORDS);
    assert_eq!(s.attempts[0].attempt, 6);
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn the_state_round_trips_through_json() {
    let mut h = Harness::started();
    h.run("design", "p")
        .start("implement")
        .fail_attempt("implement", 5);
    let text = serde_json::to_string(&h.state).unwrap();
    assert_eq!(
        serde_json::from_str::<WorkflowState>(&text).unwrap(),
        h.state
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "running");
    assert_eq!(v["steps"][1]["status"], "retrying");
}

#[test]
fn statuses_know_their_names_and_kinds() {
    use WorkflowStatus as W;
    for s in [
        W::Pending,
        W::Running,
        W::Paused,
        W::Completed,
        W::Failed,
        W::Cancelled,
        W::Stalled,
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        assert_eq!(
            s.is_terminal(),
            matches!(s, W::Completed | W::Failed | W::Cancelled)
        );
    }
    use StepStatus as S;
    for s in [
        S::Pending,
        S::Running,
        S::Retrying,
        S::Completed,
        S::Failed,
        S::Skipped,
        S::Cancelled,
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        assert_eq!(s.to_string(), s.as_str());
        assert_eq!(s.is_done(), matches!(s, S::Completed | S::Skipped));
    }
}
