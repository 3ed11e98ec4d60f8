//! What the engine and the HTTP layer exchange with the store, whatever the backend.

use std::sync::Arc;

pub use cairn::WorkflowSummary;
use cairn::{ApplyError, Event, EventRecord, WorkflowState, WorkflowStatus};
use chrono::{DateTime, Utc};

/// The lease under which a change is made: it is committed only if `owner` still holds the
/// workflow at `epoch`. A change from an engine that lost the workflow is discarded, so a
/// step result can never be committed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The engine instance that holds the lease.
    pub owner: Arc<str>,
    /// The lease's epoch, incremented at every takeover.
    pub epoch: i64,
}

/// An event and the time it happened.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub event: Event,
}

/// One workflow's events to commit together.
#[derive(Debug, Clone)]
pub struct Change {
    /// The workflow.
    pub workflow_id: String,
    /// The lease that must still hold; `None` for a new workflow and for manual controls.
    pub fence: Option<Fence>,
    /// Events in order.
    pub events: Vec<Stamped>,
    /// The whole outputs behind the previews some of `events` carry, by event index (an event
    /// may instead carry its whole output; the store then cuts it itself).
    pub outputs: Vec<(usize, Arc<str>)>,
    /// For a new workflow: the `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    /// The state the events were decided on, if the caller has it. Used instead of reading
    /// the stored state when it is still current (same `last_event_id`), which saves
    /// decoding it inside the transaction.
    pub base: Option<Box<WorkflowState>>,
    /// For a new workflow that its creator starts at once: take the lease `fence` names for
    /// this long in the same transaction (nobody else can hold a workflow that did not exist).
    pub take_lease: Option<chrono::Duration>,
}

impl Change {
    /// A copy without the base state (see [`Change::base`]): the store then reads the state
    /// itself.
    pub fn without_base(&self) -> Self {
        Self {
            workflow_id: self.workflow_id.clone(),
            fence: self.fence.clone(),
            events: self.events.clone(),
            outputs: self.outputs.clone(),
            idempotency: self.idempotency.clone(),
            base: None,
            take_lease: self.take_lease,
        }
    }

    /// The change that creates a workflow in `workspace`: a new id (`wf_…`) and its
    /// `workflow.created`.
    pub fn created(
        spec: cairn::ValidSpec,
        by: Option<String>,
        workspace: &str,
        idempotency: Option<(String, String)>,
    ) -> Self {
        let workspace = (workspace != cairn::DEFAULT_WORKSPACE).then(|| workspace.to_string());
        Self {
            workflow_id: format!("wf_{}", uuid::Uuid::new_v4().simple()),
            fence: None,
            events: vec![Stamped {
                at: chrono::Utc::now(),
                event: Event::WorkflowCreated {
                    spec,
                    by,
                    workspace,
                },
            }],
            outputs: Vec::new(),
            idempotency,
            base: None,
            take_lease: None,
        }
    }
}

/// What became of a [`Change`].
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Durable: the events with their log ids, and the state they folded into.
    Committed {
        /// The events as stored.
        records: Vec<EventRecord>,
        /// The workflow after them.
        state: Box<WorkflowState>,
    },
    /// Not written; nothing of this change is in the database.
    Rejected(Rejection),
}

/// Why a change was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejection {
    /// The writer no longer holds the workflow's lease.
    #[error("the lease on this workflow is held by another engine")]
    LeaseLost,
    /// No such workflow.
    #[error("no such workflow")]
    UnknownWorkflow,
    /// A new workflow's id exists already.
    #[error("a workflow with this id exists")]
    Duplicate,
    /// The idempotency key was used before: with the same request (the workflow it made), or
    /// with a different one (`None`).
    #[error("idempotency key already used")]
    IdempotentReplay(Option<String>),
    /// An event does not fit the workflow's current state.
    #[error(transparent)]
    DoesNotApply(#[from] ApplyError),
    /// The store cannot hold this change (an event or an output over its size limits, a
    /// value the database refuses). Nothing of it was written; the reason says what.
    #[error("the change cannot be stored: {0}")]
    Unstorable(String),
}

/// Filters of the workflow list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<WorkflowStatus>,
    /// At most this many (the caller bounds it).
    pub limit: u32,
    /// Only workflows created before this one (pagination cursor: the last id of a page).
    pub before: Option<String>,
    /// Only this workspace's (`None`: every workspace's).
    pub workspace: Option<String>,
}

/// Which events a read of the log returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventScope<'a> {
    /// Only this workflow's (`None`: every workflow's).
    pub workflow: Option<&'a str>,
    /// Only this workspace's (`None`: every workspace's).
    pub workspace: Option<&'a str>,
}

/// A workflow this engine has just taken a lease on.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Its state as committed.
    pub state: WorkflowState,
    /// The lease.
    pub fence: Fence,
    /// Who held it before, if anyone: a takeover from a dead or stuck engine.
    pub previous_owner: Option<String>,
}

/// A committed event on its way to live streams, with its JSON encoded once for every
/// subscriber (thousands of clients share one serialisation).
#[derive(Debug)]
pub struct LiveEvent {
    /// The event.
    pub record: EventRecord,
    /// `record` as JSON.
    pub json: String,
    /// The workspace of its workflow: a stream shows it only to that workspace.
    pub workspace: String,
}

impl LiveEvent {
    /// Wraps a record of a workflow of `workspace`, encoding it.
    pub fn new(record: EventRecord, workspace: String) -> Self {
        let json = serde_json::to_string(&record).unwrap_or_default();
        Self {
            record,
            json,
            workspace,
        }
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = EventRecord;
    fn deref(&self) -> &EventRecord {
        &self.record
    }
}
