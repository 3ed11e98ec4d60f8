//! A group commit as sets: what both backends share.
//!
//! A group is split into rounds in which each workflow appears once ([`rounds`]); each round
//! reads the rows it needs in bulk (positions, leases, idempotency keys), [`decide`]s every
//! change on them ([`decide_round`]), then turns the plans into one array of rows per table
//! ([`Rows`]) that the backend writes with one statement each (Postgres: an `UNNEST` of the
//! arrays; SQLite: multi-row `VALUES`, one statement per 2,000 rows). So a round costs a
//! constant number of round trips however many changes it carries (plus one per change that
//! does not bring the state it was decided from, such as a control from an instance that
//! does not run the workflow).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use anyhow::Context;
use cairn::WorkflowState;
use chrono::{DateTime, Utc};

use super::{
    decide::{Facts, Plan, decide},
    types::{Change, Fence, Outcome, Rejection},
};

/// Splits a group into rounds in which each workflow appears at most once (a change's
/// decision depends on the state the one before it left), each with its changes' positions
/// in the group.
pub(super) fn rounds(changes: Vec<Change>) -> Vec<(Vec<usize>, Vec<Change>)> {
    let mut pending: Vec<(usize, Change)> = changes.into_iter().enumerate().collect();
    let mut rounds = Vec::new();
    while !pending.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(_, c)| seen.insert(c.workflow_id.clone()));
        rounds.push(round.into_iter().unzip());
        pending = later;
    }
    rounds
}

/// A group's outcomes, filled round by round, answered in the group's order.
pub(super) struct Outcomes(Vec<Option<Outcome>>);

impl Outcomes {
    pub fn new(changes: usize) -> Self {
        Self(vec![None; changes])
    }

    /// Puts a round's outcomes at its changes' positions (see [`rounds`]).
    pub fn fill(&mut self, slots: Vec<usize>, results: Vec<Outcome>) {
        for (slot, outcome) in slots.into_iter().zip(results) {
            self.0[slot] = Some(outcome);
        }
    }

    pub fn finish(self) -> anyhow::Result<Vec<Outcome>> {
        self.0
            .into_iter()
            .map(|o| o.context("a change was left without an outcome"))
            .collect()
    }
}

/// The sorted, distinct workflow ids and idempotency keys a round touches.
pub(super) fn touched(changes: &[Change]) -> (Vec<String>, Vec<String>) {
    let ids: BTreeSet<String> = changes.iter().map(|c| c.workflow_id.clone()).collect();
    let keys: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| c.idempotency.as_ref().map(|(k, _)| k.clone()))
        .collect();
    (ids.into_iter().collect(), keys.into_iter().collect())
}

/// Reads a stored workflow state inside the transaction (only for a change whose caller's
/// state is outdated).
pub(super) trait LoadState {
    async fn load_state(&mut self, id: &str) -> anyhow::Result<Option<WorkflowState>>;
}

/// What [`decide`] reads: rows read once for the whole round, plus what the round's earlier
/// changes did (an idempotency key used twice in one group).
pub(super) struct RoundFacts<'c, C> {
    pub conn: &'c mut C,
    /// `last_event_id` of the round's existing workflows.
    pub positions: HashMap<String, i64>,
    /// Owner and epoch of their leases.
    pub leases: HashMap<String, (String, i64)>,
    /// Request hash and workflow of the round's idempotency keys already used.
    pub keys: HashMap<String, (String, String)>,
}

impl<C: LoadState> Facts for RoundFacts<'_, C> {
    async fn idempotency_key(&mut self, key: &str) -> anyhow::Result<Option<(String, String)>> {
        Ok(self.keys.get(key).cloned())
    }

    async fn lease(&mut self, workflow_id: &str) -> anyhow::Result<Option<(String, i64)>> {
        Ok(self.leases.get(workflow_id).cloned())
    }

    async fn position(&mut self, workflow_id: &str) -> anyhow::Result<Option<i64>> {
        Ok(self.positions.get(workflow_id).copied())
    }

    async fn state(&mut self, workflow_id: &str) -> anyhow::Result<Option<WorkflowState>> {
        if !self.positions.contains_key(workflow_id) {
            return Ok(None);
        }
        self.conn.load_state(workflow_id).await
    }
}

/// Decides every change of a round on `facts`, in order.
pub(super) async fn decide_round<C: LoadState>(
    facts: &mut RoundFacts<'_, C>,
    changes: Vec<Change>,
) -> anyhow::Result<Vec<Result<Plan, Rejection>>> {
    let mut decided = Vec::with_capacity(changes.len());
    for change in changes {
        let plan = decide(facts, change).await?;
        if let Ok(plan) = &plan
            && let Some((key, hash)) = &plan.idempotency
        {
            facts
                .keys
                .insert(key.clone(), (hash.clone(), plan.workflow_id.clone()));
        }
        decided.push(plan);
    }
    Ok(decided)
}

/// How many events the plans of a round append.
pub(super) fn event_count(decided: &[Result<Plan, Rejection>]) -> i64 {
    decided
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .map(|p| p.events.len() as i64)
        .sum()
}

/// The rows of one round, as arrays, one per column.
#[derive(Default)]
pub(super) struct Rows {
    pub event_ids: Vec<i64>,
    pub event_workflows: Vec<String>,
    pub event_types: Vec<&'static str>,
    pub event_ats: Vec<DateTime<Utc>>,
    pub event_data: Vec<String>,
    pub output_events: Vec<i64>,
    pub output_workflows: Vec<String>,
    pub output_steps: Vec<String>,
    pub output_bytes: Vec<i64>,
    pub outputs: Vec<std::sync::Arc<str>>,
    pub wf_ids: Vec<String>,
    pub wf_names: Vec<String>,
    pub wf_statuses: Vec<&'static str>,
    pub wf_states: Vec<String>,
    /// The spec of a workflow being created (written once), `None` for the others.
    pub wf_specs: Vec<Option<String>>,
    /// The workspace (written at creation only).
    pub wf_workspaces: Vec<String>,
    pub wf_created: Vec<DateTime<Utc>>,
    pub wf_updated: Vec<DateTime<Utc>>,
    pub wf_last: Vec<i64>,
    pub wf_wake: Vec<Option<DateTime<Utc>>>,
    pub step_workflows: Vec<String>,
    pub step_ids: Vec<String>,
    pub step_statuses: Vec<&'static str>,
    pub step_attempts: Vec<i64>,
    pub step_sessions: Vec<Option<String>>,
    pub step_next: Vec<Option<DateTime<Utc>>>,
    pub step_updated: Vec<DateTime<Utc>>,
    pub key_keys: Vec<String>,
    pub key_hashes: Vec<String>,
    pub key_workflows: Vec<String>,
    pub key_created: Vec<DateTime<Utc>>,
    pub lease_workflows: Vec<String>,
    pub lease_owners: Vec<String>,
    pub lease_epochs: Vec<i64>,
    pub lease_ttls_ms: Vec<i64>,
    /// Workflows that finished: their leases are deleted.
    pub finished: Vec<String>,
}

impl Rows {
    /// Gives the round's events the ids from `first` on, folds them, and returns the rows to
    /// write with one outcome per change.
    pub fn build(
        decided: Vec<Result<Plan, Rejection>>,
        first: i64,
    ) -> anyhow::Result<(Self, Vec<Outcome>)> {
        let mut rows = Rows::default();
        let mut next = first;
        let mut outcomes = Vec::with_capacity(decided.len());
        for d in decided {
            outcomes.push(match d {
                Ok(plan) => rows.add(plan, &mut next)?,
                Err(r) => Outcome::Rejected(r),
            });
        }
        Ok((rows, outcomes))
    }

    fn add(&mut self, mut plan: Plan, next: &mut i64) -> anyhow::Result<Outcome> {
        let records = plan.set_ids(*next);
        *next += records.len() as i64;
        let Plan {
            workflow_id,
            creating,
            mut state,
            encoded,
            outputs,
            idempotency,
            lease,
            ..
        } = plan;
        let mut outputs = outputs.into_iter().peekable();
        let mut touched = BTreeSet::new();
        for (i, (rec, data)) in records.iter().zip(encoded).enumerate() {
            if let Some(step) = rec.event.step_id() {
                touched.insert(step.to_string());
            }
            self.event_ids.push(rec.id);
            self.event_workflows.push(workflow_id.clone());
            self.event_types.push(rec.event.type_name());
            self.event_ats.push(rec.at);
            self.event_data.push(data);
            if let Some((_, output)) = outputs.next_if(|(k, _)| *k == i) {
                self.output_events.push(rec.id);
                self.output_workflows.push(workflow_id.clone());
                self.output_steps
                    .push(rec.event.step_id().unwrap_or_default().to_string());
                self.output_bytes.push(output.len() as i64);
                self.outputs.push(output);
            }
        }

        let now = state.updated_at.unwrap_or_else(Utc::now);
        self.wf_ids.push(state.id.clone());
        self.wf_names.push(state.name.clone());
        self.wf_statuses.push(state.status.as_str());
        let (json, spec) = encode_state(&mut state, creating)?;
        self.wf_states.push(json);
        self.wf_specs.push(spec);
        self.wf_workspaces.push(state.workspace.clone());
        self.wf_created.push(state.created_at.unwrap_or(now));
        self.wf_updated.push(now);
        self.wf_last.push(state.last_event_id);
        self.wf_wake.push(state.next_wake());
        // A manual retry resets descendants too, so on anything but a plain step event all
        // steps are rewritten; otherwise only the ones the events named.
        for step in &state.steps {
            if !creating && !touched.is_empty() && !touched.contains(&step.id) {
                continue;
            }
            self.step_workflows.push(state.id.clone());
            self.step_ids.push(step.id.clone());
            self.step_statuses.push(step.status.as_str());
            self.step_attempts.push(step.attempt as i64);
            self.step_sessions.push(step.session_id.clone());
            self.step_next.push(step.next_attempt_at);
            self.step_updated.push(now);
        }
        if let Some((key, hash)) = idempotency {
            self.key_keys.push(key);
            self.key_hashes.push(hash);
            self.key_workflows.push(workflow_id.clone());
            self.key_created.push(now);
        }
        // (A workflow that ends in the change that creates it needs no lease.)
        if let Some((Fence { owner, epoch }, ttl)) = lease
            && !state.status.is_terminal()
        {
            self.lease_workflows.push(workflow_id.clone());
            self.lease_owners.push(owner.to_string());
            self.lease_epochs.push(epoch);
            self.lease_ttls_ms.push(ttl.num_milliseconds());
        }
        if state.status.is_terminal() {
            self.finished.push(workflow_id);
        }
        Ok(Outcome::Committed {
            records,
            state: Box::new(state),
        })
    }
}

/// A state as stored: its JSON without the spec (rewritten at every checkpoint, so kept
/// small) and, when `creating`, the spec's JSON, written once beside it.
fn encode_state(
    state: &mut WorkflowState,
    creating: bool,
) -> anyhow::Result<(String, Option<String>)> {
    let spec = state.spec.take();
    let json = serde_json::to_string(&*state).context("encoding a workflow state");
    state.spec = spec;
    let spec = match (&state.spec, creating) {
        (Some(spec), true) => Some(serde_json::to_string(spec).context("encoding a spec")?),
        _ => None,
    };
    Ok((json?, spec))
}

/// A stored state put back together with its spec (rows written before the spec was stored
/// apart carry it inside `state`).
pub(super) fn decode_state(state: &str, spec: Option<&str>) -> anyhow::Result<WorkflowState> {
    let mut decoded: WorkflowState =
        serde_json::from_str(state).context("decoding a stored workflow state")?;
    if let Some(spec) = spec {
        decoded.spec = Some(Arc::new(
            serde_json::from_str(spec).context("decoding a stored spec")?,
        ));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use cairn::EventRecord;

    use super::*;

    #[test]
    fn a_state_is_stored_without_its_spec_and_read_back_whole() {
        let spec = cairn::parse_spec(
            r#"{"steps":[{"id":"a","role":"r","task":"t"}]}"#,
            &cairn::ParseOptions::default(),
        )
        .unwrap();
        let mut state = WorkflowState::new("wf_1");
        let created = EventRecord::new(
            1,
            "wf_1",
            Utc::now(),
            cairn::Event::WorkflowCreated {
                spec,
                by: None,
                workspace: None,
            },
        );
        state.apply(&created).unwrap();
        let whole = serde_json::to_string(&state).unwrap();
        let (json, spec) = encode_state(&mut state, true).unwrap();
        assert!(json.len() < whole.len() && !json.contains("\"task\":\"t\""));
        assert!(state.spec.is_some(), "the state in memory keeps its spec");
        assert_eq!(decode_state(&json, spec.as_deref()).unwrap(), state);
        // Later checkpoints do not write the spec again; rows from before keep it inside.
        assert_eq!(encode_state(&mut state, false).unwrap().1, None);
        assert_eq!(decode_state(&whole, None).unwrap(), state);
    }
}
