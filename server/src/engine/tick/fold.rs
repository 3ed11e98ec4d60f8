//! Folding what happened since the last tick into drafts: log lines and attempt results,
//! and what happens to results the store refuses.

use std::collections::HashMap;

use cairn::{Event, RetryDecision, WorkflowStatus};
use chrono::{DateTime, Utc};

use super::{Draft, MAX_LOG_LINES_PER_ATTEMPT, MAX_UNSTORABLE, Settled};
use crate::engine::{
    Engine, Finished,
    runner::{LogLine, RunError},
};

impl Engine {
    /// Turns log lines into `step.log` events: every line is durable and streamed, up to
    /// [`MAX_LOG_LINES_PER_ATTEMPT`] per attempt (one notice marks the cut); each line is cut
    /// at [`cairn::LOG_LINE_MAX_BYTES`].
    pub(super) fn fold_logs(&mut self, now: DateTime<Utc>, drafts: &mut HashMap<String, Draft>) {
        for mut line in std::mem::take(&mut self.log_buffer) {
            let count = match self.owned.get_mut(&line.workflow_id) {
                Some(o) => {
                    let c = o
                        .log_counts
                        .entry(line.step_id.clone())
                        .or_insert((line.attempt, 0));
                    if c.0 != line.attempt {
                        *c = (line.attempt, 0);
                    }
                    // Counted up to the first line past the notice, no further: the lines given
                    // back by an uncommitted draft then take the count back exactly.
                    c.1 = (c.1 + 1).min(MAX_LOG_LINES_PER_ATTEMPT + 2);
                    c.1
                }
                None => continue,
            };
            if count > MAX_LOG_LINES_PER_ATTEMPT + 1 {
                continue;
            }
            if count == MAX_LOG_LINES_PER_ATTEMPT + 1 {
                line.line = format!(
                    "[cairn] {MAX_LOG_LINES_PER_ATTEMPT} lines kept; the rest of this attempt's output is not recorded"
                );
            }
            if line.line.len() > cairn::LOG_LINE_MAX_BYTES {
                let mut cut = cairn::LOG_LINE_MAX_BYTES;
                while !line.line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.line.truncate(cut);
            }
            let Some(d) = self.draft(drafts, &line.workflow_id) else {
                continue;
            };
            let current = d.state.step(&line.step_id).is_some_and(|s| {
                s.status == cairn::StepStatus::Running && s.attempt == line.attempt
            });
            if current
                && d.push(
                    now,
                    Event::StepLog {
                        step_id: line.step_id.clone(),
                        attempt: line.attempt,
                        stream: line.stream,
                        line: line.line.clone(),
                    },
                )
            {
                d.lines.push(line);
            }
        }
    }

    /// Puts the log lines of a draft that was not committed back in front of the buffer,
    /// uncounted, so that the next tick folds them again (a line of an attempt that is no
    /// longer current by then is dropped there).
    pub(super) fn give_back_lines(&mut self, mut lines: Vec<LogLine>) {
        for l in &lines {
            if let Some(c) = self
                .owned
                .get_mut(&l.workflow_id)
                .and_then(|o| o.log_counts.get_mut(&l.step_id))
                && c.0 == l.attempt
            {
                c.1 = c.1.saturating_sub(1);
            }
        }
        lines.append(&mut self.log_buffer);
        self.log_buffer = lines;
    }

    /// Turns finished attempts into events: a completion (its whole output kept for the
    /// templates of the steps after it), a retry after the policy's delay, or a failure.
    /// Results of another lease's attempts, or of steps reset while they ran, are dropped.
    /// Returns how many results were taken.
    pub(super) fn fold_finished(
        &mut self,
        now: DateTime<Utc>,
        drafts: &mut HashMap<String, Draft>,
    ) -> usize {
        let mut n = 0;
        let mut whole = Vec::new();
        for f in std::mem::take(&mut self.finished) {
            let Some(owned) = self.owned.get_mut(&f.workflow_id) else {
                continue;
            };
            if owned.fence.epoch != f.epoch {
                // Started under an older lease: its result belongs to nobody now.
                continue;
            }
            if owned.attempts.get(&f.step_id).map(|l| l.launch) != Some(f.launch) {
                // Stopped or replaced meanwhile: the step's current attempt, if any, is another.
                continue;
            }
            let random = self.rng.f64();
            let Some(d) = self.draft(drafts, &f.workflow_id) else {
                continue;
            };
            let Some(step) = d.state.step(&f.step_id) else {
                continue;
            };
            if step.status != cairn::StepStatus::Running || step.attempt != f.attempt {
                // Cancelled, skipped or reset while it ran: the result is stale.
                continue;
            }
            n += 1;
            d.results.push(Settled {
                launch: f.launch,
                step_id: f.step_id.clone(),
                attempt: f.attempt,
                epoch: f.epoch,
                duration_ms: f.duration_ms,
            });
            match f.result {
                Ok(out) => {
                    // The event carries the preview; the whole output goes to the store beside
                    // it, and its dependents may start in this very tick: they render from it.
                    let cut = out.output.len() > cairn::OUTPUT_PREVIEW_BYTES;
                    if d.push(
                        now,
                        Event::StepCompleted {
                            step_id: f.step_id.clone(),
                            attempt: f.attempt,
                            output: cairn::preview(&out.output).to_string(),
                            output_bytes: cut.then_some(out.output.len() as u64),
                            session_id: out.session_id,
                            duration_ms: f.duration_ms,
                        },
                    ) && cut
                    {
                        d.outputs.push((d.events.len() - 1, out.output.clone()));
                        whole.push((f.workflow_id.clone(), f.step_id, now, out.output));
                    }
                }
                Err(RunError { message, is_final }) => {
                    let Some(def) = d.state.spec.as_ref().and_then(|s| s.step(&f.step_id)) else {
                        continue;
                    };
                    let policy = def.retry.clone();
                    match policy.decide(f.attempt, &message, is_final, random) {
                        RetryDecision::RetryAfter { delay_ms } => {
                            d.push(
                                now,
                                Event::StepRetrying {
                                    step_id: f.step_id,
                                    attempt: f.attempt,
                                    error: Some(message),
                                    delay_ms,
                                    next_attempt_at: now
                                        + chrono::Duration::milliseconds(delay_ms as i64),
                                    by: None,
                                },
                            );
                        }
                        RetryDecision::Exhausted | RetryDecision::NonRetryable => {
                            d.push(
                                now,
                                Event::StepFailed {
                                    step_id: f.step_id.clone(),
                                    attempt: f.attempt,
                                    error: message.clone(),
                                    duration_ms: f.duration_ms,
                                },
                            );
                            if policy.on_exhausted == cairn::OnExhausted::Fail {
                                d.push(
                                    now,
                                    Event::WorkflowFailed {
                                        step_id: Some(f.step_id.clone()),
                                        error: format!("step '{}' failed: {message}", f.step_id),
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
        for (workflow_id, step_id, finished_at, output) in whole {
            if let Some(o) = self.owned.get_mut(&workflow_id) {
                o.whole_outputs.keep(step_id, Some(finished_at), output);
            }
        }
        n
    }

    /// Loads the whole outputs that running workflows' templates may read and that the
    /// engine does not hold as the states are now (a workflow just taken over, a step skipped
    /// with a long output, here or elsewhere): the states carry only previews.
    pub(super) async fn load_whole_outputs(&mut self) -> anyhow::Result<()> {
        let missing: Vec<_> = self
            .owned
            .iter()
            .filter(|(_, o)| o.state.status == WorkflowStatus::Running)
            .flat_map(|(id, o)| {
                o.state
                    .steps
                    .iter()
                    .filter(|s| s.status.is_done() && s.output_is_cut())
                    .filter(|s| o.whole_outputs.get(s).is_none())
                    .map(|s| (id.clone(), s.id.clone(), s.finished_at))
            })
            .collect();
        for (workflow_id, step_id, finished_at) in missing {
            let output = self.store.output(&workflow_id, &step_id).await?;
            if let (Some(o), Some(output)) = (self.owned.get_mut(&workflow_id), output) {
                o.whole_outputs.keep(step_id, finished_at, output.into());
            }
        }
        Ok(())
    }

    /// A change the store cannot hold: its attempt results come back as failed attempts
    /// with the reason (final: the same result would be refused again), and a workflow
    /// whose checkpoints keep being refused fails with the reason.
    pub(super) fn unstorable(&mut self, id: &str, reason: &str, results: Vec<Settled>) {
        let Some(owned) = self.owned.get_mut(id) else {
            return;
        };
        owned.unstorable += 1;
        tracing::error!(workflow = %id, %reason, refused = owned.unstorable, "a checkpoint was refused by the store");
        if owned.unstorable > MAX_UNSTORABLE + 1 {
            tracing::error!(workflow = %id, "giving the workflow up: even its failure cannot be stored");
            self.drop_owned(id);
            return;
        }
        if results.is_empty() && owned.unstorable >= MAX_UNSTORABLE {
            // The next tick fails the workflow with the reason.
            owned.fail_next = Some(format!(
                "its checkpoint was refused {} times: {reason}",
                owned.unstorable
            ));
            return;
        }
        for r in results {
            self.finished.push(Finished {
                launch: r.launch,
                workflow_id: id.to_string(),
                step_id: r.step_id,
                attempt: r.attempt,
                epoch: r.epoch,
                duration_ms: r.duration_ms,
                result: Err(RunError {
                    message: format!("the attempt's result could not be saved: {reason}"),
                    is_final: true,
                }),
            });
        }
    }
}
