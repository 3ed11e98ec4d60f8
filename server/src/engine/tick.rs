//! One turn of the engine loop: [`Engine::tick`].

mod arrivals;

use std::collections::HashMap;

use std::sync::Arc;

use cairn::{Event, EventRecord, RetryDecision, TemplateContext, WorkflowState, WorkflowStatus};
use chrono::{DateTime, SubsecRound, Utc};

use super::{
    Created, Engine, Finished, Owned, Produced, TickOutcome,
    runner::{Attempt, RunError},
};
use crate::store::{Change, Outcome, Rejection, Stamped};

/// Claims per tick, so one tick stays short when thousands of workflows wait.
const CLAIM_BATCH: u32 = 256;

/// `step.log` events kept per attempt; a runaway program cannot flood the log.
pub const MAX_LOG_LINES_PER_ATTEMPT: u32 = 1000;

/// The largest task a step may be given, rendered: `Build {design.output}` with a huge
/// design output fails the step with a clear error past it rather than copying it into a
/// program's stdin or an HTTP body without bound.
pub const MAX_TASK_BYTES: usize = 16 * 1024 * 1024;

/// Consecutive refused checkpoints after which a workflow is failed with the reason.
const MAX_UNSTORABLE: u32 = 3;

/// A workflow's events of this tick, folded as they are decided so that every decision sees
/// the ones before it (a step that just completed unblocks its dependents in the same tick).
struct Draft {
    base: WorkflowState,
    state: WorkflowState,
    events: Vec<Stamped>,
    /// Steps to launch once committed, with their whole rendered task.
    launches: Vec<(String, String)>,
    /// The attempt results folded into `events`: if the store cannot hold the change, each
    /// becomes a failed attempt with the reason.
    results: Vec<Settled>,
    /// The whole outputs behind the previews of `events`, by event index.
    outputs: Vec<(usize, Arc<str>)>,
}

/// An attempt result folded into a draft.
struct Settled {
    step_id: String,
    attempt: u32,
    epoch: i64,
    duration_ms: u64,
}

/// The outputs a template reads: the whole ones the engine holds for steps whose state
/// carries only a preview, the state's own otherwise.
struct WholeOutputs<'a> {
    state: &'a WorkflowState,
    whole: &'a HashMap<String, Arc<str>>,
}

impl TemplateContext for WholeOutputs<'_> {
    fn input(&self, name: &str) -> Option<&str> {
        self.state.input(name)
    }

    fn step_output(&self, step: &str) -> Option<&str> {
        let s = self.state.step(step)?;
        if s.output_is_cut() {
            // Never render from a preview: a missing whole output is an error, not a cut task.
            self.whole.get(step).map(|w| &**w)
        } else {
            s.output.as_deref()
        }
    }

    fn step_session_id(&self, step: &str) -> Option<&str> {
        self.state.step_session_id(step)
    }
}

/// Renders a step's task from whole outputs, within [`MAX_TASK_BYTES`].
fn render_whole(
    state: &WorkflowState,
    whole: &HashMap<String, Arc<str>>,
    step_id: &str,
) -> Result<String, String> {
    let def = state
        .spec
        .as_ref()
        .and_then(|spec| spec.step(step_id))
        .ok_or_else(|| format!("unknown step '{step_id}'"))?;
    let ctx = WholeOutputs { state, whole };
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
    fn new(state: WorkflowState) -> Self {
        Self {
            base: state.clone(),
            state,
            events: Vec::new(),
            launches: Vec::new(),
            results: Vec::new(),
            outputs: Vec::new(),
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
        // The store keeps microseconds; deciding with them keeps drafts and stored states equal.
        let now = Utc::now().trunc_subsecs(6);
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
        self.renew_if_due().await?;
        self.observe_log();
        for id in std::mem::take(&mut self.changed_elsewhere) {
            self.reload(&id).await?;
        }

        let mut drafts: HashMap<String, Draft> = HashMap::new();
        if self.claim_due {
            outcome.claimed = self.claim(now, &mut drafts).await?;
        }
        // New workflows: started in the checkpoint that creates them when there is room.
        while let Ok(c) = self.creations.try_recv() {
            self.arriving.push(c);
        }
        let (mut creating, plain) = self.take_arrivals(now, &mut drafts);
        self.load_whole_outputs().await?;
        // Kept until the commit is durable: if it fails, the results are folded again at the
        // next tick instead of being lost (which would leave their steps running forever).
        let results = self.finished.clone();
        self.fold_logs(now, &mut drafts);
        outcome.finished = self.fold_finished(now, &mut drafts);
        self.schedule(now, &mut drafts);

        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        let changes: Vec<(Change, Draft)> = drafts
            .into_iter()
            .filter(|(_, d)| !d.events.is_empty())
            .filter_map(|(id, d)| {
                let fence = self.owned.get(&id)?.fence.clone();
                let mut d = d;
                let new = creating.get_mut(&id);
                Some((
                    Change {
                        fence: Some(fence),
                        events: std::mem::take(&mut d.events),
                        outputs: std::mem::take(&mut d.outputs),
                        idempotency: new.and_then(|(idempotency, _)| idempotency.take()),
                        base: (!creating.contains_key(&id)).then(|| {
                            Box::new(std::mem::replace(&mut d.base, WorkflowState::new("")))
                        }),
                        take_lease: creating.contains_key(&id).then_some(ttl),
                        workflow_id: id,
                    },
                    d,
                ))
            })
            .collect();
        if changes.is_empty() && plain.is_empty() {
            return Ok(outcome);
        }
        let (mut changes, drafts): (Vec<_>, Vec<_>) = changes.into_iter().unzip();
        let ids: Vec<String> = changes.iter().map(|c| c.workflow_id.clone()).collect();
        let (plain_changes, plain_replies): (Vec<Change>, Vec<_>) =
            plain.into_iter().map(|c| (c.change, c.reply)).unzip();
        changes.extend(plain_changes);
        let mut outcomes = match self.store.commit(changes).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                self.finished.extend(results);
                for (id, (_, reply)) in creating {
                    self.drop_owned(&id);
                    let _ = reply.send(Err(anyhow::anyhow!("checkpoint failed: {e:#}")));
                }
                for reply in plain_replies {
                    let _ = reply.send(Err(anyhow::anyhow!("checkpoint failed: {e:#}")));
                }
                return Err(e);
            }
        };
        for (reply, result) in plain_replies.into_iter().zip(outcomes.split_off(ids.len())) {
            let _ = reply.send(Ok(Created::from(&result)));
        }
        for ((id, draft), result) in ids.into_iter().zip(drafts).zip(outcomes) {
            if let Some((_, reply)) = creating.remove(&id) {
                let _ = reply.send(Ok(Created::from(&result)));
                if matches!(result, Outcome::Rejected(_)) {
                    // Not created (an idempotent replay, a refused value): nothing to run.
                    self.drop_owned(&id);
                    continue;
                }
            }
            match result {
                Outcome::Committed { records, state } => {
                    outcome.events += records.len();
                    outcome.started += draft.launches.len();
                    if let Some(o) = self.owned.get_mut(&id) {
                        o.unstorable = 0;
                    }
                    if self.after_commit(&id, *state, draft.launches) {
                        self.store.release(&self.instance, &id).await?;
                    }
                }
                Outcome::Rejected(Rejection::Unstorable(reason)) => {
                    self.unstorable(&id, &reason, draft.results);
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
            .claim(&self.instance, ttl, CLAIM_BATCH, steal)
            .await?;
        self.first_claim = false;
        self.claim_due = claimed.len() as u32 == CLAIM_BATCH;
        let n = claimed.len();
        for c in claimed {
            let id = c.state.id.clone();
            // Its own lease lapsed (the loop stood still longer than the TTL) and it took the
            // workflow again under a new epoch: what it ran under the old one is void.
            self.drop_owned(&id);
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
                    whole_outputs: HashMap::new(),
                    unstorable: 0,
                    fail_next: None,
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
        let mut whole = Vec::new();
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
            d.results.push(Settled {
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
                        whole.push((f.workflow_id.clone(), f.step_id, out.output));
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
        for (workflow_id, step_id, output) in whole {
            if let Some(o) = self.owned.get_mut(&workflow_id) {
                o.whole_outputs.insert(step_id, output);
            }
        }
        n
    }

    /// Loads the whole outputs that running workflows' templates may read and that the
    /// engine does not hold yet (a workflow just taken over, a step skipped with a long
    /// output): the states carry only previews.
    async fn load_whole_outputs(&mut self) -> anyhow::Result<()> {
        let missing: Vec<(String, String)> = self
            .owned
            .iter()
            .filter(|(_, o)| o.state.status == WorkflowStatus::Running)
            .flat_map(|(id, o)| {
                o.state
                    .steps
                    .iter()
                    .filter(|s| s.status.is_done() && s.output_is_cut())
                    .filter(|s| !o.whole_outputs.contains_key(&s.id))
                    .map(|s| (id.clone(), s.id.clone()))
            })
            .collect();
        for (workflow_id, step_id) in missing {
            let output = self.store.output(&workflow_id, &step_id).await?;
            if let (Some(o), Some(output)) = (self.owned.get_mut(&workflow_id), output) {
                o.whole_outputs.insert(step_id, output.into());
            }
        }
        Ok(())
    }

    /// A change the store cannot hold: its attempt results come back as failed attempts
    /// with the reason (final: the same result would be refused again), and a workflow
    /// whose checkpoints keep being refused fails with the reason.
    fn unstorable(&mut self, id: &str, reason: &str, results: Vec<Settled>) {
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
            // Only workflows with something to do get a draft (a copy of their state): with
            // thousands running, most are waiting on an attempt at any tick.
            if !drafts.contains_key(&id)
                && self.owned.get(&id).is_none_or(|o| {
                    let s = &o.state;
                    o.fail_next.is_none()
                        && (s.status != WorkflowStatus::Running
                            || (!s.is_finished()
                                && !s.is_blocked()
                                && s.ready_steps(now).is_empty()))
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
                    return;
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

    /// Takes in a committed state and launches its attempts; `true` when the workflow should
    /// be released (paused: nothing runs until a person decides, and then any instance may
    /// pick it up).
    fn after_commit(
        &mut self,
        id: &str,
        state: WorkflowState,
        launches: Vec<(String, String)>,
    ) -> bool {
        let status = state.status;
        let Some(owned) = self.owned.get_mut(id) else {
            return false;
        };
        owned.state = state;
        let epoch = owned.fence.epoch;
        for (step_id, task) in launches {
            self.launch(id, &step_id, task, epoch);
        }
        if status.is_terminal() || status == WorkflowStatus::Paused {
            self.drop_owned(id);
        }
        status == WorkflowStatus::Paused
    }

    fn launch(&mut self, workflow_id: &str, step_id: &str, task: String, epoch: i64) {
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
                result: result.map(|out| Produced {
                    output: out.output.into(),
                    session_id: out.session_id,
                }),
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

    /// Takes in what is committed for a workflow this engine holds, after someone else
    /// changed it (a control sent to another instance, which commits through the database):
    /// attempts whose step is no longer running are stopped, and a workflow that is no longer
    /// running is let go (a paused one's lease released, so whoever resumes it may run it).
    pub(super) async fn reload(&mut self, id: &str) -> anyhow::Result<()> {
        match self.store.load(id).await? {
            Some(state) if state.status == WorkflowStatus::Running => {
                if let Some(o) = self.owned.get_mut(id) {
                    let stale: Vec<String> = o
                        .attempts
                        .keys()
                        .filter(|s| {
                            state
                                .step(s)
                                .is_none_or(|st| st.status != cairn::StepStatus::Running)
                        })
                        .cloned()
                        .collect();
                    for s in stale {
                        if let Some(t) = o.attempts.remove(&s) {
                            t.cancel();
                        }
                    }
                    o.state = state;
                }
            }
            Some(state) if state.status == WorkflowStatus::Paused => {
                self.drop_owned(id);
                self.store.release(&self.instance, id).await?;
            }
            _ => self.drop_owned(id),
        }
        Ok(())
    }

    async fn renew_if_due(&mut self) -> anyhow::Result<()> {
        if self.last_renewal.elapsed() < self.settings.lease_ttl / 3 {
            return Ok(());
        }
        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        let ids: Vec<String> = self.owned.keys().cloned().collect();
        let held = self.store.renew(&self.instance, &ids, ttl).await?;
        crate::metrics::leases_lost(ids.len().saturating_sub(held.len()));
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
