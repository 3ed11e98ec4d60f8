//! Events that do not fit are refused, and leave the state exactly as it was.

use serde_json::json;

use super::*;

#[test]
fn events_that_do_not_fit_are_refused_and_change_nothing() {
    let mut h = Harness::new(chain());
    let start = |id: &str, attempt| Event::StepStarted {
        step_id: id.into(),
        attempt,
        task: "t".into(),
        session_id: None,
        task_bytes: None,
    };
    let done = |id: &str, attempt| Event::StepCompleted {
        step_id: id.into(),
        attempt,
        output: "o".into(),
        session_id: None,
        duration_ms: 1,
        output_bytes: None,
    };
    h.refused(start("design", 1));
    h.refused(Event::WorkflowCompleted {});
    h.refused(Event::WorkflowResumed { by: None });
    h.refused(Event::WorkflowStalled {
        reason: "r".into(),
        previous_owner: None,
    });
    h.refused(Event::WorkflowFailed {
        step_id: None,
        error: "e".into(),
    });
    let spec = (**h.state.spec.as_ref().unwrap()).clone();
    h.refused(Event::WorkflowCreated {
        spec,
        by: None,
        workspace: None,
    });
    h.ok(Event::WorkflowStarted {});
    h.refused(Event::WorkflowStarted {});
    h.refused(start("implement", 1));
    h.refused(start("design", 2));
    h.refused(start("nope", 1));
    h.refused(done("design", 1));
    h.refused(failed("design", 0));
    h.refused(Event::StepLog {
        step_id: "design".into(),
        attempt: 1,
        stream: LogStream::Stdout,
        line: "x".into(),
    });
    h.refused(retrying("design", 0, t0(), None));
    h.refused(retrying("design", 0, t0(), Some("ann")));
    h.start("design");
    h.refused(start("design", 2));
    h.refused(done("design", 2));
    h.refused(failed("design", 2));
    h.refused(Event::StepLog {
        step_id: "design".into(),
        attempt: 2,
        stream: LogStream::Stdout,
        line: "x".into(),
    });
    h.refused(skipped("design", None));
    h.refused(Event::WorkflowCompleted {});
    h.refused(Event::WorkflowResumed { by: None });
    h.refused(Event::WorkflowFailed {
        step_id: Some("nope".into()),
        error: "e".into(),
    });
    h.complete("design", "p");
    h.refused(skipped("design", None));
    h.ok(Event::WorkflowCancelled {
        by: None,
        reason: None,
    });
    h.refused(Event::WorkflowStalled {
        reason: "r".into(),
        previous_owner: None,
    });
    h.refused(Event::WorkflowFailed {
        step_id: None,
        error: "e".into(),
    });
    h.refused(start("implement", 1));
}

#[test]
fn a_failure_cancels_the_steps_in_flight_in_other_branches() {
    let spec = json!({"steps": [{"id": "a", "role": "r", "task": "t"}, {"id": "b", "role": "r", "task": "t"}]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {})
        .start("a")
        .start("b")
        .fail_attempt("b", 60)
        .ok(failed("a", 1));
    h.ok(Event::WorkflowFailed {
        step_id: Some("a".into()),
        error: "e".into(),
    });
    // Fail-fast: the sibling waiting out its backoff is cancelled, with the reason.
    let b = h.state.step("b").unwrap();
    assert_eq!(b.status, StepStatus::Cancelled);
    assert_eq!(b.error.as_deref(), Some("cancelled: step 'a' failed"));
    assert_eq!(b.next_attempt_at, None);
    // Retrying it is "retry step" now: the workflow runs again, the failed step stays failed.
    h.ok(retrying("b", 0, t0(), Some("ann")));
    assert_eq!(h.state.status, WorkflowStatus::Running);
    assert_eq!(h.state.step("b").unwrap().status, StepStatus::Retrying);
}

#[test]
fn a_failure_cancels_a_running_sibling_and_closes_its_attempt() {
    let spec = json!({"steps": [{"id": "a", "role": "r", "task": "t"}, {"id": "b", "role": "r", "task": "t"}]});
    let mut h = Harness::new(spec);
    h.ok(Event::WorkflowStarted {})
        .start("a")
        .start("b")
        .ok(failed("a", 1));
    assert_eq!(h.state.step("b").unwrap().status, StepStatus::Running);
    h.ok(Event::WorkflowFailed {
        step_id: Some("a".into()),
        error: "e".into(),
    });
    let b = h.state.step("b").unwrap();
    assert_eq!(b.status, StepStatus::Cancelled);
    let last = b.attempts.last().unwrap();
    assert_eq!(last.error.as_deref(), Some("cancelled: step 'a' failed"));
    assert!(last.finished_at.is_some());
    assert_eq!(h.state.progress().running, 0);
    // Resume runs both again with a fresh budget.
    h.ok(Event::WorkflowResumed { by: None });
    assert!(
        h.state
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Pending)
    );
}

#[test]
fn the_log_guards_against_foreign_and_replayed_events() {
    let mut h = Harness::started();
    let rec = EventRecord::new(99, "wf_other", h.now, Event::WorkflowCompleted {});
    assert!(h.state.apply(&rec).unwrap_err().reason.contains("wf_other"));
    let last = h.state.last_event_id;
    let again = EventRecord::new(
        last,
        WF,
        h.now,
        Event::StepSkipped {
            step_id: "design".into(),
            output: None,
            by: None,
            output_bytes: None,
        },
    );
    assert!(
        h.state
            .apply(&again)
            .unwrap_err()
            .reason
            .contains("not after")
    );
    // Id 0 is "not stored yet": applied, without moving last_event_id.
    let draft = EventRecord::new(0, WF, h.now, again.event.clone());
    h.state.apply(&draft).unwrap();
    assert_eq!(h.state.last_event_id, last);
    assert_eq!(h.step("design").status, StepStatus::Skipped);
}

#[test]
fn nothing_applies_before_workflow_created() {
    let mut state = WorkflowState::new(WF);
    let rec = EventRecord::new(1, WF, t0(), Event::WorkflowStarted {});
    let err = state.apply(&rec).unwrap_err();
    assert_eq!(
        err.to_string(),
        "event 1 (workflow.started) does not apply: the workflow has not been created"
    );
    assert_eq!(state, WorkflowState::new(WF));
    assert!(!state.is_finished());
    assert_eq!(state.progress(), Progress::default());
}

#[test]
fn apply_errors_read_well() {
    let mut h = Harness::started();
    let err = h.refused(Event::StepCompleted {
        step_id: "x".into(),
        attempt: 1,
        output: String::new(),
        session_id: None,
        duration_ms: 0,
        output_bytes: None,
    });
    assert_eq!(err.event_type, "step.completed");
    assert_eq!(
        err.to_string(),
        format!(
            "event {} (step.completed) does not apply: unknown step 'x'",
            err.event_id
        )
    );
    let err = h.refused(Event::StepCompleted {
        step_id: "design".into(),
        attempt: 1,
        output: String::new(),
        session_id: None,
        duration_ms: 0,
        output_bytes: None,
    });
    assert!(
        err.to_string()
            .ends_with("step 'design' is not running (it is pending)"),
        "{err}"
    );
}

#[test]
fn a_hand_made_spec_with_duplicate_ids_is_refused() {
    let mut spec = parse_spec_value(&chain(), &ParseOptions::default()).unwrap();
    spec.steps[1].id = "design".into();
    let rec = EventRecord::new(
        1,
        WF,
        t0(),
        Event::WorkflowCreated {
            spec,
            by: None,
            workspace: None,
        },
    );
    assert!(WorkflowState::new(WF).apply(&rec).is_err());
}

#[test]
fn render_task_names_unknown_steps() {
    let h = Harness::started();
    assert_eq!(
        h.state.render_task("nope"),
        Err(crate::TemplateError::UnknownStep("nope".into()))
    );
    assert_eq!(
        h.state.render_task("implement"),
        Err(crate::TemplateError::MissingOutput("design".into()))
    );
}
