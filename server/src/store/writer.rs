//! Group commit: one task owns the write path and folds every change that arrives while a
//! commit is in flight into the next transaction.
//!
//! SQLite has one writer at a time and each commit costs an fsync, so N callers each doing
//! their own transaction would queue on the fsync; here they share it. Nobody is answered
//! before the transaction that holds their change has committed; the publisher is woken
//! after each commit to stream what it wrote.
//!
//! The task lives as long as any [`Writer`] handle: when the store is dropped the channel
//! closes and the loop ends.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context;
use sqlx::Acquire;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{
    sqlite_ops,
    types::{Change, Outcome, Rejection},
};

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
    /// Starts the writer task on `pool`; after each commit it wakes the publisher through
    /// `published` (see [`super::publisher`]), which closes when the writer stops.
    pub fn start(pool: SqlitePool, published: mpsc::Sender<()>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let latencies = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(run(pool, rx, published, latencies.clone()));
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
    pool: SqlitePool,
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
        let started = Instant::now();
        let result = commit_group(&pool, &mut group).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(mut l) = latencies.lock() {
            if l.len() >= LATENCY_SAMPLES {
                l.clear();
            }
            l.push(ms);
        }
        match result {
            Ok(outcomes) => {
                // Full means a wake-up is pending already: the publisher reads it all.
                let _ = published.try_send(());
                for (batch, outcome) in group.into_iter().zip(outcomes) {
                    let _ = batch.reply.send(Ok(outcome));
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

async fn commit_group(pool: &SqlitePool, group: &mut [Batch]) -> anyhow::Result<Vec<Vec<Outcome>>> {
    let mut tx = pool.begin().await.context("beginning a checkpoint")?;
    let mut all = Vec::with_capacity(group.len());
    for batch in group.iter_mut() {
        let mut outcomes = Vec::with_capacity(batch.changes.len());
        for change in std::mem::take(&mut batch.changes) {
            // Each change in a savepoint of its own: one the database refuses is undone alone
            // and reported, and the rest of the group commits.
            let mut one = tx.begin().await.context("opening a savepoint")?;
            let workflow_id = change.workflow_id.clone();
            match sqlite_ops::apply_change(&mut one, change).await {
                Ok(outcome) => {
                    one.commit().await.context("releasing a savepoint")?;
                    outcomes.push(outcome);
                }
                Err(e) if refused_value(&e) => {
                    one.rollback().await.context("rolling back a savepoint")?;
                    tracing::error!(workflow = %workflow_id, error = format!("{e:#}"), "the database refused a change");
                    outcomes.push(Outcome::Rejected(Rejection::Unstorable(format!("{e:#}"))));
                }
                Err(e) => return Err(e),
            }
        }
        all.push(outcomes);
    }
    tx.commit().await.context("committing a checkpoint")?;
    Ok(all)
}

/// Whether the database refused a value rather than failed: too big (`SQLITE_TOOBIG`) or a
/// constraint (`SQLITE_CONSTRAINT` and its extended codes). Retrying such a change can never
/// succeed; anything else (I/O, a full disk, a lost connection) fails the whole group, which
/// is then retried.
fn refused_value(e: &anyhow::Error) -> bool {
    let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    matches!(code & 0xff, 18 | 19)
}
