//! Group commit: one task owns an instance's write path and folds every change that arrives
//! while a commit is in flight into the next transaction.
//!
//! Each commit costs an fsync (SQLite's or Postgres's WAL flush), so N callers each doing
//! their own transaction would queue on the fsync; here they share it. The backend says how
//! a group is written ([`GroupCommit`]). Nobody is answered
//! before the transaction that holds their change has committed; the publisher is woken
//! after each commit to stream what it wrote.
//!
//! The task lives as long as any [`Writer`] handle: when the store is dropped the channel
//! closes and the loop ends.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};

use super::types::{Change, Outcome, Rejection};

/// How a backend writes a group of changes: in one transaction, with one outcome per change
/// in order. An `Err` means nothing of the group was written (I/O, a lost connection) and
/// every caller may try again.
pub(super) trait GroupCommit: Clone + Send + Sync + 'static {
    /// Writes `changes` in one transaction.
    fn commit_changes(
        &self,
        changes: Vec<Change>,
    ) -> impl Future<Output = anyhow::Result<Vec<Outcome>>> + Send;

    /// Whether the database refused a value (too big, a constraint, bytes it cannot hold)
    /// rather than failed: retrying the same change can never succeed.
    fn refused_value(e: &anyhow::Error) -> bool;

    /// Commits the group. If the database refuses a value, nothing of it is kept and its
    /// changes are committed one at a time, so the change at fault is answered
    /// [`Rejection::Unstorable`] and the others commit.
    fn commit_group(
        &self,
        changes: Vec<Change>,
    ) -> impl Future<Output = anyhow::Result<Vec<Outcome>>> + Send {
        async move {
            // Kept for committing one by one, without their base states (the store then reads
            // each state itself): copying every workflow's state for a path taken only on a
            // refusal was about a tenth of a 500-change group's time.
            let kept: Vec<Change> = changes.iter().map(Change::without_base).collect();
            match self.commit_changes(changes).await {
                Err(e) if Self::refused_value(&e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "a checkpoint was refused; committing its changes one by one"
                    );
                }
                done => return done,
            }
            let mut outcomes = Vec::with_capacity(kept.len());
            for change in kept {
                let workflow_id = change.workflow_id.clone();
                match self.commit_changes(vec![change]).await {
                    Ok(mut one) => outcomes.append(&mut one),
                    Err(e) if Self::refused_value(&e) => {
                        tracing::error!(workflow = %workflow_id, error = format!("{e:#}"), "the database refused a change");
                        outcomes.push(Outcome::Rejected(Rejection::Unstorable(format!("{e:#}"))));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(outcomes)
        }
    }
}

/// Requests merged into one transaction at most.
const MAX_GROUP: usize = 256;
/// Commit durations kept for `commit_p50/p95` (a ring of the latest).
const LATENCY_SAMPLES: usize = 100_000;

struct Batch {
    changes: Vec<Change>,
    reply: oneshot::Sender<anyhow::Result<Vec<Outcome>>>,
}

/// The handle callers commit through.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Batch>,
    latencies: Arc<Mutex<Vec<f64>>>,
}

impl Writer {
    /// Starts the writer task on `backend`; after each commit it wakes the publisher through
    /// `published` (see [`super::publisher`]), which closes when the writer stops.
    pub(super) fn start(backend: impl GroupCommit, published: mpsc::Sender<()>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let latencies = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(run(backend, rx, published, latencies.clone()));
        Self { tx, latencies }
    }

    /// Commits `changes` (in one transaction, possibly with other callers' changes) and
    /// answers once it is durable.
    pub async fn commit(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Batch { changes, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the store's writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the store's writer dropped a commit"))?
    }

    /// Durations of recent commits, in milliseconds.
    pub fn commit_latencies_ms(&self) -> Vec<f64> {
        self.latencies.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn run(
    backend: impl GroupCommit,
    mut rx: mpsc::Receiver<Batch>,
    published: mpsc::Sender<()>,
    latencies: Arc<Mutex<Vec<f64>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let sizes: Vec<usize> = group.iter().map(|b| b.changes.len()).collect();
        let changes = group
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.changes))
            .collect();
        let started = Instant::now();
        let result = backend.commit_group(changes).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(mut l) = latencies.lock() {
            if l.len() >= LATENCY_SAMPLES {
                l.clear();
            }
            l.push(ms);
        }
        match &result {
            Ok(outcomes) => {
                crate::metrics::checkpoint(started.elapsed(), sizes.iter().sum(), outcomes)
            }
            Err(_) => crate::metrics::checkpoint_failed(),
        }
        match result {
            Ok(outcomes) => {
                // Full means a wake-up is pending already: the publisher reads it all.
                let _ = published.try_send(());
                let mut outcomes = outcomes.into_iter();
                for (batch, n) in group.into_iter().zip(sizes) {
                    let _ = batch.reply.send(Ok(outcomes.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "checkpoint failed");
                for batch in group {
                    let _ = batch
                        .reply
                        .send(Err(anyhow::anyhow!("checkpoint failed: {e:#}")));
                }
            }
        }
    }
}
