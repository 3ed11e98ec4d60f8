//! Property tests for the fold: a simulated scheduler drives random workflows through random
//! valid event sequences (with random, mostly invalid, events mixed in), and the fold must
//! replay every prefix exactly, never panic, leave state alone when it refuses an event,
//! survive JSON, and never lose a completed step except to a manual retry.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;
use crate::event::Event;
use crate::spec::ValidSpec;
use crate::testkit::arb_dag;

const WF: &str = "wf_prop";

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::days(20_000)
}

/// Every event a scheduler (or a person) could send now, by restating the rules: each one
/// must apply. Progress events are listed more than once so runs get somewhere.
fn candidates(s: &WorkflowState, now: DateTime<Utc>, salt: u16) -> Vec<Event> {
    use StepStatus as S;
    use WorkflowStatus as W;
    let mut out = Vec::new();
    // Other bits of the salt than the ones that pick the event thin out the disruptive
    // events (skip, manual retry, cancel), which would otherwise crowd out progress.
    let mix = salt / 11;
    let startable: Vec<String> = s
        .ready_steps(DateTime::<Utc>::MAX_UTC)
        .iter()
        .map(|st| st.id.clone())
        .collect();
    for step in &s.steps {
        let id = step.id.clone();
        let a = step.attempt;
        if startable.contains(&id) {
            let task = s.render_task(&id).expect("a ready step's task renders");
            let session_id = salt.is_multiple_of(3).then(|| format!("sess-{id}-{salt}"));
            let started = Event::StepStarted {
                step_id: id.clone(),
                attempt: a + 1,
                task,
                session_id,
                task_bytes: None,
            };
            out.extend([started.clone(), started.clone(), started]);
        }
        match step.status {
            S::Running => {
                // Now and then an output too big to carry whole: the state keeps a preview.
                let output = if salt % 13 == 5 {
                    format!("out-{id}-{a}-").repeat(OUTPUT_PREVIEW_BYTES / 4)
                } else {
                    format!("out-{id}-{a}")
                };
                let completed = Event::StepCompleted {
                    step_id: id.clone(),
                    attempt: a,
                    output,
                    session_id: salt.is_multiple_of(2).then(|| format!("sess-{id}")),
                    duration_ms: u64::from(salt),
                    output_bytes: None,
                };
                out.extend([completed.clone(), completed.clone(), completed]);
                out.push(Event::StepLog {
                    step_id: id.clone(),
                    attempt: a,
                    stream: if salt.is_multiple_of(2) {
                        LogStream::Stdout
                    } else {
                        LogStream::Stderr
                    },
                    line: format!("line {salt}"),
                });
                out.push(Event::StepRetrying {
                    step_id: id.clone(),
                    attempt: a,
                    error: Some("flaky".into()),
                    delay_ms: u64::from(salt % 10) * 1000,
                    next_attempt_at: now + Duration::seconds(i64::from(salt % 10)),
                    by: None,
                });
                out.push(failed(&id, a));
            }
            S::Retrying => {
                if !s.status.is_terminal() {
                    out.push(manual_retry(&id, a, now));
                }
                out.push(failed(&id, a));
            }
            S::Completed | S::Failed | S::Skipped | S::Cancelled if mix.is_multiple_of(3) => {
                out.push(manual_retry(&id, a, now));
            }
            S::Completed | S::Failed | S::Skipped | S::Cancelled => {}
            S::Pending => {}
        }
        if !matches!(step.status, S::Completed | S::Running) && mix % 4 == 1 {
            let output = salt.is_multiple_of(2).then(|| format!("given-{id}"));
            out.push(Event::StepSkipped {
                step_id: id,
                output,
                by: Some("bob".into()),
                output_bytes: None,
            });
        }
    }
    match s.status {
        W::Pending => out.extend(std::iter::repeat_n(Event::WorkflowStarted {}, 3)),
        W::Running if s.is_finished() => {
            out.extend(std::iter::repeat_n(Event::WorkflowCompleted {}, 4))
        }
        _ => {}
    }
    if s.status == W::Running {
        out.push(Event::WorkflowStalled {
            reason: "lease expired".into(),
            previous_owner: None,
        });
    }
    if matches!(s.status, W::Running | W::Paused | W::Stalled) {
        let step_id = s
            .steps
            .iter()
            .find(|st| st.status == S::Failed)
            .map(|st| st.id.clone());
        out.push(Event::WorkflowFailed {
            step_id,
            error: "failed".into(),
        });
    }
    if !s.status.is_terminal() && mix % 5 == 2 {
        out.push(Event::WorkflowCancelled {
            by: Some("ann".into()),
            reason: None,
        });
    }
    if matches!(s.status, W::Stalled | W::Failed | W::Cancelled | W::Paused) {
        out.push(Event::WorkflowResumed { by: None });
    }
    out
}

fn failed(id: &str, attempt: u32) -> Event {
    Event::StepFailed {
        step_id: id.into(),
        attempt,
        error: "final".into(),
        duration_ms: 3,
    }
}

fn manual_retry(id: &str, attempt: u32, now: DateTime<Utc>) -> Event {
    Event::StepRetrying {
        step_id: id.into(),
        attempt,
        error: None,
        delay_ms: 0,
        next_attempt_at: now,
        by: Some("ann".into()),
    }
}

/// An arbitrary event: mostly nonsense for the state it meets.
fn arb_event() -> impl Strategy<Value = Event> {
    let ids = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "nope"];
    (
        0u8..13,
        prop::sample::select(ids.to_vec()),
        prop_oneof![0u32..4, Just(u32::MAX)],
        proptest::option::of("[a-z]{0,3}"),
        any::<u64>(),
        0i64..100_000,
        any::<bool>(),
    )
        .prop_map(|(kind, id, attempt, text, n, secs, flag)| {
            let step_id = id.to_string();
            let at = t0() + Duration::seconds(secs);
            let who = flag.then(|| "eve".to_string());
            match kind {
                0 => Event::WorkflowStarted {},
                1 => Event::StepStarted {
                    step_id,
                    attempt,
                    task: "t".into(),
                    session_id: text,
                    task_bytes: None,
                },
                2 => Event::StepLog {
                    step_id,
                    attempt,
                    stream: LogStream::Stdout,
                    line: text.unwrap_or_default(),
                },
                3 => Event::StepRetrying {
                    step_id,
                    attempt,
                    error: text,
                    delay_ms: n,
                    next_attempt_at: at,
                    by: who,
                },
                4 => Event::StepCompleted {
                    step_id,
                    attempt,
                    output: "o".into(),
                    session_id: text,
                    duration_ms: n,
                    output_bytes: None,
                },
                5 => Event::StepFailed {
                    step_id,
                    attempt,
                    error: "e".into(),
                    duration_ms: n,
                },
                6 => Event::StepSkipped {
                    step_id,
                    output: text,
                    by: who,
                    output_bytes: None,
                },
                7 => Event::WorkflowCompleted {},
                8 => Event::WorkflowFailed {
                    step_id: flag.then_some(step_id),
                    error: "e".into(),
                },
                9 => Event::WorkflowCancelled {
                    by: who,
                    reason: text,
                },
                10 => Event::WorkflowStalled {
                    reason: "r".into(),
                    previous_owner: text,
                },
                11 => Event::WorkflowResumed { by: who },
                _ => Event::WorkflowCreated {
                    spec: ValidSpec {
                        name: "x".into(),
                        inputs: Default::default(),
                        steps: vec![],
                    },
                    by: None,
                    workspace: who,
                },
            }
        })
}

/// What must hold after every accepted event.
fn check_invariants(before: &WorkflowState, after: &WorkflowState, event: &Event) {
    let manual_retry = matches!(event, Event::StepRetrying { by: Some(_), .. });
    for b in before
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
    {
        let a = after.step(&b.id).expect("steps never disappear");
        if !manual_retry {
            assert_eq!(
                a.status,
                StepStatus::Completed,
                "{} lost by {event:?}",
                b.id
            );
            assert_eq!(a.output, b.output);
        }
    }
    let spec = after.spec.as_ref().expect("created");
    for s in &after.steps {
        assert!(s.logs.len() <= LOG_TAIL);
        assert!(s.attempts.len() <= MAX_ATTEMPT_RECORDS);
        match s.status {
            StepStatus::Running => {
                let last = s.attempts.last().expect("a running step has an attempt");
                assert_eq!(
                    (last.attempt, last.finished_at),
                    (s.attempt, None),
                    "{}",
                    s.id
                );
            }
            StepStatus::Retrying => assert!(s.next_attempt_at.is_some()),
            StepStatus::Completed => {
                assert!(s.output.is_some());
                for up in spec.ancestors(&s.id) {
                    let up = after.step(&up).expect("ancestor exists");
                    assert!(
                        up.status.is_done(),
                        "{} completed before {} was done",
                        s.id,
                        up.id
                    );
                }
            }
            StepStatus::Skipped => assert!(s.output.is_some()),
            _ => {}
        }
    }
    for ready in after.ready_steps(DateTime::<Utc>::MAX_UTC) {
        assert!(
            after.render_task(&ready.id).is_ok(),
            "ready step {} cannot render",
            ready.id
        );
    }
    // Nothing in flight once the workflow has finished or waits for a person.
    if after.status.is_terminal() || after.status == WorkflowStatus::Paused {
        for s in &after.steps {
            assert!(
                !matches!(s.status, StepStatus::Running | StepStatus::Retrying),
                "{} workflow with step {} {} after {event:?}",
                after.status,
                s.id,
                s.status
            );
        }
    }
    // Outputs and tasks are previews, with the whole size beside them.
    for s in &after.steps {
        if let Some(o) = &s.output {
            assert!(o.len() <= OUTPUT_PREVIEW_BYTES);
            assert!(s.output_bytes.is_some_and(|n| n >= o.len() as u64));
        }
        if let Some(t) = &s.task {
            assert!(t.len() <= OUTPUT_PREVIEW_BYTES);
        }
    }
    let p = after.progress();
    assert!(p.done + p.running + p.failed <= p.total);
    if after.status.is_terminal() || after.status == WorkflowStatus::Stalled {
        assert!(after.ready_steps(DateTime::<Utc>::MAX_UTC).is_empty());
    }
}

/// Runs the simulation; returns the log and the state after each prefix of it.
fn simulate(
    spec: &ValidSpec,
    choices: &[u16],
    randoms: &[Event],
) -> (Vec<EventRecord>, Vec<WorkflowState>) {
    let mut state = WorkflowState::new(WF);
    let mut states = vec![state.clone()];
    let mut log = Vec::new();
    let mut now = t0();
    let created = EventRecord::new(
        1,
        WF,
        now,
        Event::WorkflowCreated {
            spec: spec.clone(),
            by: None,
            workspace: None,
        },
    );
    state.apply(&created).expect("created applies");
    log.push(created);
    states.push(state.clone());
    for (k, &choice) in choices.iter().enumerate() {
        now += Duration::seconds(i64::from(choice % 4));
        let id = log.len() as i64 + 1;
        let (event, must_apply) = if choice % 7 == 0 && !randoms.is_empty() {
            (randoms[k % randoms.len()].clone(), false)
        } else {
            let options = candidates(&state, now, choice);
            if options.is_empty() {
                continue;
            }
            (options[usize::from(choice) % options.len()].clone(), true)
        };
        let rec = EventRecord::new(id, WF, now, event);
        let before = state.clone();
        match state.apply(&rec) {
            Ok(()) => {
                check_invariants(&before, &state, &rec.event);
                log.push(rec);
                states.push(state.clone());
            }
            Err(e) => {
                assert!(
                    !must_apply,
                    "a valid event was refused: {e}\nstate: {before:#?}"
                );
                assert_eq!(state, before, "a refused event changed the state");
            }
        }
    }
    (log, states)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn folding_any_prefix_of_a_valid_history_gives_the_state_at_that_point(
        spec in arb_dag(),
        choices in prop::collection::vec(any::<u16>(), 1..80),
        randoms in prop::collection::vec(arb_event(), 0..8),
    ) {
        let (log, states) = simulate(&spec, &choices, &randoms);
        for k in 0..=log.len() {
            let replayed = WorkflowState::from_events(WF, &log[..k]);
            prop_assert_eq!(replayed.as_ref(), Ok(&states[k]));
        }
        for state in &states {
            let text = serde_json::to_string(state).expect("serializes");
            let back: WorkflowState = serde_json::from_str(&text).expect("deserializes");
            prop_assert_eq!(&back, state);
        }
        // The log itself survives the wire.
        let text = serde_json::to_string(&log).expect("serializes");
        prop_assert_eq!(serde_json::from_str::<Vec<EventRecord>>(&text).expect("deserializes"), log);
    }

    #[test]
    fn any_event_applied_to_any_reachable_state_never_panics(
        spec in arb_dag(),
        choices in prop::collection::vec(any::<u16>(), 0..60),
        events in prop::collection::vec(arb_event(), 1..20),
        wrong_ids in any::<bool>(),
    ) {
        let (_, states) = simulate(&spec, &choices, &[]);
        for (k, event) in events.into_iter().enumerate() {
            let mut state = states[k % states.len()].clone();
            let before = state.clone();
            let id = if wrong_ids { before.last_event_id } else { before.last_event_id + 1 };
            let rec = EventRecord::new(id, WF, t0(), event);
            match state.apply(&rec) {
                Ok(()) if before.spec.is_some() => check_invariants(&before, &state, &rec.event),
                Ok(()) => {}
                Err(_) => prop_assert_eq!(&state, &before),
            }
        }
    }

    #[test]
    fn a_stall_and_resume_at_any_point_keeps_completed_work_and_sessions(
        spec in arb_dag(),
        choices in prop::collection::vec(any::<u16>(), 1..80),
    ) {
        let (_, states) = simulate(&spec, &choices, &[]);
        for before in states.iter().filter(|s| s.status == WorkflowStatus::Running) {
            let mut state = before.clone();
            let at = t0() + Duration::days(1);
            let id = before.last_event_id;
            let stall = Event::WorkflowStalled { reason: "lease expired".into(), previous_owner: None };
            state.apply(&EventRecord::new(id + 1, WF, at, stall)).expect("stall applies");
            state.apply(&EventRecord::new(id + 2, WF, at, Event::WorkflowResumed { by: None }))
                .expect("resume applies");
            prop_assert_eq!(state.status, WorkflowStatus::Running);
            for (b, a) in before.steps.iter().zip(&state.steps) {
                prop_assert_eq!(&a.session_id, &b.session_id);
                match b.status {
                    StepStatus::Completed | StepStatus::Skipped | StepStatus::Retrying
                    | StepStatus::Pending => {
                        prop_assert_eq!(a.status, b.status);
                        prop_assert_eq!(&a.output, &b.output);
                    }
                    // The interrupted attempt runs again under the same number.
                    StepStatus::Running => {
                        prop_assert_eq!(a.status, StepStatus::Pending);
                        prop_assert_eq!(a.attempt + 1, b.attempt);
                    }
                    StepStatus::Failed | StepStatus::Cancelled => {
                        prop_assert_eq!((a.status, a.attempt), (StepStatus::Pending, 0));
                    }
                }
            }
        }
    }
}
