//! [`Feed`]: committed events after a cursor, replayed then live, no gap and no duplicate.
//!
//! Why it is gap-free: the feed subscribes to the store's fan-out *before* it reads the
//! database, and the store publishes each event only after its commit, in log order. An
//! event is therefore either already visible to the read (and then skipped when it arrives
//! live, by id) or committed after it (and then in the fan-out's buffer). When the buffer
//! overflows for a slow reader (`Lagged`), the feed reads the database from its cursor again.

use std::{collections::VecDeque, sync::Arc};

use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::store::{EventScope, LiveEvent, Store};

/// Events read from the database per catch-up page.
const PAGE: u32 = 500;

/// A feed of one workflow's events, or of a whole workspace's.
pub struct Feed {
    store: Store,
    workflow_id: Option<String>,
    workspace: Option<String>,
    cursor: i64,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    backlog: VecDeque<Arc<LiveEvent>>,
    catching_up: bool,
}

impl Feed {
    /// Subscribes now to the events of `workflow_id` (or of every workflow) of `workspace`
    /// (or of every workspace); call before reading any snapshot the feed continues from.
    pub fn subscribe(
        store: &Store,
        workflow_id: Option<String>,
        workspace: Option<String>,
    ) -> Self {
        Self {
            live: store.subscribe(),
            store: store.clone(),
            workflow_id,
            workspace,
            cursor: 0,
            backlog: VecDeque::new(),
            catching_up: true,
        }
    }

    /// Starts after `cursor`: events up to it are never yielded, later ones are replayed
    /// from the database first.
    pub fn after(mut self, cursor: i64) -> Self {
        self.cursor = cursor;
        self.catching_up = true;
        self
    }

    fn wanted(&self, e: &LiveEvent) -> bool {
        e.id > self.cursor
            && self
                .workflow_id
                .as_deref()
                .is_none_or(|w| w == e.workflow_id)
            && self.workspace.as_deref().is_none_or(|w| w == e.workspace)
    }

    /// The next event, waiting for one if need be; `None` when the store shut down.
    pub async fn next(&mut self) -> Option<anyhow::Result<Arc<LiveEvent>>> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if self.wanted(&e) {
                    self.cursor = e.id;
                    return Some(Ok(e));
                }
                continue;
            }
            if self.catching_up {
                let scope = EventScope {
                    workflow: self.workflow_id.as_deref(),
                    workspace: self.workspace.as_deref(),
                };
                let page = match self.store.events_after(scope, self.cursor, PAGE).await {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                };
                self.catching_up = page.len() as u32 == PAGE;
                self.backlog.extend(page.into_iter().map(Arc::new));
                continue;
            }
            match self.live.recv().await {
                Ok(e) => {
                    if self.wanted(&e) {
                        self.cursor = e.id;
                        return Some(Ok(e));
                    }
                }
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The feed as a `Stream`.
    pub fn into_stream(self) -> impl Stream<Item = anyhow::Result<Arc<LiveEvent>>> + Send {
        futures::stream::unfold(self, |mut feed| async move {
            let item = feed.next().await?;
            Some((item, feed))
        })
    }
}
