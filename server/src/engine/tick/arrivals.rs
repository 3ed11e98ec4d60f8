//! New workflows arriving at the engine ([`crate::engine::EngineHandle::create`]): started in
//! the very checkpoint that creates them when there is room.

use std::collections::HashMap;

use cairn::{Event, WorkflowState};
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::oneshot;

use super::Draft;
use crate::{
    engine::{Created, Creation, Engine, Owned},
    store::{Change, Fence},
};

/// A new workflow this tick starts: its idempotency key, and where to answer its creator.
pub(super) type Starting = (
    Option<(String, String)>,
    oneshot::Sender<anyhow::Result<Created>>,
);

impl Engine {
    /// Takes the workflows created since the last tick. While there is room to run more, each
    /// is owned at once (its lease is taken by the checkpoint that creates it) and started
    /// here, so `schedule` launches its first steps in that same checkpoint; the others are
    /// only created, for whichever instance has room. Returns the first kind, with each one's
    /// idempotency key and where to answer, and the second.
    pub(in crate::engine::tick) fn take_arrivals(
        &mut self,
        now: DateTime<Utc>,
        drafts: &mut HashMap<String, Draft>,
    ) -> (HashMap<String, Starting>, Vec<Creation>) {
        let mut creating = HashMap::new();
        let mut plain = Vec::new();
        for c in std::mem::take(&mut self.arriving) {
            let id = c.change.workflow_id.clone();
            let room = creating.len() < self.free_slots();
            let fresh = !self.owned.contains_key(&id) && !drafts.contains_key(&id);
            if !room || !fresh || c.change.events.len() != 1 {
                plain.push(c);
                continue;
            }
            let mut draft = Draft::new(WorkflowState::new(id.clone()));
            let Change {
                events,
                idempotency,
                ..
            } = c.change;
            for s in events {
                draft.push(s.at.trunc_subsecs(6), s.event);
            }
            draft.push(now, Event::WorkflowStarted {});
            self.owned.insert(
                id.clone(),
                Owned {
                    state: WorkflowState::new(id.clone()),
                    fence: Fence {
                        owner: self.instance.clone(),
                        epoch: 1,
                    },
                    attempts: HashMap::new(),
                    log_counts: HashMap::new(),
                    whole_outputs: Default::default(),
                    unstorable: 0,
                    fail_next: None,
                },
            );
            drafts.insert(id.clone(), draft);
            creating.insert(id, (idempotency, c.reply));
        }
        (creating, plain)
    }
}
