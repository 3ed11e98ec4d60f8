//! After a checkpoint is durable: the engine takes in the committed state and launches the
//! attempts it started, each as a task of its own.

use cairn::{WorkflowState, WorkflowStatus};

use super::draft::render_whole;
use crate::engine::{
    Engine, Finished, Launched, Produced,
    runner::{Attempt, RunError},
};

impl Engine {
    /// Launches the steps that workflows read back from the store have running but that this
    /// engine runs nothing for. Their `step.started` was in a checkpoint whose answer never
    /// came (the connection dropped after `COMMIT` reached the database): the engine took
    /// that checkpoint for failed and launched nothing, yet it is durable. Under this engine's
    /// lease no one else may run them, so they run here, under the number they were started
    /// with. A task that no longer renders becomes the attempt's failure.
    pub(super) fn launch_unlaunched(&mut self) {
        if self.stopping {
            // Left to the next owner, which runs them again as interrupted.
            return;
        }
        for id in std::mem::take(&mut self.unlaunched) {
            let Some(owned) = self.owned.get(&id) else {
                continue;
            };
            let epoch = owned.fence.epoch;
            let tasks: Vec<(String, u32, Result<String, String>)> = owned
                .unlaunched()
                .map(|s| {
                    let task = render_whole(&owned.state, &owned.whole_outputs, &s.id);
                    (s.id.clone(), s.attempt, task)
                })
                .collect();
            for (step_id, attempt, task) in tasks {
                tracing::warn!(workflow = %id, step = %step_id, attempt, "launching an attempt whose start was committed without this engine hearing so");
                match task {
                    Ok(task) => self.launch(&id, &step_id, task, epoch),
                    Err(message) => self.fail_unlaunched(&id, step_id, attempt, epoch, message),
                }
            }
        }
    }

    /// Records, as the end of an attempt never launched, why it could not be.
    fn fail_unlaunched(
        &mut self,
        id: &str,
        step_id: String,
        attempt: u32,
        epoch: i64,
        message: String,
    ) {
        let Some(owned) = self.owned.get_mut(id) else {
            return;
        };
        self.launches += 1;
        owned.attempts.insert(
            step_id.clone(),
            Launched {
                launch: self.launches,
                attempt,
                cancel: tokio_util::sync::CancellationToken::new(),
            },
        );
        self.finished.push(Finished {
            launch: self.launches,
            workflow_id: id.to_string(),
            step_id,
            attempt,
            epoch,
            duration_ms: 0,
            result: Err(RunError {
                message,
                is_final: true,
            }),
        });
    }

    /// Takes in a committed state and launches its attempts; `true` when the workflow should
    /// be released (paused: nothing runs until a person decides, and then any instance may
    /// pick it up).
    pub(super) fn after_commit(
        &mut self,
        id: &str,
        state: WorkflowState,
        launches: Vec<(String, String)>,
    ) -> bool {
        let status = state.status;
        let Some(owned) = self.owned.get_mut(id) else {
            return false;
        };
        // The store folds onto what is committed, which may hold a change made elsewhere since
        // this engine last read the log (a retry that reset a running step): that attempt is
        // stopped here, since the log will not say so again.
        owned.take_state(state);
        let epoch = owned.fence.epoch;
        for (step_id, task) in launches {
            self.launch(id, &step_id, task, epoch);
        }
        // The state folded onto what is committed may hold a start this engine never heard
        // committed (a checkpoint whose answer was lost).
        self.note_unlaunched(id);
        if status.is_terminal() || status == WorkflowStatus::Paused {
            self.drop_owned(id);
        }
        status == WorkflowStatus::Paused
    }

    pub(super) fn launch(&mut self, workflow_id: &str, step_id: &str, task: String, epoch: i64) {
        let Some(owned) = self.owned.get_mut(workflow_id) else {
            return;
        };
        let Some(step) = owned.state.step(step_id) else {
            return;
        };
        let Some(def) = owned.state.spec.as_ref().and_then(|s| s.step(step_id)) else {
            return;
        };
        let attempt = Attempt {
            workflow_id: workflow_id.to_string(),
            step_id: step_id.to_string(),
            attempt: step.attempt,
            lifetime_attempt: step.attempts.len() as u32,
            role: def.role.clone(),
            task,
            inputs: owned.state.inputs.clone(),
            session_id: step.session_id.clone(),
            params: def.params.clone(),
        };
        let timeout = std::time::Duration::from_secs(def.timeout_s);
        let runner = self.runners.get(&def.role).cloned();
        let token = tokio_util::sync::CancellationToken::new();
        self.launches += 1;
        let launch = self.launches;
        owned.attempts.insert(
            step_id.to_string(),
            Launched {
                launch,
                attempt: attempt.attempt,
                cancel: token.clone(),
            },
        );
        let logs = self.logs_tx.clone();
        self.in_flight.spawn(async move {
            let started = std::time::Instant::now();
            let result = match runner {
                None => Err(RunError {
                    message: format!(
                        "invalid configuration: role '{}' is not bound to a runner",
                        attempt.role
                    ),
                    is_final: true,
                }),
                Some(runner) => {
                    let run = runner.run(&attempt, &logs, &token);
                    tokio::pin!(run);
                    tokio::select! {
                        r = &mut run => r,
                        _ = tokio::time::sleep(timeout) => {
                            token.cancel();
                            let _ = run.await;
                            Err(RunError {
                                message: format!("timed out after {}s", timeout.as_secs()),
                                is_final: false,
                            })
                        }
                    }
                }
            };
            Finished {
                launch,
                workflow_id: attempt.workflow_id,
                step_id: attempt.step_id,
                attempt: attempt.attempt,
                epoch,
                duration_ms: started.elapsed().as_millis() as u64,
                result: result.map(|out| Produced {
                    output: out.output.into(),
                    session_id: out.session_id,
                }),
            }
        });
    }
}
