//! The workspace's live list of workflows, shared by the sidebar and the pages.
//!
//! It starts from the server-rendered snapshot and follows `/api/events` from the
//! snapshot's log position. Each workflow's entry holds its folded `WorkflowState` once one
//! is known (from its `workflow.created` event, or fetched the first time an event for it
//! arrives); the summary shown is always `WorkflowSummary::of(state)`, the same derivation
//! the server uses.

use std::collections::BTreeMap;

use cairn::{Event, EventRecord, WorkflowState, WorkflowSummary};
use leptos::prelude::*;

use crate::{data::WorkspaceSnapshot, live::Connection};

/// One workflow in the list.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What the list shows.
    pub summary: WorkflowSummary,
    /// The folded state, once known.
    state: Option<WorkflowState>,
    /// Events that arrived while the state was being fetched.
    pending: Vec<EventRecord>,
    fetching: bool,
}

/// The live workspace, in context.
#[derive(Clone, Copy)]
pub struct Workspace {
    /// Workflows by id.
    pub entries: RwSignal<BTreeMap<String, Entry>>,
    /// The live connection's state.
    pub connection: RwSignal<Connection>,
    /// Whether the snapshot was taken in.
    pub loaded: RwSignal<bool>,
    /// The log position of the snapshot.
    pub after: RwSignal<i64>,
}

impl Workspace {
    /// A new, empty workspace (in context).
    pub fn provide() -> Self {
        let w = Self {
            entries: RwSignal::new(BTreeMap::new()),
            connection: RwSignal::new(Connection::Connecting),
            loaded: RwSignal::new(false),
            after: RwSignal::new(0),
        };
        provide_context(w);
        w
    }

    /// Takes in the server's snapshot (once).
    pub fn load(&self, snap: &WorkspaceSnapshot) {
        if self.loaded.get_untracked() {
            return;
        }
        self.entries.update(|m| {
            for s in &snap.workflows {
                m.insert(
                    s.id.clone(),
                    Entry {
                        summary: s.clone(),
                        state: None,
                        pending: vec![],
                        fetching: false,
                    },
                );
            }
        });
        self.after.set(snap.last_event_id);
        self.loaded.set(true);
    }

    /// Folds one live event in; may start a fetch of the workflow's state.
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    pub fn apply(&self, rec: EventRecord) {
        let id = rec.workflow_id.clone();
        let mut fetch = false;
        self.entries.update(|m| {
            if let Event::WorkflowCreated { .. } = &rec.event {
                let mut state = WorkflowState::new(id.clone());
                if state.apply(&rec).is_ok() {
                    m.insert(
                        id.clone(),
                        Entry {
                            summary: WorkflowSummary::of(&state),
                            state: Some(state),
                            pending: vec![],
                            fetching: false,
                        },
                    );
                }
                return;
            }
            let Some(entry) = m.get_mut(&id) else {
                // Older than the snapshot's list: fetch it to show it.
                m.insert(
                    id.clone(),
                    Entry {
                        summary: placeholder(&id),
                        state: None,
                        pending: vec![rec],
                        fetching: true,
                    },
                );
                fetch = true;
                return;
            };
            match &mut entry.state {
                Some(state) => {
                    if rec.id > state.last_event_id && state.apply(&rec).is_ok() {
                        entry.summary = WorkflowSummary::of(state);
                    }
                }
                None => {
                    entry.pending.push(rec);
                    if !entry.fetching {
                        entry.fetching = true;
                        fetch = true;
                    }
                }
            }
        });
        if fetch {
            self.fetch(id);
        }
    }

    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn fetch(&self, id: String) {
        #[cfg(feature = "hydrate")]
        {
            let me = *self;
            leptos::task::spawn_local(async move {
                let state = crate::data::load_workflow(id.clone()).await;
                me.entries.update(|m| {
                    let Some(entry) = m.get_mut(&id) else { return };
                    entry.fetching = false;
                    if let Ok(Some(mut state)) = state {
                        for rec in std::mem::take(&mut entry.pending) {
                            if rec.id > state.last_event_id {
                                let _ = state.apply(&rec);
                            }
                        }
                        entry.summary = WorkflowSummary::of(&state);
                        entry.state = Some(state);
                    }
                });
            });
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = id;
    }

    /// Opens the live feed after the snapshot (browser only; once).
    pub fn follow(&self, after: i64) {
        #[cfg(feature = "hydrate")]
        {
            let me = *self;
            let stream = crate::live::LiveStream::open(
                "/api/events",
                after,
                move |ty, data, _id| {
                    if ty == "snapshot" {
                        return;
                    }
                    if let Ok(rec) = crate::data::decode::<EventRecord>(data) {
                        me.apply(rec);
                    }
                },
                move |c| me.connection.set(c),
            );
            let keep = send_wrapper::SendWrapper::new(stream);
            on_cleanup(move || keep.close());
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = after;
    }
}

#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn placeholder(id: &str) -> WorkflowSummary {
    WorkflowSummary::of(&WorkflowState::new(id))
}

/// The workspace in context.
pub fn use_workspace() -> Workspace {
    use_context::<Workspace>().unwrap_or_else(Workspace::provide)
}
