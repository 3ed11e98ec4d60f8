//! Scheduling: which ready steps start in this tick, and which workflows end.

use std::collections::HashMap;

use cairn::{Event, WorkflowStatus};
use chrono::{DateTime, Utc};

use super::{Draft, draft::render_whole};
use crate::engine::Engine;

impl Engine {
    /// Starts ready steps within the concurrency limit and ends finished (or blocked)
    /// workflows, these even when no slot is free.
    pub(super) fn schedule(&mut self, now: DateTime<Utc>, drafts: &mut HashMap<String, Draft>) {
        let mut free = self.free_slots();
        let mut ids: Vec<String> = self.owned.keys().cloned().collect();
        // Oldest first, so a flood of new workflows cannot starve the ones already running.
        ids.sort_by_key(|id| self.owned[id].state.created_at);
        for id in ids {
            // Only workflows with something to do get a draft (a copy of their state): with
            // thousands running, most are waiting on an attempt or a slot at any tick.
            if !drafts.contains_key(&id)
                && self.owned.get(&id).is_none_or(|o| {
                    let s = &o.state;
                    o.fail_next.is_none()
                        && (s.status != WorkflowStatus::Running
                            || (!s.is_finished()
                                && !s.is_blocked()
                                && (free == 0 || s.ready_steps(now).is_empty())))
                })
            {
                continue;
            }
            let fail_next = self.owned.get_mut(&id).and_then(|o| o.fail_next.take());
            let whole = self
                .owned
                .get(&id)
                .map(|o| o.whole_outputs.clone())
                .unwrap_or_default();
            let Some(d) = self.draft(drafts, &id) else {
                continue;
            };
            if d.state.status != WorkflowStatus::Running {
                continue;
            }
            if let Some(error) = fail_next {
                d.push(
                    now,
                    Event::WorkflowFailed {
                        step_id: None,
                        error,
                    },
                );
                continue;
            }
            if d.state.is_finished() {
                d.push(now, Event::WorkflowCompleted {});
                continue;
            }
            if d.state.is_blocked() {
                // Nothing runs or can run and a step is failed (e.g. one of two failed steps
                // was retried): fail again rather than hang as "running" forever.
                let failed = d
                    .state
                    .steps
                    .iter()
                    .find(|s| {
                        matches!(
                            s.status,
                            cairn::StepStatus::Failed | cairn::StepStatus::Cancelled
                        )
                    })
                    .map(|s| (s.id.clone(), s.error.clone().unwrap_or_default()));
                let (step_id, error) = failed.unwrap_or_default();
                d.push(
                    now,
                    Event::WorkflowFailed {
                        step_id: Some(step_id.clone()),
                        error: format!("step '{step_id}' failed: {error}"),
                    },
                );
                continue;
            }
            let ready: Vec<String> = d
                .state
                .ready_steps(now)
                .iter()
                .map(|s| s.id.clone())
                .collect();
            for step_id in ready {
                if free == 0 {
                    // The workflows after this one may still have ended.
                    break;
                }
                let (attempt, session_id) = match d.state.step(&step_id) {
                    Some(s) => (s.attempt + 1, s.session_id.clone()),
                    None => continue,
                };
                match render_whole(&d.state, &whole, &step_id) {
                    Ok(task) => {
                        if d.push(
                            now,
                            Event::StepStarted {
                                step_id: step_id.clone(),
                                attempt,
                                task: cairn::preview(&task).to_string(),
                                task_bytes: Some(task.len() as u64),
                                session_id,
                            },
                        ) {
                            d.launches.push((step_id, task));
                            free -= 1;
                        }
                    }
                    Err(error) => {
                        // A task that cannot be rendered (validation makes that unreachable for
                        // accepted specs) or is too large fails the step loudly rather than
                        // running it with a half-rendered or unbounded task.
                        d.push(
                            now,
                            Event::StepStarted {
                                step_id: step_id.clone(),
                                attempt,
                                task: String::new(),
                                task_bytes: None,
                                session_id: None,
                            },
                        );
                        d.push(
                            now,
                            Event::StepFailed {
                                step_id: step_id.clone(),
                                attempt,
                                error: error.clone(),
                                duration_ms: 0,
                            },
                        );
                        d.push(
                            now,
                            Event::WorkflowFailed {
                                step_id: Some(step_id),
                                error,
                            },
                        );
                    }
                }
            }
        }
    }
}
