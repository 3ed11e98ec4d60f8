//! A workflow's state, as the fold of its events, and the questions a scheduler or a UI asks
//! of it.
//!
//! [`WorkflowState::apply`] (in `apply.rs`) is the only code that says what an event does.
//! Everything here is derived from the state and never changes it; time is passed in.

mod apply;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{EventRecord, LogStream};
use crate::spec::{StepDef, ValidSpec};
use crate::template::{TemplateContext, TemplateError};

/// How many log lines a step keeps (the newest).
pub const LOG_TAIL: usize = 200;
/// Longest log line kept, in bytes; longer lines are cut (at a character boundary) and end
/// with "…". A runner printing a megabyte without a newline must not bloat every snapshot.
pub const LOG_LINE_MAX_BYTES: usize = 8 * 1024;
/// How much of a step's output (and of its rendered task) the state, the events and the
/// browser carry: the first this many bytes, cut at a character boundary. The whole output is
/// stored once beside the log and served by its own URL; the server renders templates from it.
pub const OUTPUT_PREVIEW_BYTES: usize = 4096;
/// How many attempt records a step keeps (the newest); manual retries could otherwise grow
/// the history without bound.
pub const MAX_ATTEMPT_RECORDS: usize = 100;

/// Where a workflow is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Created, not started yet.
    #[default]
    Pending,
    /// The engine is running it.
    Running,
    /// A step failed with `on_exhausted: pause`: waiting for a person.
    Paused,
    /// Every step is done.
    Completed,
    /// A step failed for good.
    Failed,
    /// Someone cancelled it.
    Cancelled,
    /// Its engine was lost; another one will take it over (`workflow.resumed`).
    Stalled,
}

impl WorkflowStatus {
    /// Completed, failed or cancelled: nothing more happens unless a person acts.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The wire name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Stalled => "stalled",
        }
    }
}

impl std::fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its deps, or for the engine to start it.
    #[default]
    Pending,
    /// An attempt is running.
    Running,
    /// An attempt failed; another starts at `next_attempt_at`.
    Retrying,
    /// Done, with an output.
    Completed,
    /// Failed for good.
    Failed,
    /// Skipped by a person; counts as done, its output is what they gave (or "").
    Skipped,
    /// Cancelled with its workflow.
    Cancelled,
}

impl StepStatus {
    /// Completed or skipped: downstream steps may run.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Skipped)
    }

    /// The wire name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt of a step.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    /// Its number (the same number appears twice when an interrupted attempt was re-run).
    pub attempt: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, or "interrupted" / "cancelled" / "superseded ...".
    pub error: Option<String>,
    /// How long it ran.
    pub duration_ms: Option<u64>,
}

/// One line of a step's log tail.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LogLine {
    /// The attempt that printed it.
    pub attempt: u32,
    /// stdout or stderr.
    pub stream: LogStream,
    /// The text (cut at [`LOG_LINE_MAX_BYTES`]).
    pub line: String,
    /// When the engine saw it.
    pub at: DateTime<Utc>,
}

/// A step's state.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct StepState {
    /// The step's id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// The steps it waits for.
    pub deps: Vec<String>,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts started so far in the current run of the step (a manual retry or a resume
    /// of a failed step starts a new run from 0).
    pub attempt: u32,
    /// Its retry budget.
    pub max_attempts: u32,
    /// The task as last rendered: its first [`OUTPUT_PREVIEW_BYTES`].
    pub task: Option<String>,
    /// The whole rendered task's size in bytes (more than `task` holds when it was cut).
    pub task_bytes: Option<u64>,
    /// The agent session the step runs in, carried from attempt to attempt.
    pub session_id: Option<String>,
    /// What it produced (completed), or what a person gave (skipped): the first
    /// [`OUTPUT_PREVIEW_BYTES`] of it.
    pub output: Option<String>,
    /// The whole output's size in bytes (more than `output` holds when it was cut).
    pub output_bytes: Option<u64>,
    /// Why its last attempt failed.
    pub error: Option<String>,
    /// When its current (or last) attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished (completed, failed, skipped, cancelled).
    pub finished_at: Option<DateTime<Utc>>,
    /// How long its finishing attempt ran.
    pub duration_ms: Option<u64>,
    /// When a retrying step may start its next attempt.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Its attempts, oldest first (the newest [`MAX_ATTEMPT_RECORDS`]).
    pub attempts: Vec<AttemptRecord>,
    /// The newest [`LOG_TAIL`] lines of output.
    pub logs: Vec<LogLine>,
}

impl StepState {
    fn pending(def: &StepDef) -> Self {
        StepState {
            id: def.id.clone(),
            role: def.role.clone(),
            deps: def.deps.clone(),
            status: StepStatus::Pending,
            attempt: 0,
            max_attempts: def.retry.max_attempts,
            task: None,
            task_bytes: None,
            session_id: None,
            output: None,
            output_bytes: None,
            error: None,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            next_attempt_at: None,
            attempts: Vec::new(),
            logs: Vec::new(),
        }
    }
}

/// How far a workflow has got.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// Steps completed or skipped.
    pub done: usize,
    /// All steps.
    pub total: usize,
    /// Steps with an attempt running.
    pub running: usize,
    /// Steps failed for good.
    pub failed: usize,
}

/// A workflow's state: the fold of its events.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct WorkflowState {
    /// The workflow's id.
    pub id: String,
    /// Its display name ("" before `workflow.created`).
    pub name: String,
    /// The workspace it belongs to: that of the token that started it
    /// ([`crate::DEFAULT_WORKSPACE`] on a server without tokens).
    pub workspace: String,
    /// Where it is.
    pub status: WorkflowStatus,
    /// Its spec (`None` before `workflow.created`). Shared: it never changes once created,
    /// and every copy of the state (the engine's working copy of each checkpoint, a
    /// snapshot) points at the same one instead of copying every step's definition.
    pub spec: Option<Arc<ValidSpec>>,
    /// Its inputs.
    pub inputs: BTreeMap<String, String>,
    /// Its steps, in spec order.
    pub steps: Vec<StepState>,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When it first started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its current terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, was cancelled (the reason given) or stalled.
    pub error: Option<String>,
    /// The id of the last event applied (0 = none).
    pub last_event_id: i64,
    /// When the last event applied happened.
    pub updated_at: Option<DateTime<Utc>>,
}

/// An event that does not fit the state it was applied to. The state is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {event_id} ({event_type}) does not apply: {reason}")]
pub struct ApplyError {
    /// The event's id.
    pub event_id: i64,
    /// The event's dotted type name.
    pub event_type: &'static str,
    /// Why, for a person (and for a 409's message).
    pub reason: String,
}

impl WorkflowState {
    /// The state of a workflow before any event: no spec, no steps, pending.
    pub fn new(id: impl Into<String>) -> Self {
        WorkflowState {
            id: id.into(),
            name: String::new(),
            workspace: crate::DEFAULT_WORKSPACE.to_string(),
            status: WorkflowStatus::Pending,
            spec: None,
            inputs: BTreeMap::new(),
            steps: Vec::new(),
            created_at: None,
            started_at: None,
            finished_at: None,
            error: None,
            last_event_id: 0,
            updated_at: None,
        }
    }

    /// Folds `events` (in log order) into a fresh state; stops at the first that does not
    /// apply.
    pub fn from_events<'a>(
        id: impl Into<String>,
        events: impl IntoIterator<Item = &'a EventRecord>,
    ) -> Result<Self, ApplyError> {
        let mut state = WorkflowState::new(id);
        for rec in events {
            state.apply(rec)?;
        }
        Ok(state)
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Whether every dep of `step` is settled (see `settled`); an unknown
    /// dep, only possible with a hand-made spec, never is.
    fn deps_done(&self, step: &StepState) -> bool {
        self.first_unsettled_dep(step).is_none()
    }

    /// The first dep of `step` that is not settled.
    fn first_unsettled_dep<'a>(&self, step: &'a StepState) -> Option<&'a str> {
        step.deps
            .iter()
            .find(|d| !self.step(d).is_some_and(|d| self.settled(d)))
            .map(String::as_str)
    }

    /// Whether `step` is done and so is everything upstream of it. A completed step's
    /// ancestors are always done (it could only start once they were, and retrying an
    /// ancestor resets it), so only skipped steps need a look upstream: skipping a step
    /// must not let its dependents jump ahead of its own deps, whose outputs their
    /// templates may read.
    fn settled(&self, step: &StepState) -> bool {
        let mut stack = vec![step];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(s) = stack.pop() {
            if !s.status.is_done() {
                return false;
            }
            if s.status == StepStatus::Skipped && seen.insert(s.id.as_str()) {
                for d in &s.deps {
                    match self.step(d) {
                        Some(d) => stack.push(d),
                        None => return false,
                    }
                }
            }
        }
        true
    }

    /// The steps the engine may start now: none unless the workflow is running; otherwise
    /// pending steps whose deps are done, and retrying steps whose wait is over.
    ///
    /// "Done" for a dep means completed, or skipped with its own deps done in turn: a
    /// skipped step stands in for its output, not for the steps before it.
    pub fn ready_steps(&self, now: DateTime<Utc>) -> Vec<&StepState> {
        if self.status != WorkflowStatus::Running {
            return Vec::new();
        }
        self.steps
            .iter()
            .filter(|s| match s.status {
                StepStatus::Pending => true,
                StepStatus::Retrying => s.next_attempt_at.is_none_or(|t| t <= now),
                _ => false,
            })
            .filter(|s| self.deps_done(s))
            .collect()
    }

    /// The earliest moment a retrying step becomes ready, while the workflow runs: when the
    /// scheduler should look again if nothing else happens.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        if self.status != WorkflowStatus::Running {
            return None;
        }
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Retrying)
            .filter_map(|s| s.next_attempt_at)
            .min()
    }

    /// Counts for a progress bar.
    pub fn progress(&self) -> Progress {
        let count = |f: fn(StepStatus) -> bool| self.steps.iter().filter(|s| f(s.status)).count();
        Progress {
            done: count(StepStatus::is_done),
            total: self.steps.len(),
            running: count(|s| s == StepStatus::Running),
            failed: count(|s| s == StepStatus::Failed),
        }
    }

    /// The steps in flight: running, or waiting to retry.
    pub fn current_steps(&self) -> Vec<&StepState> {
        self.steps
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Running | StepStatus::Retrying))
            .collect()
    }

    /// Whether every step is done (completed or skipped); false before `workflow.created`.
    pub fn is_finished(&self) -> bool {
        self.spec.is_some() && self.steps.iter().all(|s| s.status.is_done())
    }

    /// Whether a running workflow can no longer move by itself: nothing runs or waits to
    /// retry, no step is ready, and not every step is done. That happens when a step failed
    /// (or was cancelled) and a person retried another one: the engine should then fail the
    /// workflow again rather than wait forever.
    pub fn is_blocked(&self) -> bool {
        self.status == WorkflowStatus::Running
            && !self.is_finished()
            && self.steps.iter().all(|s| match s.status {
                StepStatus::Running | StepStatus::Retrying => false,
                StepStatus::Pending => !self.deps_done(s),
                _ => true,
            })
    }

    /// Renders a step's task from the inputs and its upstream steps' outputs and session ids.
    pub fn render_task(&self, step_id: &str) -> Result<String, TemplateError> {
        let def = self
            .spec
            .as_ref()
            .and_then(|spec| spec.step(step_id))
            .ok_or_else(|| TemplateError::UnknownStep(step_id.to_string()))?;
        def.template()?.render(self)
    }
}

impl StepState {
    /// Whether `output` is only the beginning of what the step produced: the rest is stored
    /// beside the log.
    pub fn output_is_cut(&self) -> bool {
        match (&self.output, self.output_bytes) {
            (Some(o), Some(n)) => n > o.len() as u64,
            _ => false,
        }
    }
}

/// The first [`OUTPUT_PREVIEW_BYTES`] of `text`, cut at a character boundary.
pub fn preview(text: &str) -> &str {
    if text.len() <= OUTPUT_PREVIEW_BYTES {
        return text;
    }
    let mut cut = OUTPUT_PREVIEW_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

impl TemplateContext for WorkflowState {
    fn input(&self, name: &str) -> Option<&str> {
        self.inputs.get(name).map(String::as_str)
    }

    fn step_output(&self, step: &str) -> Option<&str> {
        self.step(step).and_then(|s| s.output.as_deref())
    }

    fn step_session_id(&self, step: &str) -> Option<&str> {
        self.step(step).and_then(|s| s.session_id.as_deref())
    }
}
