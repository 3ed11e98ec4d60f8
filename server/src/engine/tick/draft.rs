//! A workflow's draft: the events one tick decides for it, folded as they are decided, and
//! the task a step is started with, rendered from whole outputs.

use std::sync::Arc;

use cairn::{Event, EventRecord, TemplateContext, WorkflowState};
use chrono::{DateTime, Utc};

use super::MAX_TASK_BYTES;
use crate::{
    engine::{WholeOutputs, runner::LogLine},
    store::Stamped,
};

/// A workflow's events of this tick, folded as they are decided so that every decision sees
/// the ones before it (a step that just completed unblocks its dependents in the same tick).
pub(super) struct Draft {
    /// The state the draft began from: the store folds `events` onto it again to decide.
    pub(super) base: WorkflowState,
    /// `base` with `events` folded in: what the next decision of this tick sees.
    pub(super) state: WorkflowState,
    /// The events decided this tick, in order.
    pub(super) events: Vec<Stamped>,
    /// Steps to launch once committed, with their whole rendered task.
    pub(super) launches: Vec<(String, String)>,
    /// The attempt results folded into `events`: if the store cannot hold the change, each
    /// becomes a failed attempt with the reason.
    pub(super) results: Vec<Settled>,
    /// The whole outputs behind the previews of `events`, by event index.
    pub(super) outputs: Vec<(usize, Arc<str>)>,
    /// The log lines folded into `events`: given back to the engine's buffer if the draft is
    /// not committed, to be folded again rather than lost.
    pub(super) lines: Vec<LogLine>,
}

/// An attempt result folded into a draft.
pub(super) struct Settled {
    pub(super) launch: u64,
    pub(super) step_id: String,
    pub(super) attempt: u32,
    pub(super) epoch: i64,
    pub(super) duration_ms: u64,
}

/// The outputs a template reads: the whole ones the engine holds for steps whose state
/// carries only a preview, the state's own otherwise.
struct Rendering<'a> {
    state: &'a WorkflowState,
    whole: &'a WholeOutputs,
}

impl TemplateContext for Rendering<'_> {
    fn input(&self, name: &str) -> Option<&str> {
        self.state.input(name)
    }

    fn step_output(&self, step: &str) -> Option<&str> {
        let s = self.state.step(step)?;
        if s.output_is_cut() {
            // Never render from a preview: a missing whole output is an error, not a cut task.
            self.whole.get(s)
        } else {
            s.output.as_deref()
        }
    }

    fn step_session_id(&self, step: &str) -> Option<&str> {
        self.state.step_session_id(step)
    }
}

/// Renders a step's task from whole outputs, within [`MAX_TASK_BYTES`].
pub(super) fn render_whole(
    state: &WorkflowState,
    whole: &WholeOutputs,
    step_id: &str,
) -> Result<String, String> {
    let def = state
        .spec
        .as_ref()
        .and_then(|spec| spec.step(step_id))
        .ok_or_else(|| format!("unknown step '{step_id}'"))?;
    let ctx = Rendering { state, whole };
    let task = def
        .template()
        .and_then(|t| t.render(&ctx))
        .map_err(|e| format!("cannot render the task: {e}"))?;
    if task.len() > MAX_TASK_BYTES {
        return Err(format!(
            "the rendered task is {} bytes, over the limit of {} bytes (16 MiB)",
            task.len(),
            MAX_TASK_BYTES
        ));
    }
    Ok(task)
}

impl Draft {
    pub(super) fn new(state: WorkflowState) -> Self {
        Self {
            base: state.clone(),
            state,
            events: Vec::new(),
            launches: Vec::new(),
            results: Vec::new(),
            outputs: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Folds `event` into the draft; an event the fold refuses is a bug in the engine's
    /// decisions, logged and dropped rather than committed.
    pub(super) fn push(&mut self, at: DateTime<Utc>, event: Event) -> bool {
        let rec = EventRecord {
            id: self.state.last_event_id + 1,
            workflow_id: self.state.id.clone(),
            at,
            event,
        };
        match self.state.apply(&rec) {
            Ok(()) => {
                self.events.push(Stamped {
                    at,
                    event: rec.event,
                });
                true
            }
            Err(e) => {
                tracing::error!(workflow = %self.state.id, error = %e, "engine decided an event that does not apply");
                false
            }
        }
    }
}
