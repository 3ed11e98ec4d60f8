//! The fold, scenario by scenario: a harness that drives a workflow through events, and the
//! scenarios split by theme.

mod controls;
mod guards;
mod lifecycle;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::*;
use crate::event::Event;
use crate::spec::{ParseOptions, parse_spec_value};

const WF: &str = "wf_1";

fn t0() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap_or_default()
}

/// Drives a workflow through events, one second apart, checking each one applies.
struct Harness {
    state: WorkflowState,
    log: Vec<EventRecord>,
    now: DateTime<Utc>,
}

impl Harness {
    fn new(spec: Value) -> Self {
        let spec = parse_spec_value(&spec, &ParseOptions::default()).expect("test spec parses");
        let mut h = Harness {
            state: WorkflowState::new(WF),
            log: Vec::new(),
            now: t0(),
        };
        h.ok(Event::WorkflowCreated {
            spec,
            by: Some("ann".into()),
            workspace: None,
        });
        h
    }

    fn started() -> Self {
        let mut h = Harness::new(chain());
        h.ok(Event::WorkflowStarted {});
        h
    }

    fn record(&mut self, event: Event) -> EventRecord {
        self.now += Duration::seconds(1);
        EventRecord::new(self.log.len() as i64 + 1, WF, self.now, event)
    }

    #[track_caller]
    fn ok(&mut self, event: Event) -> &mut Self {
        let rec = self.record(event);
        if let Err(e) = self.state.apply(&rec) {
            panic!("{e}");
        }
        self.log.push(rec);
        self
    }

    /// Applies an event that must be refused, and checks nothing changed.
    #[track_caller]
    fn refused(&mut self, event: Event) -> ApplyError {
        let rec = self.record(event);
        self.now -= Duration::seconds(1);
        let before = self.state.clone();
        let err = self
            .state
            .apply(&rec)
            .expect_err("the event should be refused");
        assert_eq!(self.state, before, "a refused event changed the state");
        err
    }

    fn step(&self, id: &str) -> &StepState {
        self.state.step(id).expect("step exists")
    }

    /// Starts `id` with the next attempt number and its rendered task.
    #[track_caller]
    fn start(&mut self, id: &str) -> &mut Self {
        let attempt = self.step(id).attempt + 1;
        let task = self.state.render_task(id).expect("task renders");
        self.ok(Event::StepStarted {
            step_id: id.into(),
            attempt,
            task,
            session_id: None,
            task_bytes: None,
        })
    }

    #[track_caller]
    fn complete(&mut self, id: &str, output: &str) -> &mut Self {
        let attempt = self.step(id).attempt;
        self.ok(Event::StepCompleted {
            step_id: id.into(),
            attempt,
            output: output.into(),
            session_id: Some(format!("sess-{id}")),
            duration_ms: 250,
            output_bytes: None,
        })
    }

    #[track_caller]
    fn run(&mut self, id: &str, output: &str) -> &mut Self {
        self.start(id).complete(id, output)
    }

    #[track_caller]
    fn fail_attempt(&mut self, id: &str, wait_s: i64) -> &mut Self {
        let attempt = self.step(id).attempt;
        // The event happens a second from now; the wait counts from then.
        let next = self.now + Duration::seconds(1 + wait_s);
        self.ok(retrying(id, attempt, next, None))
    }

    fn replayed(&self) -> WorkflowState {
        WorkflowState::from_events(WF, &self.log).expect("the log replays")
    }
}

fn retrying(id: &str, attempt: u32, next: DateTime<Utc>, by: Option<&str>) -> Event {
    Event::StepRetrying {
        step_id: id.into(),
        attempt,
        error: Some("boom".into()),
        delay_ms: 1000,
        next_attempt_at: next,
        by: by.map(String::from),
    }
}

fn failed(id: &str, attempt: u32) -> Event {
    Event::StepFailed {
        step_id: id.into(),
        attempt,
        error: "gave up".into(),
        duration_ms: 5,
    }
}

fn skipped(id: &str, output: Option<&str>) -> Event {
    Event::StepSkipped {
        step_id: id.into(),
        output: output.map(String::from),
        by: Some("bob".into()),
        output_bytes: None,
    }
}

/// design -> implement -> test.
fn chain() -> Value {
    json!({"name": "ship", "inputs": {"feature": "login"}, "steps": [
        {"id": "design", "role": "architect", "task": "Design {inputs.feature}"},
        {"id": "implement", "role": "developer", "task": "Build {design.output} ({design.session_id})",
         "deps": ["design"]},
        {"id": "test", "role": "tester", "task": "Test {implement.output}", "deps": ["implement"],
         "retry": {"max_attempts": 2}}
    ]})
}

fn statuses(state: &WorkflowState) -> Vec<StepStatus> {
    state.steps.iter().map(|s| s.status).collect()
}
