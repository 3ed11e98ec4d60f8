//! The whole outputs behind the previews that states carry, kept for the templates of the
//! steps after them.

use std::{collections::HashMap, sync::Arc};

use cairn::StepState;
use chrono::{DateTime, Utc};

/// Whole outputs by step, each with the moment its step finished with it. An output is the
/// step's only while the step's state still says it finished then: a retry runs the step
/// again and a skip gives it another output, each with another end, and a skip sent to
/// another instance reaches this one only as a new state.
#[derive(Debug, Default, Clone)]
pub(super) struct WholeOutputs(HashMap<String, (Option<DateTime<Utc>>, Arc<str>)>);

impl WholeOutputs {
    /// Keeps `output` as the whole output of the step that finished at `finished_at`.
    pub(super) fn keep(
        &mut self,
        step_id: String,
        finished_at: Option<DateTime<Utc>>,
        output: Arc<str>,
    ) {
        self.0.insert(step_id, (finished_at, output));
    }

    /// The whole output of `step` as its state is now, if this holds it.
    pub(super) fn get(&self, step: &StepState) -> Option<&str> {
        self.0
            .get(&step.id)
            .filter(|(finished_at, _)| *finished_at == step.finished_at)
            .map(|(_, output)| &**output)
    }
}
