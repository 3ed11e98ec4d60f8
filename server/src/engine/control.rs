//! Manual controls: resume, cancel, retry a step, retry now, skip a step.
//!
//! Each becomes one event recorded with who asked. Whether it is allowed is the fold's call
//! (the event must apply to the committed state); the checks here only turn the common
//! refusals into messages a person understands.

use cairn::{Event, StepStatus, WorkflowState, WorkflowStatus};
use chrono::{DateTime, SubsecRound, Utc};

use super::{Command, Engine};
use crate::store::{Change, Outcome, Rejection, Stamped};

/// A manual control.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Continue a failed, cancelled, stalled or paused workflow from its incomplete steps.
    Resume,
    /// Stop the workflow; running attempts are killed.
    Cancel {
        /// Why, for the record.
        reason: Option<String>,
    },
    /// Run a step again (and everything downstream of it).
    RetryStep {
        /// The step.
        step_id: String,
    },
    /// Skip the backoff wait of a step that is waiting to retry.
    RetryNow {
        /// The step.
        step_id: String,
    },
    /// Mark a step done without running it, optionally giving its output.
    Skip {
        /// The step.
        step_id: String,
        /// What `{STEP.output}` renders to downstream (default "").
        output: Option<String>,
    },
}

/// Why a control was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such workflow or step.
    #[error("{0}")]
    NotFound(String),
    /// The current state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The engine is shutting down.
    #[error("the engine is not running")]
    Unavailable,
    /// A store failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The event a control becomes on `state`, or why it cannot.
pub fn event_for(
    state: &WorkflowState,
    control: &Control,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Event, ControlError> {
    let by = Some(by.to_string());
    let status = state.status;
    let step = |id: &str| {
        state
            .step(id)
            .ok_or_else(|| ControlError::NotFound(format!("workflow has no step '{id}'")))
    };
    match control {
        Control::Resume => match status {
            WorkflowStatus::Failed
            | WorkflowStatus::Cancelled
            | WorkflowStatus::Stalled
            | WorkflowStatus::Paused => Ok(Event::WorkflowResumed { by }),
            _ => Err(ControlError::Conflict(format!(
                "the workflow is {}; only a failed, cancelled, stalled or paused workflow can be resumed",
                status.as_str()
            ))),
        },
        Control::Cancel { reason } => {
            if status.is_terminal() {
                return Err(ControlError::Conflict(format!(
                    "the workflow is already {}",
                    status.as_str()
                )));
            }
            Ok(Event::WorkflowCancelled {
                by,
                reason: reason.clone(),
            })
        }
        Control::RetryStep { step_id } => {
            let s = step(step_id)?;
            match s.status {
                StepStatus::Running => Err(ControlError::Conflict(format!(
                    "step '{step_id}' is running"
                ))),
                StepStatus::Pending => Err(ControlError::Conflict(format!(
                    "step '{step_id}' has not run yet"
                ))),
                _ => Ok(Event::StepRetrying {
                    step_id: step_id.clone(),
                    attempt: s.attempt,
                    error: None,
                    delay_ms: 0,
                    next_attempt_at: now,
                    by,
                }),
            }
        }
        Control::RetryNow { step_id } => {
            let s = step(step_id)?;
            if s.status != StepStatus::Retrying {
                return Err(ControlError::Conflict(format!(
                    "step '{step_id}' is {}, not waiting to retry",
                    s.status.as_str()
                )));
            }
            Ok(Event::StepRetrying {
                step_id: step_id.clone(),
                attempt: s.attempt,
                error: s.error.clone(),
                delay_ms: 0,
                next_attempt_at: now,
                by,
            })
        }
        Control::Skip { step_id, output } => {
            let s = step(step_id)?;
            match s.status {
                StepStatus::Completed | StepStatus::Skipped => Err(ControlError::Conflict(
                    format!("step '{step_id}' is already {}", s.status.as_str()),
                )),
                StepStatus::Running => Err(ControlError::Conflict(format!(
                    "step '{step_id}' is running; cancel the workflow or wait for the attempt"
                ))),
                _ => Ok(Event::StepSkipped {
                    step_id: step_id.clone(),
                    output: output.clone(),
                    output_bytes: None,
                    by,
                }),
            }
        }
    }
}

impl Engine {
    pub(super) async fn handle_command(&mut self, cmd: Command) {
        let result = self.control(&cmd.workflow_id, &cmd.control, &cmd.by).await;
        let _ = cmd.reply.send(result);
    }

    /// Applies a control now (the loop calls this; tests may too).
    pub async fn control(
        &mut self,
        workflow_id: &str,
        control: &Control,
        by: &str,
    ) -> Result<WorkflowState, ControlError> {
        // Microseconds, as the store keeps them: the state answered and a state read back agree.
        let now = Utc::now().trunc_subsecs(6);
        let (state, fence) = match self.owned.get(workflow_id) {
            Some(o) => (o.state.clone(), Some(o.fence.clone())),
            None => (
                self.store.load(workflow_id).await?.ok_or_else(|| {
                    ControlError::NotFound(format!("no workflow {workflow_id:?}"))
                })?,
                None,
            ),
        };
        let event = event_for(&state, control, by, now)?;
        // A long skip output is what the steps after it render from: keep it whole.
        let whole = match control {
            Control::Skip {
                step_id,
                output: Some(output),
            } if output.len() > cairn::OUTPUT_PREVIEW_BYTES => Some((
                step_id.clone(),
                std::sync::Arc::<str>::from(output.as_str()),
            )),
            _ => None,
        };
        let change = Change {
            workflow_id: workflow_id.to_string(),
            fence,
            events: vec![Stamped { at: now, event }],
            outputs: Vec::new(),
            idempotency: None,
            base: Some(Box::new(state.clone())),
            take_lease: None,
        };
        let outcome = self.store.commit(vec![change]).await?.pop();
        match outcome {
            Some(Outcome::Committed { state, .. }) => {
                let state = *state;
                if let Some(owned) = self.owned.get_mut(workflow_id) {
                    // Attempts whose step the control took away are stopped now.
                    owned.take_state(state.clone());
                    if let Some((step_id, output)) = whole {
                        let finished_at = state.step(&step_id).and_then(|s| s.finished_at);
                        owned.whole_outputs.keep(step_id, finished_at, output);
                    }
                    self.note_unlaunched(workflow_id);
                    if state.status.is_terminal() || state.status == WorkflowStatus::Paused {
                        self.drop_owned(workflow_id);
                        if state.status == WorkflowStatus::Paused {
                            self.store.release(&self.instance, workflow_id).await?;
                        }
                    }
                } else {
                    // Runnable again: whoever is free (this engine, usually) picks it up.
                    self.claim_due = true;
                }
                Ok(state)
            }
            Some(Outcome::Rejected(Rejection::DoesNotApply(e))) => {
                Err(ControlError::Conflict(e.reason))
            }
            Some(Outcome::Rejected(Rejection::Unstorable(reason))) => Err(ControlError::Conflict(
                format!("the change cannot be stored: {reason}"),
            )),
            Some(Outcome::Rejected(Rejection::UnknownWorkflow)) => Err(ControlError::NotFound(
                format!("no workflow {workflow_id:?}"),
            )),
            Some(Outcome::Rejected(other)) => Err(ControlError::Conflict(format!(
                "the workflow changed meanwhile ({other}); try again"
            ))),
            None => Err(ControlError::Internal(anyhow::anyhow!(
                "the store answered no outcome"
            ))),
        }
    }
}
