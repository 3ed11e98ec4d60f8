//! Claiming workflows: new ones another instance created, and stalled ones whose owner
//! stopped renewing its lease.

use std::collections::HashMap;

use cairn::{Event, WorkflowStatus};
use chrono::{DateTime, Utc};

use super::{CLAIM_BATCH, Draft};
use crate::engine::{Engine, Owned};

impl Engine {
    /// Claims up to [`CLAIM_BATCH`] workflows no live engine holds: pending ones are started,
    /// and ones whose owner stopped renewing are marked stalled and resumed here, so their
    /// interrupted attempts run again. Returns the ids claimed.
    pub(super) async fn claim(
        &mut self,
        now: DateTime<Utc>,
        drafts: &mut HashMap<String, Draft>,
    ) -> anyhow::Result<Vec<String>> {
        let steal = self.first_claim && self.settings.steal_on_start;
        let ttl = chrono::Duration::from_std(self.settings.lease_ttl)?;
        let claimed = self
            .store
            .claim(&self.instance, ttl, CLAIM_BATCH, steal)
            .await?;
        self.first_claim = false;
        self.claim_due = claimed.len() as u32 == CLAIM_BATCH;
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
