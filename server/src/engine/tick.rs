//! One turn of the engine loop: [`Engine::tick`].

use std::collections::HashMap;

use cairn::{Event, EventRecord, RetryDecision, WorkflowState, WorkflowStatus};
use chrono::{DateTime, Utc};

use super::{
    Engine, Finished, Owned, TickOutcome,
    runner::{Attempt, RunError},
};
use crate::store::{Change, Outcome, Rejection, Stamped};

/// Claims per tick, so one tick stays short when thousands of workflows wait.
const CLAIM_BATCH: u32 = 256;

/// `step.log` events kept per attempt; a runaway program cannot flood the log.
pub const MAX_LOG_LINES_PER_ATTEMPT: u32 = 1000;

/// A workflow's events of this tick, folded as they are decided so that every decision sees
/// the ones before it (a step that just completed unblocks its dependents in the same tick).
struct Draft {
    base: WorkflowState,
    state: WorkflowState,
    events: Vec<Stamped>,
    launches: Vec<String>,
}

impl Draft {
    fn new(state: WorkflowState) -> Self {
        Self {
            base: state.clone(),
            state,
            events: Vec::new(),
            launches: Vec::new(),
        }
    }

    /// Folds `event` into the draft; an event the fold refuses is a bug in the engine's
    /// decisions, logged and dropped rather than committed.
    fn push(&mut self, at: DateTime<Utc>, event: Event) -> bool {
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

impl Engine {
    /// One deterministic turn: renew leases, take over orphaned workflows, fold finished
    /// attempts and log lines into events, start ready steps, and commit it all in one
    /// transaction. Attempts are spawned only after their `step.started` is durable.
    pub async fn tick(&mut self) -> anyhow::Result<TickOutcome> {
        let now = Utc::now();
        let mut outcome = TickOutcome::default();
        while let Some(done) = self.in_flight.try_join_next() {
            match done {
                Ok(f) => self.finished.push(f),
                Err(e) => tracing::error!(error = %e, "an attempt task panicked"),
            }
        }
        while let Ok(line) = self.logs_rx.try_recv() {
            self.log_buffer.push(line);
        }
        self.renew_if_due(now).await?;

        let mut drafts: HashMap<String, Draft> = HashMap::new();
        if self.claim_due {
            outcome.claimed = self.claim(now, &mut drafts).await?;
        }
        self.fold_logs(now, &mut drafts);
        outcome.finished = self.fold_finished(now, &mut drafts);
        self.schedule(now, &mut drafts);

        let changes: Vec<(Change, Vec<String>)> = drafts
            .into_iter()
            .filter(|(_, d)| !d.events.is_empty())
            .filter_map(|(id, d)| {
                let fence = self.owned.get(&id)?.fence.clone();
                Some((
                    Change {
                        workflow_id: id,
                        fence: Some(fence),
                        events: d.events,
                        idempotency: None,
                        base: Some(Box::new(d.base)),
                    },
                    d.launches,
                ))
            })
            .collect();
        if changes.is_empty() {
            return Ok(outcome);
        }
        let (changes, launches): (Vec<_>, Vec<_>) = changes.into_iter().unzip();
        let ids: Vec<String> = changes.iter().map(|c| c.workflow_id.clone()).collect();
        let results = self.store.commit(changes).await?;
        for ((id, launch), result) in ids.into_iter().zip(launches).zip(results) {
            match result {
                Outcome::Committed { records, state } => {
                    outcome.events += records.len();
                    outcome.started += launch.len();
                    if self.after_commit(&id, *state, launch) {
                        self.store.release(&self.instance, &id).await?;
                    }
                }
                Outcome::Rejected(Rejection::LeaseLost) => {
                    tracing::warn!(workflow = %id, "lease lost: another engine took the workflow over");
                    self.drop_owned(&id);
                }
                Outcome::Rejected(other) => {
                    // Someone changed the workflow under us (a control from elsewhere): start
                    // again from what is committed.
                    tracing::warn!(workflow = %id, reason = %other, "change refused; reloading the workflow");
                    self.reload(&id).await?;
                }
            }
        }
        Ok(outcome)
    }

    fn draft<'a>(&self, drafts: &'a mut HashMap<String, Draft>, id: &str) -> Option<&'a mut Draft> {
        if !drafts.contains_key(id) {
            let owned = self.owned.get(id)?;
            drafts.insert(id.to_string(), Draft::new(owned.state.clone()));
        }
        drafts.get_mut(id)
    }

    async fn claim(
        &mut self,
        now: DateTime<Utc>,
        drafts: &mut HashMap<String, Draft>,
    ) -> anyhow::Result<usize> {
        let steal = self.first_claim && self.settings.steal_on_start;
        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        let claimed = self
            .store
            .claim(&self.instance, now, ttl, CLAIM_BATCH, steal)
            .await?;
        self.first_claim = false;
        self.claim_due = claimed.len() as u32 == CLAIM_BATCH;
        let n = claimed.len();
        for c in claimed {
            let id = c.state.id.clone();
            let mut draft = Draft::new(c.state.clone());
            let interrupted = c
                .state
                .steps
                .iter()
                .any(|s| s.status == cairn::StepStatus::Running);
            match c.state.status {
                WorkflowStatus::Pending => {
                    draft.push(now, Event::WorkflowStarted {});
                }
                WorkflowStatus::Running if c.previous_owner.is_some() || interrupted => {
                    let reason = match &c.previous_owner {
                        Some(prev) => {
                            format!("the engine running it ({prev}) stopped renewing its lease")
                        }
                        None => "interrupted attempts found without an owner".to_string(),
                    };
                    tracing::info!(workflow = %id, %reason, "taking over a stalled workflow");
                    draft.push(
                        now,
                        Event::WorkflowStalled {
                            reason,
                            previous_owner: c.previous_owner.clone(),
                        },
                    );
                    draft.push(
                        now,
                        Event::WorkflowResumed {
                            by: Some(format!("recovery:{}", self.instance)),
                        },
                    );
                }
                WorkflowStatus::Stalled => {
                    draft.push(
                        now,
                        Event::WorkflowResumed {
                            by: Some(format!("recovery:{}", self.instance)),
                        },
                    );
                }
                _ => {}
            }
            self.owned.insert(
                id.clone(),
                Owned {
                    state: c.state,
                    fence: c.fence,
                    attempts: HashMap::new(),
                    log_counts: HashMap::new(),
                },
            );
            drafts.insert(id, draft);
        }
        Ok(n)
    }

    /// Turns log lines into `step.log` events: every line is durable and streamed, up to
    /// [`MAX_LOG_LINES_PER_ATTEMPT`] per attempt (one notice marks the cut); each line is cut
    /// at [`cairn::LOG_LINE_MAX_BYTES`].
    fn fold_logs(&mut self, now: DateTime<Utc>, drafts: &mut HashMap<String, Draft>) {
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
                    c.1 += 1;
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
            if current {
                d.push(
                    now,
                    Event::StepLog {
                        step_id: line.step_id,
                        attempt: line.attempt,
                        stream: line.stream,
                        line: line.line,
                    },
                );
            }
        }
    }

    fn fold_finished(&mut self, now: DateTime<Utc>, drafts: &mut HashMap<String, Draft>) -> usize {
        let mut n = 0;
        for f in std::mem::take(&mut self.finished) {
            let Some(owned) = self.owned.get_mut(&f.workflow_id) else {
                continue;
            };
            if owned.fence.epoch != f.epoch {
                // Started under an older lease: its result belongs to nobody now.
                continue;
            }
            owned.attempts.remove(&f.step_id);
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
            match f.result {
                Ok(out) => {
                    d.push(
                        now,
                        Event::StepCompleted {
                            step_id: f.step_id,
                            attempt: f.attempt,
                            output: out.output,
                            session_id: out.session_id,
                            duration_ms: f.duration_ms,
                        },
                    );
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
        n
    }

    /// Starts ready steps within the concurrency limit and completes finished workflows.
    fn schedule(&mut self, now: DateTime<Utc>, drafts: &mut HashMap<String, Draft>) {
        let mut free = self
            .settings
            .max_concurrency
            .saturating_sub(self.in_flight.len());
        let mut ids: Vec<String> = self.owned.keys().cloned().collect();
        // Oldest first, so a flood of new workflows cannot starve the ones already running.
        ids.sort_by_key(|id| self.owned[id].state.created_at);
        for id in ids {
            let Some(d) = self.draft(drafts, &id) else {
                continue;
            };
            if d.state.status != WorkflowStatus::Running {
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
                    return;
                }
                let (attempt, session_id) = match d.state.step(&step_id) {
                    Some(s) => (s.attempt + 1, s.session_id.clone()),
                    None => continue,
                };
                match d.state.render_task(&step_id) {
                    Ok(task) => {
                        if d.push(
                            now,
                            Event::StepStarted {
                                step_id: step_id.clone(),
                                attempt,
                                task,
                                session_id,
                            },
                        ) {
                            d.launches.push(step_id);
                            free -= 1;
                        }
                    }
                    Err(e) => {
                        // Validation makes this unreachable for specs it accepted; fail loudly
                        // rather than run a step with a half-rendered task.
                        let error = format!("cannot render the task: {e}");
                        d.push(
                            now,
                            Event::StepStarted {
                                step_id: step_id.clone(),
                                attempt,
                                task: String::new(),
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

    /// Takes in a committed state and launches its attempts; `true` when the workflow should
    /// be released (paused: nothing runs until a person decides, and then any instance may
    /// pick it up).
    fn after_commit(&mut self, id: &str, state: WorkflowState, launches: Vec<String>) -> bool {
        let status = state.status;
        let Some(owned) = self.owned.get_mut(id) else {
            return false;
        };
        owned.state = state;
        let epoch = owned.fence.epoch;
        for step_id in launches {
            self.launch(id, &step_id, epoch);
        }
        if status.is_terminal() || status == WorkflowStatus::Paused {
            self.drop_owned(id);
        }
        status == WorkflowStatus::Paused
    }

    fn launch(&mut self, workflow_id: &str, step_id: &str, epoch: i64) {
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
            task: step.task.clone().unwrap_or_default(),
            inputs: owned.state.inputs.clone(),
            session_id: step.session_id.clone(),
            params: def.params.clone(),
        };
        let timeout = std::time::Duration::from_secs(def.timeout_s);
        let runner = self.runners.get(&def.role).cloned();
        let token = tokio_util::sync::CancellationToken::new();
        owned.attempts.insert(step_id.to_string(), token.clone());
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
                workflow_id: attempt.workflow_id,
                step_id: attempt.step_id,
                attempt: attempt.attempt,
                epoch,
                duration_ms: started.elapsed().as_millis() as u64,
                result,
            }
        });
    }

    /// Forgets a workflow and stops its attempts.
    pub(super) fn drop_owned(&mut self, id: &str) {
        if let Some(owned) = self.owned.remove(id) {
            for token in owned.attempts.values() {
                token.cancel();
            }
        }
    }

    async fn reload(&mut self, id: &str) -> anyhow::Result<()> {
        match self.store.load(id).await? {
            Some(state) if state.status == WorkflowStatus::Running => {
                if let Some(o) = self.owned.get_mut(id) {
                    o.state = state;
                }
            }
            _ => self.drop_owned(id),
        }
        Ok(())
    }

    async fn renew_if_due(&mut self, now: DateTime<Utc>) -> anyhow::Result<()> {
        if self.last_renewal.elapsed() < self.settings.lease_ttl / 3 {
            return Ok(());
        }
        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        let held = self.store.renew(&self.instance, now + ttl).await?;
        self.last_renewal = tokio::time::Instant::now();
        let held: std::collections::HashSet<String> = held.into_iter().collect();
        let lost: Vec<String> = self
            .owned
            .keys()
            .filter(|id| !held.contains(*id))
            .cloned()
            .collect();
        for id in lost {
            tracing::warn!(workflow = %id, "lease lost at renewal");
            self.drop_owned(&id);
        }
        // Leases are the heartbeat; an expired one elsewhere is work to take over.
        self.claim_due = true;
        Ok(())
    }
}
