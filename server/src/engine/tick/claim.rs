//! Claiming workflows: new ones another instance created, and stalled ones whose owner
//! stopped renewing its lease.

use std::collections::HashMap;

use cairn::{Event, WorkflowStatus};
use chrono::{DateTime, Utc};

use super::{CLAIM_BATCH, Draft};
use crate::engine::{Engine, Owned};

impl Engine {
    /// Claims workflows no live engine holds, as many as it has free slots (at most
    /// [`CLAIM_BATCH`]): pending ones are started, and ones whose owner stopped renewing are
    /// marked stalled and resumed here, so their interrupted attempts run again. An engine
    /// takes only what it can start now, so that work waits in the database, where any
    /// instance with room takes it, rather than behind this one's busy slots. Returns the ids
    /// claimed.
    pub(super) async fn claim(
        &mut self,
        now: DateTime<Utc>,
        drafts: &mut HashMap<String, Draft>,
    ) -> anyhow::Result<Vec<String>> {
        let limit = CLAIM_BATCH.min(u32::try_from(self.free_slots()).unwrap_or(u32::MAX));
        if limit == 0 {
            // Still due: the next tick after a slot frees claims.
            return Ok(Vec::new());
        }
        // Only where this process is the database's one owner is any other owner dead.
        let steal = self.stealing && self.settings.steal_on_start && self.store.single_owner();
        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        let claimed = self.store.claim(&self.instance, ttl, limit, steal).await?;
        let more = claimed.len() as u32 == limit;
        // At start-up, the leases of an earlier process are taken until none is left.
        self.stealing &= more;
        self.claim_due = more;
        let mut ids = Vec::with_capacity(claimed.len());
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
                            format!(
                                "the engine running it ({prev}) stopped, or stopped renewing its lease"
                            )
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
                    whole_outputs: Default::default(),
                    unstorable: 0,
                    fail_next: None,
                },
            );
            ids.push(id.clone());
            drafts.insert(id, draft);
        }
        Ok(ids)
    }
}
