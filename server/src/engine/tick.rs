//! One turn of the engine loop: [`Engine::tick`].
//!
//! A turn takes in what happened, drafts each workflow's events (`claim`, `arrivals`,
//! `fold`, `schedule`, each folding into a [`draft::Draft`]), commits every draft in one
//! checkpoint, and then takes in what the store committed and launches attempts (`launch`).

mod arrivals;
mod claim;
mod draft;
mod fold;
mod launch;
mod schedule;

use std::collections::HashMap;

use cairn::{WorkflowState, WorkflowStatus};
use chrono::{SubsecRound, Utc};

use self::{
    arrivals::Starting,
    draft::{Draft, Settled},
};
use super::{Created, Engine, Finished, TickOutcome};
use crate::store::{Change, Outcome, Rejection};

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

impl Engine {
    /// One deterministic turn: renew leases, take over orphaned workflows, fold finished
    /// attempts and log lines into events, start ready steps, and commit it all in one
    /// transaction. Attempts are spawned only after their `step.started` is durable.
    pub async fn tick(&mut self) -> anyhow::Result<TickOutcome> {
        // The store keeps microseconds; deciding with them keeps drafts and stored states equal.
        let now = Utc::now().trunc_subsecs(6);
        let mut outcome = TickOutcome::default();
        self.take_in().await?;

        let mut drafts: HashMap<String, Draft> = HashMap::new();
        let claimed = if self.claim_due {
            self.claim(now, &mut drafts).await?
        } else {
            Vec::new()
        };
        outcome.claimed = claimed.len();
        // New workflows: started in the checkpoint that creates them when there is room.
        while let Ok(c) = self.creations.try_recv() {
            self.arriving.push(c);
        }
        let (mut creating, plain) = self.take_arrivals(now, &mut drafts);
        if let Err(e) = self.load_whole_outputs().await {
            self.let_go(&claimed).await;
            self.refuse_arrivals(&e, creating, plain.into_iter().map(|c| c.reply));
            return Err(e);
        }
        self.launch_unlaunched();
        // Kept until the commit is durable: if it fails, the results are folded again at the
        // next tick instead of being lost (which would leave their steps running forever).
        let results = self.finished.clone();
        self.fold_logs(now, &mut drafts);
        outcome.finished = self.fold_finished(now, &mut drafts);
        self.schedule(now, &mut drafts);

        let changes = self.changes(drafts, &mut creating)?;
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
                self.give_back_lines(drafts.into_iter().flat_map(|d| d.lines).collect());
                // The new workflows' leases too: if only the answer was lost, they exist,
                // and a claim starts them over rather than after the lease's TTL.
                let mut taken = claimed;
                taken.extend(creating.keys().cloned());
                self.let_go(&taken).await;
                self.refuse_arrivals(&e, creating, plain_replies);
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
            self.settle(&id, draft, result, &results, &mut outcome)
                .await;
        }
        Ok(outcome)
    }

    /// Answers the creators of a tick whose checkpoint failed with the reason, and forgets
    /// the new workflows it would have started: nothing of them was written.
    fn refuse_arrivals(
        &mut self,
        e: &anyhow::Error,
        creating: HashMap<String, Starting>,
        plain: impl IntoIterator<Item = tokio::sync::oneshot::Sender<anyhow::Result<Created>>>,
    ) {
        for (id, (_, reply)) in creating {
            self.drop_owned(&id);
            let _ = reply.send(Err(anyhow::anyhow!("checkpoint failed: {e:#}")));
        }
        for reply in plain {
            let _ = reply.send(Err(anyhow::anyhow!("checkpoint failed: {e:#}")));
        }
    }

    /// Lets go of workflows claimed in a tick whose checkpoint failed: their first events
    /// (started, or stalled and resumed) were in it, so holding them would leave them
    /// unstarted with their lease renewed forever. Their leases are given back so that the
    /// next claim (this engine's, or another's) starts over; if the database cannot be
    /// reached to do so, they expire.
    async fn let_go(&mut self, claimed: &[String]) {
        for id in claimed {
            self.drop_owned(id);
        }
        for id in claimed {
            if let Err(e) = self.store.release(&self.instance, id).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "giving back leases; they will expire instead"
                );
                break;
            }
        }
        self.claim_due = true;
    }

    /// Takes in what happened since the last tick without waiting: finished attempts, log
    /// lines, lease renewals when due, and workflows someone else changed.
    async fn take_in(&mut self) -> anyhow::Result<()> {
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
        let mut changed = std::mem::take(&mut self.changed_elsewhere).into_iter();
        while let Some(id) = changed.next() {
            if let Err(e) = self.reload(&id).await {
                // Tried again at the next tick, with the ones not reached.
                self.changed_elsewhere.insert(id);
                self.changed_elsewhere.extend(changed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The drafts with events, as changes for the store, each beside its draft. A new
    /// workflow's change takes its lease and carries its idempotency key; any other's carries
    /// the state it was decided from, so the store folds from it instead of reading it back.
    fn changes(
        &self,
        drafts: HashMap<String, Draft>,
        creating: &mut HashMap<String, Starting>,
    ) -> anyhow::Result<Vec<(Change, Draft)>> {
        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        Ok(drafts
            .into_iter()
            .filter(|(_, d)| !d.events.is_empty())
            .filter_map(|(id, mut d)| {
                let fence = self.owned.get(&id)?.fence.clone();
                let new = creating.get_mut(&id);
                let is_new = new.is_some();
                Some((
                    Change {
                        fence: Some(fence),
                        events: std::mem::take(&mut d.events),
                        outputs: std::mem::take(&mut d.outputs),
                        idempotency: new.and_then(|(idempotency, _)| idempotency.take()),
                        base: (!is_new).then(|| {
                            Box::new(std::mem::replace(&mut d.base, WorkflowState::new("")))
                        }),
                        take_lease: is_new.then_some(ttl),
                        workflow_id: id,
                    },
                    d,
                ))
            })
            .collect())
    }

    /// What the store said of one workflow's change: committed (its attempts launched),
    /// refused as unstorable (its results become failed attempts), or refused because the
    /// workflow is no longer this engine's as drafted. `results` are the attempt results this
    /// tick took in, of every workflow. A store error here is logged and left for a later
    /// tick, never returned: the other workflows of the checkpoint must still be settled
    /// (their attempts launched), whatever happens to this one.
    async fn settle(
        &mut self,
        id: &str,
        draft: Draft,
        result: Outcome,
        results: &[Finished],
        outcome: &mut TickOutcome,
    ) {
        match result {
            Outcome::Committed { records, state } => {
                outcome.events += records.len();
                outcome.started += draft.launches.len();
                if let Some(o) = self.owned.get_mut(id) {
                    o.unstorable = 0;
                }
                if self.after_commit(id, *state, draft.launches)
                    && let Err(e) = self.store.release(&self.instance, id).await
                {
                    // Paused: whoever resumes it claims it once the lease has expired.
                    tracing::warn!(workflow = %id, error = format!("{e:#}"), "releasing a paused workflow; its lease will expire instead");
                }
            }
            Outcome::Rejected(Rejection::Unstorable(reason)) => {
                self.unstorable(id, &reason, draft.results);
            }
            Outcome::Rejected(Rejection::LeaseLost) => {
                tracing::warn!(workflow = %id, "lease lost: another engine took the workflow over");
                self.drop_owned(id);
            }
            Outcome::Rejected(other) => {
                // Someone changed the workflow under us (a control from elsewhere): start
                // again from what is committed.
                tracing::warn!(workflow = %id, reason = %other, "change refused; reloading the workflow");
                if let Err(e) = self.reload(id).await {
                    tracing::warn!(workflow = %id, error = format!("{e:#}"), "reloading a workflow; trying again at the next tick");
                    self.changed_elsewhere.insert(id.to_string());
                }
                // The refused change carried its attempts' results: fold them again, on what is
                // committed now, at the next tick (where the change made one stale, it is dropped
                // there). Lost, they would leave their steps running with nothing running them.
                self.finished
                    .extend(results.iter().filter(|f| f.workflow_id == id).cloned());
                self.give_back_lines(draft.lines);
            }
        }
    }

    /// The draft of workflow `id`, begun from a copy of its state on first use; `None` when
    /// this engine does not hold it.
    fn draft<'a>(&self, drafts: &'a mut HashMap<String, Draft>, id: &str) -> Option<&'a mut Draft> {
        if !drafts.contains_key(id) {
            let owned = self.owned.get(id)?;
            drafts.insert(id.to_string(), Draft::new(owned.state.clone()));
        }
        drafts.get_mut(id)
    }

    /// Forgets a workflow and stops its attempts.
    pub(super) fn drop_owned(&mut self, id: &str) {
        if let Some(owned) = self.owned.remove(id) {
            for launched in owned.attempts.values() {
                launched.cancel.cancel();
            }
        }
    }

    /// Takes in what is committed for a workflow this engine holds, after someone else
    /// changed it (a control sent to another instance, which commits through the database)
    /// or after a checkpoint of it failed: attempts whose step is no longer running are
    /// stopped, steps running without an attempt are launched before the next decision
    /// ([`Engine::launch_unlaunched`]), and a workflow that is no longer running is let go (a
    /// paused one's lease released, so whoever resumes it may run it).
    pub(super) async fn reload(&mut self, id: &str) -> anyhow::Result<()> {
        match self.store.load(id).await? {
            Some(state) if state.status == WorkflowStatus::Running => {
                if let Some(o) = self.owned.get_mut(id) {
                    o.take_state(state);
                }
                self.note_unlaunched(id);
            }
            Some(state) if state.status == WorkflowStatus::Paused => {
                self.drop_owned(id);
                self.store.release(&self.instance, id).await?;
            }
            _ => self.drop_owned(id),
        }
        Ok(())
    }

    /// Notes workflow `id` for [`Engine::launch_unlaunched`] if its state, as read back or
    /// answered by the store, has a step running that this engine runs nothing for.
    pub(super) fn note_unlaunched(&mut self, id: &str) {
        if self
            .owned
            .get(id)
            .is_some_and(|o| o.unlaunched().next().is_some())
        {
            self.unlaunched.insert(id.to_string());
        }
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
