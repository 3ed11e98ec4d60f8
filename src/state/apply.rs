//! [`WorkflowState::apply`]: what each event does to a workflow. The only place that says so.
//!
//! Every handler checks everything first and only then mutates, so a rejected event leaves
//! the state exactly as it was; nothing here can panic (no indexing without a prior lookup,
//! no arithmetic that can overflow).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    ApplyError, AttemptRecord, LOG_LINE_MAX_BYTES, LOG_TAIL, LogLine, MAX_ATTEMPT_RECORDS,
    StepState, StepStatus, WorkflowState, WorkflowStatus, preview,
};
use crate::event::{Event, EventRecord};
use crate::spec::{OnExhausted, ValidSpec};

type Check<T = ()> = Result<T, String>;

impl WorkflowState {
    /// Applies one event. On an event that does not fit the current state it returns an
    /// [`ApplyError`] and leaves the state unchanged.
    ///
    /// Beyond the per-event rules (documented on each handler) two checks guard the log:
    /// the event must belong to this workflow, and an event with a non-zero id must come
    /// after `last_event_id` (so a replayed duplicate is refused rather than applied twice).
    /// Id 0 means "not stored yet" and is accepted without moving `last_event_id`.
    ///
    /// # Rules
    ///
    /// | event | applies when | does |
    /// |---|---|---|
    /// | `workflow.created` | first event; spec ids unique | steps built, all pending |
    /// | `workflow.started` | pending | running |
    /// | `step.started` | workflow running; step pending/retrying, deps done; attempt = count + 1 | step running, attempt record opened; `None` session id keeps the step's |
    /// | `step.log` | step running that attempt | line added to the tail |
    /// | `step.retrying`, `by: None` | step running that attempt | step retrying until `next_attempt_at`, attempt closed with the error |
    /// | `step.retrying`, `by: Some` | step retrying, workflow not terminal ("retry now") | `next_attempt_at` moved earlier |
    /// | ditto | step completed/failed/skipped/cancelled ("retry step") | step retrying with a fresh budget; its non-pending descendants pending; workflow running again, with its cancelled steps pending |
    /// | `step.completed` | step running that attempt | step completed; its output kept as a preview (first [`OUTPUT_PREVIEW_BYTES`](super::OUTPUT_PREVIEW_BYTES)) with its whole size |
    /// | `step.failed` | step running or retrying, that attempt | step failed; `on_exhausted: pause` pauses a running workflow and cancels the steps in flight |
    /// | `step.skipped` | step not completed nor running | step skipped, output as given or ""; paused workflow runs again, the steps the pause cancelled pending |
    /// | `workflow.completed` | running, every step done | completed |
    /// | `workflow.failed` | running, paused or stalled | failed; running and retrying steps cancelled (fail-fast) |
    /// | `workflow.cancelled` | not terminal | cancelled; pending/running/retrying steps cancelled |
    /// | `workflow.stalled` | running | stalled (running steps stay running: interrupted) |
    /// | `workflow.resumed` | stalled, failed, cancelled or paused | running; interrupted steps pending under the same attempt number and session; failed/cancelled steps pending with a fresh budget |
    ///
    /// A dep counts as done when it is completed, or skipped with its own deps done.
    pub fn apply(&mut self, rec: &EventRecord) -> Result<(), ApplyError> {
        self.try_apply(rec).map_err(|reason| ApplyError {
            event_id: rec.id,
            event_type: rec.event.type_name(),
            reason,
        })?;
        if rec.id != 0 {
            self.last_event_id = rec.id;
        }
        self.updated_at = Some(rec.at);
        Ok(())
    }

    fn try_apply(&mut self, rec: &EventRecord) -> Check {
        if rec.workflow_id != self.id {
            return Err(format!(
                "it belongs to workflow '{}', not '{}'",
                rec.workflow_id, self.id
            ));
        }
        if rec.id != 0 && rec.id <= self.last_event_id {
            return Err(format!(
                "it is not after the last applied event ({})",
                self.last_event_id
            ));
        }
        let at = rec.at;
        if let Event::WorkflowCreated {
            spec, workspace, ..
        } = &rec.event
        {
            return self.created(at, spec, workspace.as_deref());
        }
        if self.spec.is_none() {
            return Err("the workflow has not been created".into());
        }
        match &rec.event {
            Event::WorkflowCreated { .. } => Err("the workflow was already created".into()),
            Event::WorkflowStarted {} => self.started(at),
            Event::StepStarted {
                step_id,
                attempt,
                task,
                task_bytes,
                session_id,
            } => {
                let bytes = task_bytes.unwrap_or(task.len() as u64);
                self.step_started(at, step_id, *attempt, (task, bytes), session_id.as_deref())
            }
            Event::StepLog {
                step_id,
                attempt,
                stream,
                line,
            } => {
                let i = self.running_step(step_id, *attempt)?;
                push_log(
                    &mut self.steps[i],
                    LogLine {
                        attempt: *attempt,
                        stream: *stream,
                        line: clip_line(line),
                        at,
                    },
                );
                Ok(())
            }
            Event::StepRetrying {
                step_id,
                attempt,
                error,
                next_attempt_at,
                by,
                ..
            } => {
                let error = error.as_deref();
                match by {
                    None => {
                        self.retry_after_failure(at, step_id, *attempt, error, *next_attempt_at)
                    }
                    Some(_) => self.manual_retry(at, step_id, *next_attempt_at),
                }
            }
            Event::StepCompleted {
                step_id,
                attempt,
                output,
                output_bytes,
                session_id,
                duration_ms,
            } => {
                let i = self.running_step(step_id, *attempt)?;
                let s = &mut self.steps[i];
                close_attempt(s, at, None, Some(*duration_ms));
                s.status = StepStatus::Completed;
                s.output = Some(preview(output).to_string());
                s.output_bytes = Some(output_bytes.unwrap_or(output.len() as u64));
                if session_id.is_some() {
                    s.session_id.clone_from(session_id);
                }
                s.error = None;
                s.finished_at = Some(at);
                s.duration_ms = Some(*duration_ms);
                s.next_attempt_at = None;
                Ok(())
            }
            Event::StepFailed {
                step_id,
                attempt,
                error,
                duration_ms,
            } => self.step_failed(at, step_id, *attempt, error, *duration_ms),
            Event::StepSkipped {
                step_id,
                output,
                output_bytes,
                ..
            } => self.step_skipped(at, step_id, output.as_deref(), *output_bytes),
            Event::WorkflowCompleted {} => self.completed(at),
            Event::WorkflowFailed { step_id, error } => self.failed(at, step_id.as_deref(), error),
            Event::WorkflowCancelled { reason, .. } => self.cancelled(at, reason.as_deref()),
            Event::WorkflowStalled { reason, .. } => {
                self.require(&[WorkflowStatus::Running])?;
                // Running steps stay running: their attempts were interrupted, and resume
                // decides what to do with them.
                self.status = WorkflowStatus::Stalled;
                self.error = Some(reason.clone());
                Ok(())
            }
            Event::WorkflowResumed { .. } => self.resumed(at),
        }
    }

    /// `workflow.created`: only as the first event. Builds every step, pending.
    fn created(&mut self, at: DateTime<Utc>, spec: &ValidSpec, workspace: Option<&str>) -> Check {
        if self.spec.is_some() {
            return Err("the workflow was already created".into());
        }
        // Only parsing builds specs, but this one came over the wire: refuse ambiguity.
        let mut ids = std::collections::BTreeSet::new();
        if let Some(dup) = spec.steps.iter().find(|s| !ids.insert(s.id.as_str())) {
            return Err(format!("the spec has two steps with id '{}'", dup.id));
        }
        self.name = spec.name.clone();
        self.workspace = workspace.unwrap_or(crate::DEFAULT_WORKSPACE).to_string();
        self.inputs = spec.inputs.clone();
        self.steps = spec.steps.iter().map(StepState::pending).collect();
        self.spec = Some(Arc::new(spec.clone()));
        self.status = WorkflowStatus::Pending;
        self.created_at = Some(at);
        Ok(())
    }

    /// `workflow.started`: pending → running.
    fn started(&mut self, at: DateTime<Utc>) -> Check {
        self.require(&[WorkflowStatus::Pending])?;
        self.status = WorkflowStatus::Running;
        self.started_at = Some(at);
        Ok(())
    }

    /// `step.started`: the workflow runs, the step is pending or retrying with its deps
    /// done (a skipped dep counts once its own deps are done, as in
    /// [`WorkflowState::ready_steps`]), and the attempt is the next one. A `None` session id
    /// keeps the step's.
    fn step_started(
        &mut self,
        at: DateTime<Utc>,
        step_id: &str,
        attempt: u32,
        (task, task_bytes): (&str, u64),
        session_id: Option<&str>,
    ) -> Check {
        self.require(&[WorkflowStatus::Running])?;
        let i = self.find(step_id)?;
        let s = &self.steps[i];
        if !matches!(s.status, StepStatus::Pending | StepStatus::Retrying) {
            return Err(format!("step '{step_id}' is {}", s.status));
        }
        if let Some(dep) = self.first_unsettled_dep(s) {
            let upstream = if self.step(dep).is_some_and(|d| d.status.is_done()) {
                " (skipped, but a step before it is not done)"
            } else {
                ""
            };
            return Err(format!("step '{step_id}' waits for '{dep}'{upstream}"));
        }
        let expected = s
            .attempt
            .checked_add(1)
            .ok_or("the attempt counter is exhausted")?;
        if attempt != expected {
            return Err(format!(
                "step '{step_id}' expects attempt {expected}, not {attempt}"
            ));
        }
        let s = &mut self.steps[i];
        s.status = StepStatus::Running;
        s.attempt = attempt;
        s.task = Some(preview(task).to_string());
        s.task_bytes = Some(task_bytes);
        if let Some(id) = session_id {
            s.session_id = Some(id.to_string());
        }
        s.output = None;
        s.output_bytes = None;
        s.error = None;
        s.started_at = Some(at);
        s.finished_at = None;
        s.duration_ms = None;
        s.next_attempt_at = None;
        if s.attempts.len() >= MAX_ATTEMPT_RECORDS {
            s.attempts.remove(0);
        }
        s.attempts.push(AttemptRecord {
            attempt,
            started_at: at,
            finished_at: None,
            error: None,
            duration_ms: None,
        });
        Ok(())
    }

    /// Automatic `step.retrying`: the running attempt failed; wait until `next_attempt_at`.
    fn retry_after_failure(
        &mut self,
        at: DateTime<Utc>,
        step_id: &str,
        attempt: u32,
        error: Option<&str>,
        next_attempt_at: DateTime<Utc>,
    ) -> Check {
        let i = self.running_step(step_id, attempt)?;
        let s = &mut self.steps[i];
        close_attempt(s, at, error.map(String::from), None);
        s.status = StepStatus::Retrying;
        s.error = error.map(String::from);
        s.next_attempt_at = Some(next_attempt_at);
        Ok(())
    }

    /// Manual `step.retrying`. On a retrying step ("retry now") it only brings the next
    /// attempt forward. On a finished step ("retry step") the step runs again with a fresh
    /// budget, every descendant that is not pending goes back to pending (a running one is
    /// superseded: the engine kills it), and a failed, paused, cancelled or completed
    /// workflow runs again. Coming back from a cancel, the steps the cancel stopped are
    /// pending again too, or the workflow could never finish.
    fn manual_retry(
        &mut self,
        at: DateTime<Utc>,
        step_id: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Check {
        let i = self.find(step_id)?;
        match self.steps[i].status {
            StepStatus::Retrying => {
                if self.status.is_terminal() {
                    return Err(format!(
                        "the workflow is {}; resume it instead",
                        self.status
                    ));
                }
                let s = &mut self.steps[i];
                s.next_attempt_at = Some(
                    s.next_attempt_at
                        .map_or(next_attempt_at, |t| t.min(next_attempt_at)),
                );
                Ok(())
            }
            StepStatus::Failed
            | StepStatus::Completed
            | StepStatus::Skipped
            | StepStatus::Cancelled => {
                let descendants = self
                    .spec
                    .as_ref()
                    .map(|s| s.descendants(step_id))
                    .unwrap_or_default();
                // Coming back from a failure, a pause or a cancel, the steps that it stopped
                // are pending again too, or the workflow could never finish.
                let was_stopped = self.status != WorkflowStatus::Running;
                let superseded = format!("superseded: '{step_id}' is being retried");
                for s in &mut self.steps {
                    if s.id == step_id {
                        s.status = StepStatus::Retrying;
                        s.attempt = 0;
                        s.next_attempt_at = Some(next_attempt_at);
                        clear_result(s);
                    } else if (descendants.contains(&s.id) && s.status != StepStatus::Pending)
                        || (was_stopped && s.status == StepStatus::Cancelled)
                    {
                        reset_to_pending(s, at, &superseded);
                    }
                }
                if matches!(
                    self.status,
                    WorkflowStatus::Failed
                        | WorkflowStatus::Paused
                        | WorkflowStatus::Cancelled
                        | WorkflowStatus::Completed
                ) {
                    self.status = WorkflowStatus::Running;
                    self.error = None;
                    self.finished_at = None;
                }
                Ok(())
            }
            other => Err(format!(
                "step '{step_id}' is {other}; there is nothing to retry"
            )),
        }
    }

    /// `step.failed`: the running attempt (or a retrying step, when a person or the engine
    /// gives up on it) fails for good. With `on_exhausted: pause` a running workflow pauses.
    fn step_failed(
        &mut self,
        at: DateTime<Utc>,
        step_id: &str,
        attempt: u32,
        error: &str,
        duration_ms: u64,
    ) -> Check {
        let i = self.find(step_id)?;
        let s = &self.steps[i];
        if !matches!(s.status, StepStatus::Running | StepStatus::Retrying) {
            return Err(format!("step '{step_id}' is {}", s.status));
        }
        if attempt != s.attempt {
            return Err(format!(
                "step '{step_id}' is at attempt {}, not {attempt}",
                s.attempt
            ));
        }
        let pause = self
            .spec
            .as_ref()
            .and_then(|spec| spec.step(step_id))
            .is_some_and(|def| def.retry.on_exhausted == OnExhausted::Pause);
        let s = &mut self.steps[i];
        if s.status == StepStatus::Running {
            close_attempt(s, at, Some(error.to_string()), Some(duration_ms));
        }
        s.status = StepStatus::Failed;
        s.error = Some(error.to_string());
        s.finished_at = Some(at);
        s.duration_ms = Some(duration_ms);
        s.next_attempt_at = None;
        if pause && self.status == WorkflowStatus::Running {
            self.status = WorkflowStatus::Paused;
            self.stop_in_flight(
                at,
                &format!("cancelled: step '{step_id}' failed and the workflow paused"),
            );
        }
        Ok(())
    }

    /// `step.skipped`: any step that is not completed or running becomes skipped, with the
    /// given output or "" (downstream templates read it). A paused workflow runs again.
    fn step_skipped(
        &mut self,
        at: DateTime<Utc>,
        step_id: &str,
        output: Option<&str>,
        output_bytes: Option<u64>,
    ) -> Check {
        let i = self.find(step_id)?;
        let s = &mut self.steps[i];
        if matches!(s.status, StepStatus::Completed | StepStatus::Running) {
            return Err(format!("step '{step_id}' is {}", s.status));
        }
        let output = output.unwrap_or_default();
        s.status = StepStatus::Skipped;
        s.output = Some(preview(output).to_string());
        s.output_bytes = Some(output_bytes.unwrap_or(output.len() as u64));
        s.error = None;
        s.next_attempt_at = None;
        s.finished_at = Some(at);
        s.duration_ms = None;
        if self.status == WorkflowStatus::Paused {
            // The steps the pause stopped run again.
            for s in &mut self.steps {
                if s.status == StepStatus::Cancelled {
                    reset_to_pending(s, at, "");
                }
            }
            self.status = WorkflowStatus::Running;
        }
        Ok(())
    }

    /// `workflow.completed`: running, and every step done.
    fn completed(&mut self, at: DateTime<Utc>) -> Check {
        self.require(&[WorkflowStatus::Running])?;
        if let Some(s) = self.steps.iter().find(|s| !s.status.is_done()) {
            return Err(format!("step '{}' is {}", s.id, s.status));
        }
        self.status = WorkflowStatus::Completed;
        self.error = None;
        self.finished_at = Some(at);
        Ok(())
    }

    /// `workflow.failed`: from running, paused or stalled. Fail-fast: steps still running or
    /// waiting to retry in other branches are cancelled (their attempts are killed), so a
    /// finished workflow never has a step in flight; resume or a retry runs them again.
    fn failed(&mut self, at: DateTime<Utc>, step_id: Option<&str>, error: &str) -> Check {
        use WorkflowStatus::{Paused, Running, Stalled};
        self.require(&[Running, Paused, Stalled])?;
        if let Some(id) = step_id {
            self.find(id)?;
        }
        let why = match step_id {
            Some(id) => format!("cancelled: step '{id}' failed"),
            None => "cancelled: the workflow failed".to_string(),
        };
        self.stop_in_flight(at, &why);
        self.status = WorkflowStatus::Failed;
        self.error = Some(error.to_string());
        self.finished_at = Some(at);
        Ok(())
    }

    /// `workflow.cancelled`: from any status but a terminal one. Steps not yet done stop.
    fn cancelled(&mut self, at: DateTime<Utc>, reason: Option<&str>) -> Check {
        if self.status.is_terminal() {
            return Err(format!("the workflow is already {}", self.status));
        }
        for s in &mut self.steps {
            if matches!(
                s.status,
                StepStatus::Running | StepStatus::Retrying | StepStatus::Pending
            ) {
                if s.status == StepStatus::Running {
                    close_attempt(s, at, Some("cancelled".into()), None);
                    s.finished_at = Some(at);
                }
                s.status = StepStatus::Cancelled;
                s.next_attempt_at = None;
            }
        }
        self.status = WorkflowStatus::Cancelled;
        self.error = reason.map(String::from);
        self.finished_at = Some(at);
        Ok(())
    }

    /// `workflow.resumed`: from stalled, failed, cancelled or paused, back to running.
    /// Completed and skipped steps are kept. An interrupted (still running) attempt is
    /// re-run under the same number and session id: its counter goes back by one. Failed
    /// and cancelled steps get a fresh budget. Retrying steps keep waiting.
    fn resumed(&mut self, at: DateTime<Utc>) -> Check {
        use WorkflowStatus::{Cancelled, Failed, Paused, Stalled};
        self.require(&[Stalled, Failed, Cancelled, Paused])?;
        for s in &mut self.steps {
            match s.status {
                StepStatus::Running => {
                    close_attempt(s, at, Some("interrupted".into()), None);
                    s.status = StepStatus::Pending;
                    s.attempt = s.attempt.saturating_sub(1);
                }
                StepStatus::Failed | StepStatus::Cancelled => reset_to_pending(s, at, ""),
                _ => {}
            }
        }
        self.status = WorkflowStatus::Running;
        self.error = None;
        self.finished_at = None;
        Ok(())
    }

    /// Cancels every step that is running or waiting to retry, closing a running attempt
    /// with `why`.
    fn stop_in_flight(&mut self, at: DateTime<Utc>, why: &str) {
        for s in &mut self.steps {
            if matches!(s.status, StepStatus::Running | StepStatus::Retrying) {
                if s.status == StepStatus::Running {
                    close_attempt(s, at, Some(why.to_string()), None);
                }
                s.status = StepStatus::Cancelled;
                s.error = Some(why.to_string());
                s.finished_at = Some(at);
                s.next_attempt_at = None;
            }
        }
    }

    fn require(&self, allowed: &[WorkflowStatus]) -> Check {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(format!("the workflow is {}", self.status))
        }
    }

    fn find(&self, step_id: &str) -> Check<usize> {
        self.steps
            .iter()
            .position(|s| s.id == step_id)
            .ok_or_else(|| format!("unknown step '{step_id}'"))
    }

    /// The index of `step_id` if it is running `attempt`.
    fn running_step(&self, step_id: &str, attempt: u32) -> Check<usize> {
        let i = self.find(step_id)?;
        let s = &self.steps[i];
        if s.status != StepStatus::Running {
            return Err(format!(
                "step '{step_id}' is not running (it is {})",
                s.status
            ));
        }
        if s.attempt != attempt {
            return Err(format!(
                "step '{step_id}' is running attempt {}, not {attempt}",
                s.attempt
            ));
        }
        Ok(i)
    }
}

/// Back to pending with a fresh budget; a running attempt is closed with `why`.
fn reset_to_pending(s: &mut StepState, at: DateTime<Utc>, why: &str) {
    if s.status == StepStatus::Running {
        close_attempt(s, at, Some(why.to_string()), None);
    }
    s.status = StepStatus::Pending;
    s.attempt = 0;
    s.next_attempt_at = None;
    clear_result(s);
}

/// Forgets the outcome of the step's last run (its session id is kept on purpose: the next
/// run continues the same agent session).
fn clear_result(s: &mut StepState) {
    s.output = None;
    s.output_bytes = None;
    s.error = None;
    s.finished_at = None;
    s.duration_ms = None;
}

/// Closes the open record of the step's current attempt, if there is one.
fn close_attempt(
    s: &mut StepState,
    at: DateTime<Utc>,
    error: Option<String>,
    duration: Option<u64>,
) {
    let current = s.attempt;
    if let Some(r) = s
        .attempts
        .iter_mut()
        .rev()
        .find(|r| r.attempt == current && r.finished_at.is_none())
    {
        // A negative span (clocks disagreeing across engines) counts as zero.
        let measured = u64::try_from((at - r.started_at).num_milliseconds()).unwrap_or(0);
        r.finished_at = Some(at);
        r.error = error;
        r.duration_ms = Some(duration.unwrap_or(measured));
    }
}

fn push_log(s: &mut StepState, line: LogLine) {
    if s.logs.len() >= LOG_TAIL {
        let excess = s.logs.len() + 1 - LOG_TAIL;
        s.logs.drain(..excess);
    }
    s.logs.push(line);
}

/// Cuts a line to [`LOG_LINE_MAX_BYTES`] at a character boundary.
fn clip_line(line: &str) -> String {
    if line.len() <= LOG_LINE_MAX_BYTES {
        return line.to_string();
    }
    let mut cut = LOG_LINE_MAX_BYTES;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}
