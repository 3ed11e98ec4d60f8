//! [`WorkflowSummary`]: the one-line view of a workflow that lists and sidebars show.
//!
//! Derived from a [`WorkflowState`], never folded on its own, so a list entry and the
//! full view of a workflow cannot disagree.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::state::{Progress, WorkflowState, WorkflowStatus};

/// A row of the workflow list.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct WorkflowSummary {
    /// Workflow id.
    pub id: String,
    /// Spec name.
    pub name: String,
    /// Current status.
    pub status: WorkflowStatus,
    /// Done / total and friends.
    pub progress: Progress,
    /// Steps running or waiting for a retry.
    pub current_steps: Vec<String>,
    /// The earliest pending retry, if a step is backing off.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The workflow's error, when it failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: Option<DateTime<Utc>>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished (completed, failed or cancelled).
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: Option<DateTime<Utc>>,
    /// The last event folded into it.
    pub last_event_id: i64,
}

impl WorkflowSummary {
    /// The summary of a state.
    pub fn of(state: &WorkflowState) -> Self {
        Self {
            id: state.id.clone(),
            name: state.name.clone(),
            status: state.status,
            progress: state.progress(),
            current_steps: state.current_steps().iter().map(|s| s.id.clone()).collect(),
            next_attempt_at: state.next_wake(),
            error: state.error.clone(),
            created_at: state.created_at,
            started_at: state.started_at,
            finished_at: state.finished_at,
            updated_at: state.updated_at,
            last_event_id: state.last_event_id,
        }
    }
}
