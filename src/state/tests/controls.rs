//! Manual controls and recovery: cancel, stall and resume, retry step, retry now, skip.

use chrono::Duration;
use serde_json::json;

use super::*;

#[test]
fn cancelling_stops_every_unfinished_step_and_keeps_the_finished_ones() {
    let spec = json!({"steps": [
        {"id": "a", "role": "r", "task": "t"},
        {"id": "b", "role": "r", "task": "t"},
        {"id": "c", "role": "r", "task": "t"},
        {"id": "d", "role": "r", "task": "t", "deps": ["a", "b", "c"]}
    ]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {})
        .run("a", "A")
        .start("b")
        .start("c")
        .fail_attempt("c", 30);
    h.ok(Event::WorkflowCancelled {
        by: Some("ann".into()),
        reason: Some("enough".into()),
    });
    assert_eq!(h.state.status, WorkflowStatus::Cancelled);
    assert_eq!(h.state.error.as_deref(), Some("enough"));
    use StepStatus::{Cancelled, Completed};
    assert_eq!(
        statuses(&h.state),
        [Completed, Cancelled, Cancelled, Cancelled]
    );
    assert_eq!(h.step("b").attempts[0].error.as_deref(), Some("cancelled"));
    assert_eq!(h.step("c").next_attempt_at, None);
    assert!(h.state.ready_steps(h.now).is_empty());
    h.refused(Event::WorkflowCancelled {
        by: None,
        reason: None,
    });

    h.ok(Event::WorkflowResumed {
        by: Some("ann".into()),
    });
    assert_eq!(
        statuses(&h.state),
        [
            Completed,
            StepStatus::Pending,
            StepStatus::Pending,
            StepStatus::Pending
        ]
    );
    assert_eq!(h.step("c").attempt, 0);
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn a_stall_and_resume_keep_completed_steps_and_rerun_the_interrupted_attempt() {
    let mut h = Harness::started();
    h.run("design", "plan");
    h.ok(Event::StepStarted {
        step_id: "implement".into(),
        attempt: 1,
        task: "x".into(),
        session_id: Some("s-impl".into()),
        task_bytes: None,
    });
    h.fail_attempt("implement", 1).start("implement");
    assert_eq!(
        h.step("implement").session_id.as_deref(),
        Some("s-impl"),
        "kept across attempts"
    );
    h.ok(Event::WorkflowStalled {
        reason: "lease expired".into(),
        previous_owner: Some("i-1".into()),
    });
    assert_eq!(h.state.status, WorkflowStatus::Stalled);
    assert_eq!(h.state.error.as_deref(), Some("lease expired"));
    assert_eq!(
        h.step("implement").status,
        StepStatus::Running,
        "interrupted, not failed"
    );
    assert!(h.state.ready_steps(h.now).is_empty());

    h.ok(Event::WorkflowResumed { by: None });
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!(h.state.error, None);
    assert_eq!(h.step("design").status, StepStatus::Completed);
    assert_eq!(h.step("design").output.as_deref(), Some("plan"));
    let implement = h.step("implement");
    assert_eq!(
        (implement.status, implement.attempt),
        (StepStatus::Pending, 1)
    );
    assert_eq!(implement.session_id.as_deref(), Some("s-impl"));
    assert_eq!(
        implement.attempts.last().and_then(|a| a.error.as_deref()),
        Some("interrupted")
    );

    // The re-run carries the same attempt number and continues the same session.
    h.start("implement");
    let implement = h.step("implement");
    assert_eq!(implement.attempt, 2);
    assert_eq!(implement.session_id.as_deref(), Some("s-impl"));
    assert_eq!(
        implement.attempts.iter().filter(|a| a.attempt == 2).count(),
        2
    );
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn retrying_a_step_resets_its_descendants_and_only_them() {
    let spec = json!({"steps": [
        {"id": "a", "role": "r", "task": "t"},
        {"id": "b", "role": "r", "task": "{a.output}", "deps": ["a"]},
        {"id": "c", "role": "r", "task": "{b.output}", "deps": ["b"]},
        {"id": "d", "role": "r", "task": "t"}
    ]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {})
        .run("a", "A1")
        .run("b", "B1")
        .run("c", "C1")
        .run("d", "D1");
    h.ok(Event::WorkflowCompleted {});
    let next = h.now;
    h.ok(retrying("a", 1, next, Some("ann")));
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!(h.state.finished_at, None);
    let a = h.step("a");
    assert_eq!(
        (a.status, a.attempt, a.output.clone()),
        (StepStatus::Retrying, 0, None)
    );
    assert_eq!(a.attempts.len(), 1, "history kept");
    assert_eq!(
        a.session_id.as_deref(),
        Some("sess-a"),
        "the session carries over"
    );
    for id in ["b", "c"] {
        let s = h.step(id);
        assert_eq!(
            (s.status, s.attempt, s.output.clone()),
            (StepStatus::Pending, 0, None),
            "{id}"
        );
    }
    assert_eq!(h.step("d").status, StepStatus::Completed);
    assert_eq!(h.state.ready_steps(h.now).len(), 1);
    h.start("a");
    assert_eq!(h.step("a").attempt, 1);
    h.complete("a", "A2");
    assert_eq!(h.state.render_task("b").unwrap(), "A2");
    assert_eq!(h.replayed(), h.state);
}

#[test]
fn retrying_a_step_supersedes_a_running_descendant() {
    let mut h = Harness::started();
    h.run("design", "p").start("implement");
    let next = h.now;
    h.ok(retrying("design", 1, next, Some("ann")));
    let implement = h.step("implement");
    assert_eq!(implement.status, StepStatus::Pending);
    assert!(
        implement.attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("superseded")
    );
    h.refused(Event::StepCompleted {
        step_id: "implement".into(),
        attempt: 1,
        output: "late".into(),
        session_id: None,
        duration_ms: 1,
        output_bytes: None,
    });
}

#[test]
fn retrying_a_step_of_a_cancelled_workflow_brings_back_the_cancelled_steps() {
    let spec = json!({"steps": [{"id": "a", "role": "r", "task": "t"}, {"id": "b", "role": "r", "task": "t"}]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {}).start("a");
    h.ok(Event::WorkflowCancelled {
        by: None,
        reason: None,
    });
    let next = h.now;
    h.ok(retrying("a", 1, next, Some("ann")));
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!(
        statuses(&h.state),
        [StepStatus::Retrying, StepStatus::Pending]
    );
    h.run("a", "x")
        .run("b", "y")
        .ok(Event::WorkflowCompleted {});
}

#[test]
fn retry_now_only_brings_the_next_attempt_forward() {
    let mut h = Harness::started();
    h.start("design").fail_attempt("design", 60);
    let planned = h.step("design").next_attempt_at;
    let sooner = h.now;
    h.ok(retrying("design", 1, sooner, Some("ann")));
    assert_eq!(h.step("design").next_attempt_at, Some(sooner));
    assert_eq!(h.step("design").attempt, 1, "the budget is not reset");
    h.ok(retrying(
        "design",
        1,
        sooner + Duration::hours(1),
        Some("ann"),
    ));
    assert_eq!(h.step("design").next_attempt_at, Some(sooner));
    assert!(planned > Some(sooner));
}

#[test]
fn a_running_workflow_with_a_failed_step_and_nothing_to_do_is_blocked() {
    let spec = json!({"steps": [
        {"id": "a", "role": "r", "task": "t", "retry": {"max_attempts": 1}},
        {"id": "b", "role": "r", "task": "t"},
        {"id": "c", "role": "r", "task": "t", "deps": ["a"]}
    ]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {});
    assert!(!h.state.is_blocked());
    h.start("a").run("b", "B");
    assert!(!h.state.is_blocked());
    h.ok(failed("a", 1));
    assert!(h.state.is_blocked());
    h.ok(Event::WorkflowFailed {
        step_id: Some("a".into()),
        error: "a failed".into(),
    });
    // Retrying b alone runs b again, but a stays failed: blocked once b is done.
    let next = h.now;
    h.ok(retrying("b", 1, next, Some("ann"))).run("b", "B2");
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert!(h.state.is_blocked());
}

#[test]
fn skipping_a_step_does_not_let_its_dependents_overtake_its_deps() {
    let mut h = Harness::started();
    h.ok(skipped("implement", Some("stub")));
    assert!(h.state.ready_steps(h.now).iter().all(|s| s.id != "test"));
    let err = h.refused(Event::StepStarted {
        step_id: "test".into(),
        attempt: 1,
        task: "t".into(),
        session_id: None,
        task_bytes: None,
    });
    assert!(
        err.reason.contains("waits for 'implement' (skipped"),
        "{err}"
    );
    h.run("design", "plan");
    assert_eq!(h.state.render_task("test").unwrap(), "Test stub");
    h.start("test");
}
