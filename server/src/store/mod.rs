//! The database behind cairn.
//!
//! The default is an embedded SQLite file in WAL mode with `synchronous=FULL`: a commit is on
//! disk before it is acknowledged. The URL chooses the backend; the schema comes from the
//! append-only files in `migrations/`, applied at start-up.
//!
//! Everything that changes a workflow goes through [`Store::commit`]: one transaction appends
//! the events and updates the projections (the checkpoint), under the lease of whoever makes
//! the change; concurrent commits share a transaction (group commit). Committed events are
//! published on [`Store::subscribe`] for live streams.

mod sqlite;
mod sqlite_ops;
mod types;
mod writer;

use std::sync::Arc;

use anyhow::{Context, bail};
use cairn::{EventRecord, WorkflowState};
use chrono::{DateTime, Utc};
use sqlx::{Sqlite, pool::PoolConnection};
use tokio::sync::broadcast;

pub use sqlite::SqliteStore;
pub use types::{
    Change, Claimed, Fence, ListQuery, LiveEvent, Outcome, Rejection, Stamped, WorkflowSummary,
};

/// How many committed events a live subscriber may lag behind before it must catch up from
/// the database.
const BROADCAST_CAPACITY: usize = 4096;

/// An open, migrated database.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    events: broadcast::Sender<Arc<LiveEvent>>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore, writer::Writer),
}

impl Store {
    /// Opens (creating if needed) and migrates the database named by `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        if url.starts_with("sqlite:") {
            let sqlite = SqliteStore::connect(url).await?;
            let writer = writer::Writer::start(sqlite.write_pool().clone(), events.clone());
            return Ok(Self {
                backend: Backend::Sqlite(sqlite, writer),
                events,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            bail!(
                "this build of cairn stores in SQLite only; use --database-url sqlite://PATH \
                 (Postgres support is planned)"
            );
        }
        bail!("unsupported database URL {url:?}: use sqlite://PATH")
    }

    /// The backend's name, as `/api/health` reports it.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(..) => "sqlite",
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.ping().await,
        }
    }

    /// Commits changes durably (see the module docs); one outcome per change, in order.
    pub async fn commit(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        match &self.backend {
            Backend::Sqlite(_, w) => w.commit(changes).await,
        }
    }

    /// Live committed events. A receiver that lags gets `Lagged` and should re-read the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.events.subscribe()
    }

    /// Durations of recent commits in milliseconds (for benchmarks).
    pub fn commit_latencies_ms(&self) -> Vec<f64> {
        match &self.backend {
            Backend::Sqlite(_, w) => w.commit_latencies_ms(),
        }
    }

    /// A connection from the readers' pool.
    async fn reader(&self) -> anyhow::Result<PoolConnection<Sqlite>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.pool().acquire().await.context("acquiring a connection"),
        }
    }

    /// The one write connection (lease upkeep outside the group commit).
    async fn writer(&self) -> anyhow::Result<PoolConnection<Sqlite>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s
                .write_pool()
                .acquire()
                .await
                .context("acquiring the writer"),
        }
    }

    /// A workflow's committed state.
    pub async fn load(&self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        let mut conn = self.reader().await?;
        sqlite_ops::load_state(&mut conn, id).await
    }

    /// Workflow summaries, newest first.
    pub async fn list(&self, q: &ListQuery) -> anyhow::Result<Vec<WorkflowSummary>> {
        let mut conn = self.reader().await?;
        sqlite_ops::list(&mut conn, q).await
    }

    /// A workflow's events after `after` (0 = all), in order.
    pub async fn history(&self, id: &str, after: i64) -> anyhow::Result<Vec<EventRecord>> {
        let mut conn = self.reader().await?;
        sqlite_ops::history(&mut conn, id, after).await
    }

    /// Events after `after` (of one workflow, or of all), oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        workflow_id: Option<&str>,
        after: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<EventRecord>> {
        let mut conn = self.reader().await?;
        sqlite_ops::events_after(&mut conn, workflow_id, after, limit).await
    }

    /// The newest workflows and the log position they reflect, read in one transaction so
    /// the two agree: a stream that starts from this snapshot continues after that id.
    pub async fn workspace_snapshot(
        &self,
        limit: u32,
    ) -> anyhow::Result<(i64, Vec<WorkflowSummary>)> {
        match &self.backend {
            Backend::Sqlite(s, _) => {
                let mut tx = s.pool().begin().await.context("beginning a read")?;
                let last = sqlite_ops::last_event_id(&mut tx).await?;
                let q = ListQuery {
                    limit,
                    ..ListQuery::default()
                };
                let list = sqlite_ops::list(&mut tx, &q).await?;
                tx.commit().await.context("ending a read")?;
                Ok((last, list))
            }
        }
    }

    /// Takes leases on workflows with work and no live owner (see [`Claimed`]).
    pub async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
        limit: u32,
        steal: bool,
    ) -> anyhow::Result<Vec<Claimed>> {
        match &self.backend {
            Backend::Sqlite(s, _) => {
                let mut tx = s.write_pool().begin().await.context("beginning a claim")?;
                let claimed = sqlite_ops::claim(&mut tx, owner, now, ttl, limit, steal).await?;
                tx.commit().await.context("committing a claim")?;
                Ok(claimed)
            }
        }
    }

    /// Extends `owner`'s leases to `expires`; returns the workflows it still holds.
    pub async fn renew(&self, owner: &str, expires: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
        let mut conn = self.writer().await?;
        sqlite_ops::renew(&mut conn, owner, expires).await
    }

    /// Gives up `owner`'s lease on a workflow.
    pub async fn release(&self, owner: &str, workflow_id: &str) -> anyhow::Result<()> {
        let mut conn = self.writer().await?;
        sqlite_ops::release(&mut conn, owner, workflow_id).await
    }
}
