//! The events of a workflow's log and their wire shape.
//!
//! Every state change is one of these, appended to the log; state is the fold of the log
//! (see [`crate::WorkflowState::apply`]). The same JSON travels to the database, over SSE and
//! through the history endpoint:
//!
//! ```json
//! {"id":42,"workflow_id":"wf_1","at":"2026-01-02T03:04:05Z","type":"step.completed",
//!  "step_id":"design","attempt":1,"output":"...","session_id":null,"duration_ms":812}
//! ```
//!
//! Optional fields may be omitted on input (absent means `None`); they are written as `null`.
//! Fields may come in any order, and fields an event does not have are ignored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{spec::ValidSpec, wire::Fields};

/// One entry of the event log: an [`Event`] with its position and time.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct EventRecord {
    /// The event's id in the workspace's log, increasing. `0` means "not stored yet": the fold
    /// accepts it without moving [`crate::WorkflowState::last_event_id`].
    pub id: i64,
    /// The workflow it belongs to.
    pub workflow_id: String,
    /// When it happened (the engine's clock).
    pub at: DateTime<Utc>,
    /// What happened; its fields sit next to the ones above on the wire.
    #[serde(flatten)]
    pub event: Event,
}

impl EventRecord {
    /// Bundles an event with its id, workflow and time.
    pub fn new(id: i64, workflow_id: impl Into<String>, at: DateTime<Utc>, event: Event) -> Self {
        EventRecord {
            id,
            workflow_id: workflow_id.into(),
            at,
            event,
        }
    }
}

/// Which output stream a log line came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Something that happened to a workflow. The `type` tag on the wire is the dotted name
/// ([`Event::type_name`]).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type")]
pub enum Event {
    /// The workflow exists, with this spec. Always the first event.
    #[serde(rename = "workflow.created")]
    WorkflowCreated {
        /// The parsed spec.
        spec: ValidSpec,
        /// Who submitted it.
        by: Option<String>,
        /// The workspace it belongs to; absent for [`crate::DEFAULT_WORKSPACE`].
        #[serde(skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
    },
    /// The engine started running it.
    #[serde(rename = "workflow.started")]
    WorkflowStarted {},
    /// An attempt of a step started.
    #[serde(rename = "step.started")]
    StepStarted {
        /// The step.
        step_id: String,
        /// Attempt number, from 1 within the current run of the step.
        attempt: u32,
        /// The rendered task; once stored, its first [`crate::OUTPUT_PREVIEW_BYTES`] (the
        /// task is rendered again from the stored outputs whenever the step runs).
        task: String,
        /// The whole task's size in bytes when `task` was cut; `None` when `task` is whole.
        task_bytes: Option<u64>,
        /// The agent session this attempt continues (carried over from an earlier attempt).
        session_id: Option<String>,
    },
    /// A line of a running attempt's output.
    #[serde(rename = "step.log")]
    StepLog {
        /// The step.
        step_id: String,
        /// The attempt that printed it.
        attempt: u32,
        /// stdout or stderr.
        stream: LogStream,
        /// The line, without its newline.
        line: String,
    },
    /// A step will run again after a wait: automatically after a failed attempt (`by` is
    /// `None`), or because someone asked ("retry step" / "retry now", `by` is who).
    #[serde(rename = "step.retrying")]
    StepRetrying {
        /// The step.
        step_id: String,
        /// The attempt that failed, or the current count for a manual retry.
        attempt: u32,
        /// Why the attempt failed.
        error: Option<String>,
        /// The wait chosen.
        delay_ms: u64,
        /// When the next attempt may start.
        next_attempt_at: DateTime<Utc>,
        /// Who asked, for a manual retry.
        by: Option<String>,
    },
    /// An attempt succeeded: the step is done.
    #[serde(rename = "step.completed")]
    StepCompleted {
        /// The step.
        step_id: String,
        /// The attempt that succeeded.
        attempt: u32,
        /// What downstream templates read as `{STEP.output}`; once stored, its first
        /// [`crate::OUTPUT_PREVIEW_BYTES`] (the whole output is stored once, beside the log).
        output: String,
        /// The whole output's size in bytes when `output` was cut; `None` when it is whole.
        output_bytes: Option<u64>,
        /// The agent session the attempt ran in, if the runner reported one.
        session_id: Option<String>,
        /// How long the attempt took.
        duration_ms: u64,
    },
    /// The step failed for good (retries exhausted, or a final error).
    #[serde(rename = "step.failed")]
    StepFailed {
        /// The step.
        step_id: String,
        /// The last attempt.
        attempt: u32,
        /// Why.
        error: String,
        /// How long the last attempt took.
        duration_ms: u64,
    },
    /// Someone skipped a step; downstream steps read `output` (or "") as its output.
    #[serde(rename = "step.skipped")]
    StepSkipped {
        /// The step.
        step_id: String,
        /// The output to pretend it produced (a preview once stored, as for `step.completed`).
        output: Option<String>,
        /// The whole output's size in bytes when `output` was cut; `None` when it is whole.
        output_bytes: Option<u64>,
        /// Who skipped it.
        by: Option<String>,
    },
    /// Every step is done.
    #[serde(rename = "workflow.completed")]
    WorkflowCompleted {},
    /// The workflow failed.
    #[serde(rename = "workflow.failed")]
    WorkflowFailed {
        /// The step whose failure failed it, if one did.
        step_id: Option<String>,
        /// Why.
        error: String,
    },
    /// Someone cancelled the workflow; running attempts are killed.
    #[serde(rename = "workflow.cancelled")]
    WorkflowCancelled {
        /// Who.
        by: Option<String>,
        /// Why, if they said.
        reason: Option<String>,
    },
    /// The engine that owned the workflow lost it (process died, lease expired).
    #[serde(rename = "workflow.stalled")]
    WorkflowStalled {
        /// What was noticed.
        reason: String,
        /// The engine instance that held the lease.
        previous_owner: Option<String>,
    },
    /// The workflow runs again (after a stall, a failure, a cancel or a pause).
    #[serde(rename = "workflow.resumed")]
    WorkflowResumed {
        /// Who asked (`None` for an automatic takeover).
        by: Option<String>,
    },
}

impl Event {
    /// Every dotted type name, in the order of the enum.
    pub const TYPE_NAMES: [&'static str; 13] = [
        "workflow.created",
        "workflow.started",
        "step.started",
        "step.log",
        "step.retrying",
        "step.completed",
        "step.failed",
        "step.skipped",
        "workflow.completed",
        "workflow.failed",
        "workflow.cancelled",
        "workflow.stalled",
        "workflow.resumed",
    ];

    /// The dotted type name, as in the `type` field and the SSE `event:` line.
    pub fn type_name(&self) -> &'static str {
        let i = match self {
            Event::WorkflowCreated { .. } => 0,
            Event::WorkflowStarted {} => 1,
            Event::StepStarted { .. } => 2,
            Event::StepLog { .. } => 3,
            Event::StepRetrying { .. } => 4,
            Event::StepCompleted { .. } => 5,
            Event::StepFailed { .. } => 6,
            Event::StepSkipped { .. } => 7,
            Event::WorkflowCompleted {} => 8,
            Event::WorkflowFailed { .. } => 9,
            Event::WorkflowCancelled { .. } => 10,
            Event::WorkflowStalled { .. } => 11,
            Event::WorkflowResumed { .. } => 12,
        };
        Self::TYPE_NAMES[i]
    }

    /// The step the event is about, for step events (and a `workflow.failed` that names one).
    pub fn step_id(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step_id, .. }
            | Event::StepLog { step_id, .. }
            | Event::StepRetrying { step_id, .. }
            | Event::StepCompleted { step_id, .. }
            | Event::StepFailed { step_id, .. }
            | Event::StepSkipped { step_id, .. } => Some(step_id),
            Event::WorkflowFailed { step_id, .. } => step_id.as_deref(),
            _ => None,
        }
    }
}

impl Event {
    /// Cuts the texts an event may carry in full (a step's output, a rendered task) to their
    /// previews, recording the whole sizes, and returns the whole output if it was cut: the
    /// store keeps it once, beside the log, instead of in the event. A rendered task is not
    /// kept (it is rendered again from the inputs and stored outputs when the step runs).
    pub fn cut_to_preview(&mut self) -> Option<String> {
        match self {
            Event::StepStarted {
                task, task_bytes, ..
            } => {
                if task.len() > crate::OUTPUT_PREVIEW_BYTES {
                    task_bytes.get_or_insert(task.len() as u64);
                    let cut = crate::preview(task).len();
                    task.truncate(cut);
                    task.shrink_to_fit();
                }
                None
            }
            Event::StepCompleted {
                output,
                output_bytes,
                ..
            }
            | Event::StepSkipped {
                output: Some(output),
                output_bytes,
                ..
            } => {
                if output.len() <= crate::OUTPUT_PREVIEW_BYTES {
                    return None;
                }
                output_bytes.get_or_insert(output.len() as u64);
                let whole = std::mem::take(output);
                *output = crate::preview(&whole).to_string();
                Some(whole)
            }
            _ => None,
        }
    }
}

// Reading events.
//
// Serde's derived reader for this shape (an internally tagged enum, flattened into the record)
// buffers each object into an intermediate tree and compiles a second reader for every variant
// on top of it: that was the largest single piece of the browser's WASM. Reading the object
// once into JSON values and taking each field by name does the same job with a fraction of
// the code, and the rules stay those of the derive: absent or `null` optional fields are
// `None`, unknown fields are ignored.

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Fields::read(deserializer, Event::from_fields)
    }
}

impl<'de> Deserialize<'de> for EventRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Fields::read(deserializer, EventRecord::from_fields)
    }
}

impl EventRecord {
    fn from_fields(f: &mut Fields) -> Result<EventRecord, String> {
        Ok(EventRecord {
            id: f.required("id")?,
            workflow_id: f.required("workflow_id")?,
            at: f.time("at")?,
            event: Event::from_fields(f)?,
        })
    }
}

impl Event {
    /// The event an object's fields describe, by its `type`.
    fn from_fields(f: &mut Fields) -> Result<Event, String> {
        let ty: String = f.required("type")?;
        Ok(match ty.as_str() {
            "workflow.created" => Event::WorkflowCreated {
                spec: f.required("spec")?,
                by: f.optional("by")?,
                workspace: f.optional("workspace")?,
            },
            "workflow.started" => Event::WorkflowStarted {},
            "step.started" => Event::StepStarted {
                step_id: f.required("step_id")?,
                attempt: f.required("attempt")?,
                task: f.required("task")?,
                task_bytes: f.optional("task_bytes")?,
                session_id: f.optional("session_id")?,
            },
            "step.log" => Event::StepLog {
                step_id: f.required("step_id")?,
                attempt: f.required("attempt")?,
                stream: f.required("stream")?,
                line: f.required("line")?,
            },
            "step.retrying" => Event::StepRetrying {
                step_id: f.required("step_id")?,
                attempt: f.required("attempt")?,
                error: f.optional("error")?,
                delay_ms: f.required("delay_ms")?,
                next_attempt_at: f.time("next_attempt_at")?,
                by: f.optional("by")?,
            },
            "step.completed" => Event::StepCompleted {
                step_id: f.required("step_id")?,
                attempt: f.required("attempt")?,
                output: f.required("output")?,
                output_bytes: f.optional("output_bytes")?,
                session_id: f.optional("session_id")?,
                duration_ms: f.required("duration_ms")?,
            },
            "step.failed" => Event::StepFailed {
                step_id: f.required("step_id")?,
                attempt: f.required("attempt")?,
                error: f.required("error")?,
                duration_ms: f.required("duration_ms")?,
            },
            "step.skipped" => Event::StepSkipped {
                step_id: f.required("step_id")?,
                output: f.optional("output")?,
                output_bytes: f.optional("output_bytes")?,
                by: f.optional("by")?,
            },
            "workflow.completed" => Event::WorkflowCompleted {},
            "workflow.failed" => Event::WorkflowFailed {
                step_id: f.optional("step_id")?,
                error: f.required("error")?,
            },
            "workflow.cancelled" => Event::WorkflowCancelled {
                by: f.optional("by")?,
                reason: f.optional("reason")?,
            },
            "workflow.stalled" => Event::WorkflowStalled {
                reason: f.required("reason")?,
                previous_owner: f.optional("previous_owner")?,
            },
            "workflow.resumed" => Event::WorkflowResumed {
                by: f.optional("by")?,
            },
            other => return Err(format!("unknown event type `{other}`")),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::spec::{ParseOptions, parse_spec};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn spec() -> ValidSpec {
        parse_spec(
            r#"{"name":"n","inputs":{"x":"1"},"steps":[{"id":"a","role":"r","task":"do {inputs.x}","params":{"k":[1.5,null]}}]}"#,
            &ParseOptions::default(),
        )
        .unwrap()
    }

    fn every_event() -> Vec<Event> {
        let t = at("2026-03-04T05:06:07.250Z");
        let s = || "a".to_string();
        vec![
            Event::WorkflowCreated {
                spec: spec(),
                by: Some("ann".into()),
                workspace: Some("team-a".into()),
            },
            Event::WorkflowStarted {},
            Event::StepStarted {
                step_id: s(),
                attempt: 1,
                task: "do 1".into(),
                session_id: None,
                task_bytes: None,
            },
            Event::StepLog {
                step_id: s(),
                attempt: 1,
                stream: LogStream::Stderr,
                line: "hi".into(),
            },
            Event::StepRetrying {
                step_id: s(),
                attempt: 1,
                error: Some("boom".into()),
                delay_ms: 1000,
                next_attempt_at: t,
                by: None,
            },
            Event::StepCompleted {
                step_id: s(),
                attempt: 2,
                output: "ok".into(),
                session_id: Some("sess".into()),
                duration_ms: 5,
                output_bytes: None,
            },
            Event::StepFailed {
                step_id: s(),
                attempt: 2,
                error: "bad".into(),
                duration_ms: 5,
            },
            Event::StepSkipped {
                step_id: s(),
                output: None,
                by: Some("bob".into()),
                output_bytes: None,
            },
            Event::WorkflowCompleted {},
            Event::WorkflowFailed {
                step_id: Some(s()),
                error: "bad".into(),
            },
            Event::WorkflowCancelled {
                by: None,
                reason: Some("enough".into()),
            },
            Event::WorkflowStalled {
                reason: "lease expired".into(),
                previous_owner: Some("i-1".into()),
            },
            Event::WorkflowResumed { by: None },
        ]
    }

    #[test]
    fn every_event_round_trips_through_json_inside_a_record() {
        for (i, event) in every_event().into_iter().enumerate() {
            let rec = EventRecord::new(i as i64 + 1, "wf_1", at("2026-01-02T03:04:05Z"), event);
            let text = serde_json::to_string(&rec).unwrap();
            let back: EventRecord = serde_json::from_str(&text).unwrap();
            assert_eq!(back, rec, "{text}");
        }
    }

    #[test]
    fn the_wire_shape_is_flat_with_a_dotted_type() {
        let rec = EventRecord::new(
            42,
            "wf_1",
            at("2026-01-02T03:04:05Z"),
            Event::StepCompleted {
                step_id: "design".into(),
                attempt: 1,
                output: "plan".into(),
                session_id: None,
                duration_ms: 812,
                output_bytes: None,
            },
        );
        assert_eq!(
            serde_json::to_value(&rec).unwrap(),
            json!({"id":42,"workflow_id":"wf_1","at":"2026-01-02T03:04:05Z","type":"step.completed",
                   "step_id":"design","attempt":1,"output":"plan","output_bytes":null,"session_id":null,
                   "duration_ms":812})
        );
    }

    #[test]
    fn absent_optional_fields_read_as_none() {
        let rec: EventRecord = serde_json::from_value(json!({
            "id": 3, "workflow_id": "w", "at": "2026-01-02T03:04:05+02:00",
            "type": "step.skipped", "step_id": "a"
        }))
        .unwrap();
        assert_eq!(
            rec.event,
            Event::StepSkipped {
                step_id: "a".into(),
                output: None,
                by: None,
                output_bytes: None,
            }
        );
        assert_eq!(rec.at, at("2026-01-02T01:04:05Z"));
        let rec: EventRecord = serde_json::from_value(json!({
            "id": 4, "workflow_id": "w", "at": "2026-01-02T03:04:05Z", "type": "workflow.started"
        }))
        .unwrap();
        assert_eq!(rec.event, Event::WorkflowStarted {});
    }

    #[test]
    fn unknown_types_and_wrong_fields_are_rejected() {
        for bad in [
            json!({"id":1,"workflow_id":"w","at":"2026-01-02T03:04:05Z","type":"step.exploded"}),
            json!({"id":1,"workflow_id":"w","at":"2026-01-02T03:04:05Z"}),
            json!({"id":1,"workflow_id":"w","at":"yesterday","type":"workflow.started"}),
            json!({"id":1,"workflow_id":"w","at":"2026-01-02T03:04:05Z","type":"step.log",
                   "step_id":"a","attempt":1,"stream":"STDOUT","line":"x"}),
            json!({"id":1,"workflow_id":"w","at":"2026-01-02T03:04:05Z","type":"step.started",
                   "step_id":"a","attempt":-1,"task":"x"}),
        ] {
            assert!(
                serde_json::from_value::<EventRecord>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn fields_may_come_in_any_order_and_unknown_ones_are_ignored() {
        let rec: EventRecord = serde_json::from_str(
            r#"{"attempt":2,"step_id":"a","session_id":null,"later":{"x":[1]},"output":"ok",
                "duration_ms":5,"type":"step.completed","at":"2026-01-02T03:04:05Z","id":7,
                "workflow_id":"w"}"#,
        )
        .unwrap();
        assert_eq!(rec.id, 7);
        assert_eq!(
            rec.event,
            Event::StepCompleted {
                step_id: "a".into(),
                attempt: 2,
                output: "ok".into(),
                session_id: None,
                duration_ms: 5,
                output_bytes: None,
            }
        );
    }

    #[test]
    fn a_bad_event_says_which_field_is_wrong() {
        let err =
            |v: serde_json::Value| serde_json::from_value::<Event>(v).unwrap_err().to_string();
        assert!(
            err(json!({"type": "step.teleported"}))
                .contains("unknown event type `step.teleported`")
        );
        assert!(
            err(json!({"type": "step.failed", "step_id": "a", "attempt": 1, "duration_ms": 3}))
                .contains("missing field `error`")
        );
        assert!(err(json!({"type": "step.log", "step_id": "a", "attempt": "one", "stream": "stdout", "line": ""}))
            .contains("field `attempt`"));
        assert!(err(json!(["step.log"])).contains("map"));
    }

    #[test]
    fn type_names_match_the_serde_tags() {
        for event in every_event() {
            let v = serde_json::to_value(&event).unwrap();
            assert_eq!(v["type"], event.type_name());
        }
        assert_eq!(every_event().len(), Event::TYPE_NAMES.len());
    }

    #[test]
    fn step_id_names_the_step_of_step_events_only() {
        let ids: Vec<_> = every_event()
            .iter()
            .map(|e| e.step_id().map(String::from))
            .collect();
        let some = |n: usize| ids.iter().filter(|i| i.is_some()).count() == n;
        assert!(some(7));
        assert_eq!(Event::WorkflowStarted {}.step_id(), None);
        assert_eq!(
            Event::WorkflowFailed {
                step_id: None,
                error: "e".into()
            }
            .step_id(),
            None
        );
    }

    #[test]
    fn cutting_to_a_preview_keeps_the_whole_output_once_and_the_sizes() {
        let big = "é".repeat(3000); // 6,000 bytes, two per character
        let mut e = Event::StepCompleted {
            step_id: "a".into(),
            attempt: 1,
            output: big.clone(),
            output_bytes: None,
            session_id: None,
            duration_ms: 1,
        };
        assert_eq!(e.cut_to_preview(), Some(big.clone()));
        let Event::StepCompleted {
            output,
            output_bytes,
            ..
        } = &e
        else {
            unreachable!()
        };
        assert_eq!(output.len(), crate::OUTPUT_PREVIEW_BYTES);
        assert!(big.starts_with(output.as_str()));
        assert_eq!(*output_bytes, Some(6000));
        assert_eq!(e.cut_to_preview(), None, "cutting twice changes nothing");

        let mut started = Event::StepStarted {
            step_id: "b".into(),
            attempt: 1,
            task: "x".repeat(10_000),
            task_bytes: None,
            session_id: None,
        };
        assert_eq!(started.cut_to_preview(), None);
        let Event::StepStarted {
            task, task_bytes, ..
        } = &started
        else {
            unreachable!()
        };
        assert_eq!(
            (task.len(), *task_bytes),
            (crate::OUTPUT_PREVIEW_BYTES, Some(10_000))
        );

        let mut small = Event::StepSkipped {
            step_id: "c".into(),
            output: Some("by hand".into()),
            output_bytes: None,
            by: None,
        };
        assert_eq!(small.cut_to_preview(), None);
        assert!(matches!(
            small,
            Event::StepSkipped {
                output_bytes: None,
                ..
            }
        ));
    }

    #[test]
    fn log_streams_are_lowercase_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&LogStream::Stdout).unwrap(),
            "\"stdout\""
        );
        assert_eq!(LogStream::Stderr.as_str(), "stderr");
    }
}
