//! Whether a change applies: the decisions every backend shares.
//!
//! A backend only reads and writes rows. What it reads for a change — the idempotency key's
//! earlier use, the lease, the workflow's position and state — it hands to [`decide`] through
//! [`Facts`]; what comes back is either why the change is refused or a [`Plan`] of rows to
//! write, with the events already cut to previews, encoded and checked by the fold. So the
//! rules (idempotency, the lease fence, the dry-run fold, the store's size limits) live in
//! one place whatever the database.

use std::sync::Arc;

use cairn::{Event, EventRecord, WorkflowState};
use chrono::SubsecRound;

use super::types::{Change, Fence, Rejection, Stamped};

/// What a backend can tell about the rows a change touches, read inside the transaction
/// that will write it.
pub(super) trait Facts {
    /// The request hash and workflow an idempotency key was first used with.
    async fn idempotency_key(&mut self, key: &str) -> anyhow::Result<Option<(String, String)>>;
    /// The lease on a workflow: owner and epoch.
    async fn lease(&mut self, workflow_id: &str) -> anyhow::Result<Option<(String, i64)>>;
    /// The id of the last event folded into the stored state of a workflow.
    async fn position(&mut self, workflow_id: &str) -> anyhow::Result<Option<i64>>;
    /// The stored state of a workflow.
    async fn state(&mut self, workflow_id: &str) -> anyhow::Result<Option<WorkflowState>>;
}

/// A change that applies: what the backend writes, in order.
pub(super) struct Plan {
    /// The workflow.
    pub workflow_id: String,
    /// Whether the change creates it.
    pub creating: bool,
    /// The state after the events, folded once here; its `last_event_id` is provisional
    /// until the backend gives the events their ids ([`Plan::set_ids`]).
    pub state: WorkflowState,
    /// The events, times kept to the microsecond, outputs and tasks cut to previews.
    pub events: Vec<Stamped>,
    /// Each event as the JSON the log keeps.
    pub encoded: Vec<String>,
    /// The whole outputs behind the previews, by event index, in event order.
    pub outputs: Vec<(usize, Arc<str>)>,
    /// The idempotency key and request hash to record, for a new workflow.
    pub idempotency: Option<(String, String)>,
    /// For a new workflow its creator starts: the lease to take, and for how long.
    pub lease: Option<(Fence, chrono::Duration)>,
}

/// Decides whether `change` applies to what `facts` reads: a [`Plan`] to write, or why not.
/// Nothing is written here; a refused change leaves no trace.
pub(super) async fn decide(
    facts: &mut impl Facts,
    change: Change,
) -> anyhow::Result<Result<Plan, Rejection>> {
    let Change {
        workflow_id,
        fence,
        mut events,
        outputs,
        idempotency,
        base,
        take_lease,
    } = change;
    // Times are kept to the microsecond, in the log and in the state alike, so a state
    // refolded from stored events equals the stored state exactly.
    for s in &mut events {
        s.at = s.at.trunc_subsecs(6);
    }
    // Whole outputs are stored once, beside the log; events carry previews.
    let outputs = match super::split_outputs(&mut events, outputs) {
        Ok(outputs) => outputs,
        Err(reason) => return Ok(Err(Rejection::Unstorable(reason))),
    };

    if let Some((key, hash)) = &idempotency
        && let Some((seen_hash, seen_id)) = facts.idempotency_key(key).await?
    {
        let same = seen_hash == *hash;
        return Ok(Err(Rejection::IdempotentReplay(same.then_some(seen_id))));
    }

    let creating = matches!(
        events.first().map(|s| &s.event),
        Some(Event::WorkflowCreated { .. })
    );
    // A new workflow's creator takes its lease with it; anyone else must still hold theirs.
    let lease = match (&fence, take_lease) {
        (Some(fence), Some(ttl)) if creating => Some((fence.clone(), ttl)),
        (Some(fence), _) if !holds(facts.lease(&workflow_id).await?, fence) => {
            return Ok(Err(Rejection::LeaseLost));
        }
        _ => None,
    };
    // The caller's state is used when it is still current, which saves decoding the stored one.
    let existing = match base {
        Some(base) if !creating => match facts.position(&workflow_id).await? {
            Some(last) if last == base.last_event_id => Some(*base),
            Some(_) => facts.state(&workflow_id).await?,
            None => None,
        },
        _ => facts.state(&workflow_id).await?,
    };
    let state = match (creating, existing) {
        (true, None) => WorkflowState::new(workflow_id.clone()),
        (true, Some(_)) => return Ok(Err(Rejection::Duplicate)),
        (false, Some(s)) => s,
        (false, None) => return Ok(Err(Rejection::UnknownWorkflow)),
    };

    let encoded = match super::encode_events(&events) {
        Ok(encoded) => encoded,
        Err(reason) => return Ok(Err(Rejection::Unstorable(reason))),
    };

    // The fold is the judge of whether these events fit. It runs once: a refused change
    // drops the state it was folding, and the one that applies is the state to store (only
    // its last_event_id depends on the ids, which the backend gives when it writes).
    let mut state = state;
    let first = state.last_event_id + 1;
    for (i, s) in events.iter().enumerate() {
        let rec = EventRecord {
            id: first + i as i64,
            workflow_id: workflow_id.clone(),
            at: s.at,
            event: s.event.clone(),
        };
        if let Err(e) = state.apply(&rec) {
            return Ok(Err(Rejection::DoesNotApply(e)));
        }
    }

    Ok(Ok(Plan {
        workflow_id,
        creating,
        state,
        events,
        encoded,
        outputs,
        idempotency,
        lease,
    }))
}

impl Plan {
    /// Gives the events the log ids from `first` on and takes them out as records, with the
    /// state's `last_event_id` set to the last of them.
    pub fn set_ids(&mut self, first: i64) -> Vec<EventRecord> {
        let records: Vec<EventRecord> = std::mem::take(&mut self.events)
            .into_iter()
            .enumerate()
            .map(|(i, s)| EventRecord {
                id: first + i as i64,
                workflow_id: self.workflow_id.clone(),
                at: s.at,
                event: s.event,
            })
            .collect();
        if let Some(last) = records.last() {
            self.state.last_event_id = last.id;
        }
        records
    }
}

/// Whether the lease row read for a workflow is the one the change was made under.
fn holds(lease: Option<(String, i64)>, fence: &Fence) -> bool {
    lease.is_some_and(|(owner, epoch)| *owner == *fence.owner && epoch == fence.epoch)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::Utc;

    use super::*;

    /// Rows in memory: the decisions need no database to be tested.
    #[derive(Default)]
    struct Rows {
        keys: HashMap<String, (String, String)>,
        leases: HashMap<String, (String, i64)>,
        states: HashMap<String, WorkflowState>,
        state_reads: usize,
    }

    impl Facts for Rows {
        async fn idempotency_key(&mut self, key: &str) -> anyhow::Result<Option<(String, String)>> {
            Ok(self.keys.get(key).cloned())
        }
        async fn lease(&mut self, id: &str) -> anyhow::Result<Option<(String, i64)>> {
            Ok(self.leases.get(id).cloned())
        }
        async fn position(&mut self, id: &str) -> anyhow::Result<Option<i64>> {
            Ok(self.states.get(id).map(|s| s.last_event_id))
        }
        async fn state(&mut self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
            self.state_reads += 1;
            Ok(self.states.get(id).cloned())
        }
    }

    fn created() -> Change {
        let spec = cairn::parse_spec(
            r#"{"steps":[{"id":"a","role":"r","task":"t"}]}"#,
            &cairn::ParseOptions::default(),
        )
        .unwrap();
        Change::created(
            spec,
            None,
            cairn::DEFAULT_WORKSPACE,
            Some(("k".into(), "h1".into())),
        )
    }

    fn started(id: &str, fence: Option<Fence>, base: Option<WorkflowState>) -> Change {
        Change {
            workflow_id: id.into(),
            fence,
            events: vec![Stamped {
                at: Utc::now(),
                event: Event::WorkflowStarted {},
            }],
            outputs: Vec::new(),
            idempotency: None,
            base: base.map(Box::new),
            take_lease: None,
        }
    }

    /// Stores a plan's state as a backend would after writing it.
    fn commit(rows: &mut Rows, mut plan: Plan) {
        let first = plan.state.last_event_id + 1 - plan.events.len() as i64;
        plan.set_ids(first);
        rows.states.insert(plan.workflow_id, plan.state);
    }

    #[tokio::test]
    async fn a_new_workflow_applies_once_and_its_key_answers_replays() {
        let mut rows = Rows::default();
        let change = created();
        let id = change.workflow_id.clone();
        let plan = decide(&mut rows, change.clone()).await.unwrap().unwrap();
        assert!(plan.creating);
        assert_eq!(plan.idempotency, Some(("k".into(), "h1".into())));
        commit(&mut rows, plan);
        let again = decide(&mut rows, change.clone()).await.unwrap();
        assert!(matches!(again, Err(Rejection::Duplicate)));

        rows.keys.insert("k".into(), ("h1".into(), id.clone()));
        let replay = decide(&mut rows, created()).await.unwrap();
        assert!(matches!(replay, Err(Rejection::IdempotentReplay(Some(ref w))) if *w == id));
        let mut other = created();
        other.idempotency = Some(("k".into(), "h2".into()));
        let reused = decide(&mut rows, other).await.unwrap();
        assert!(matches!(reused, Err(Rejection::IdempotentReplay(None))));
    }

    #[tokio::test]
    async fn a_change_under_a_lost_lease_or_that_does_not_fit_is_refused() {
        let mut rows = Rows::default();
        let change = created();
        let id = change.workflow_id.clone();
        let plan = decide(&mut rows, change).await.unwrap().unwrap();
        commit(&mut rows, plan);
        rows.leases.insert(id.clone(), ("e2".into(), 2));
        let stale = Fence {
            owner: "e1".into(),
            epoch: 1,
        };
        let refused = decide(&mut rows, started(&id, Some(stale), None))
            .await
            .unwrap();
        assert!(matches!(refused, Err(Rejection::LeaseLost)));
        let held = Fence {
            owner: "e2".into(),
            epoch: 2,
        };
        let plan = decide(&mut rows, started(&id, Some(held), None))
            .await
            .unwrap()
            .unwrap();
        commit(&mut rows, plan);
        let twice = decide(&mut rows, started(&id, None, None)).await.unwrap();
        assert!(matches!(twice, Err(Rejection::DoesNotApply(_))));
        let unknown = decide(&mut rows, started("wf_nope", None, None))
            .await
            .unwrap();
        assert!(matches!(unknown, Err(Rejection::UnknownWorkflow)));
    }

    #[tokio::test]
    async fn a_current_base_state_saves_reading_the_stored_one() {
        let mut rows = Rows::default();
        let change = created();
        let id = change.workflow_id.clone();
        let plan = decide(&mut rows, change).await.unwrap().unwrap();
        commit(&mut rows, plan);
        let current = rows.states[&id].clone();
        rows.state_reads = 0;
        decide(&mut rows, started(&id, None, Some(current.clone())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.state_reads, 0);
        let mut old = current;
        old.last_event_id -= 1;
        decide(&mut rows, started(&id, None, Some(old)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.state_reads, 1, "an outdated base is read again");
    }
}
