//! SQLite: one file, one owning process, WAL so readers never wait for the writer.
//!
//! Readers share a pool of several connections over the file, and every write (the
//! checkpoint commits, lease claims and renewals) goes through exactly one connection, held
//! by the store behind a lock. One writer connection means no two transactions ever race to
//! upgrade a read lock to a write lock, which SQLite answers with an immediate
//! `SQLITE_BUSY`. Holding it rather than taking it from a pool each time saves the hand-offs
//! to its worker thread that sqlx's pool adds (a ping when a connection is handed out and
//! another when it comes back), two of the six a checkpoint cost.

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use cairn::{EventRecord, WorkflowState};
use chrono::Utc;
use sqlx::{
    Connection, Sqlite, SqliteConnection, SqlitePool,
    pool::PoolConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::{
    sqlite_ops,
    types::{Change, Claimed, EventScope, ListQuery, LiveEvent, Outcome, WorkflowSummary},
    writer::GroupCommit,
};

/// The schema, compiled into the binary so a deployed `cairn` needs no files beside it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A migrated SQLite database.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// A pool of one connection, which [`SqliteStore::writer`] keeps out of it.
    write_pool: SqlitePool,
    /// The write connection while it is held: taken from `write_pool` when first needed and
    /// after a checkpoint failed.
    held: Arc<Mutex<Option<PoolConnection<Sqlite>>>>,
}

/// The store's one write connection, locked for its holder.
pub(crate) type WriteConnection<'a> = MappedMutexGuard<'a, SqliteConnection>;

impl SqliteStore {
    /// Opens the file named by `url` (`sqlite://PATH`), creating it if missing, and migrates it.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("parsing the database URL {url:?}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss, not only a process crash. The checkpoint is
            // the product; it is worth the fsync.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening the SQLite database {url}"))?;
        MIGRATOR
            .run(&write_pool)
            .await
            .context("migrating the SQLite database")?;
        // Readers are handles on the same file in this process: they cannot hang up, so sqlx's
        // ping before handing one out (a hand-off to its worker thread) is left out.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the SQLite database {url}"))?;
        Ok(Self {
            pool,
            write_pool,
            held: Arc::default(),
        })
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging SQLite")?;
        Ok(())
    }

    /// The readers' pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The one write connection, locked until the guard is dropped.
    pub(crate) async fn writer(&self) -> anyhow::Result<WriteConnection<'_>> {
        let mut held = self.held.lock().await;
        if held.is_none() {
            *held = Some(
                self.write_pool
                    .acquire()
                    .await
                    .context("acquiring the writer")?,
            );
        }
        MutexGuard::try_map(held, |c| c.as_deref_mut())
            .map_err(|_| anyhow::anyhow!("the write connection is missing"))
    }

    async fn reader(&self) -> anyhow::Result<PoolConnection<Sqlite>> {
        self.pool.acquire().await.context("acquiring a connection")
    }

    /// A workflow's committed state.
    pub async fn load(&self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        sqlite_ops::load_state(&mut *self.reader().await?, id).await
    }

    /// The newest stored whole output of a step.
    pub async fn output(&self, workflow_id: &str, step_id: &str) -> anyhow::Result<Option<String>> {
        sqlite_ops::output(&mut *self.reader().await?, workflow_id, step_id).await
    }

    /// Workflow summaries, newest first.
    pub async fn list(&self, q: &ListQuery) -> anyhow::Result<Vec<WorkflowSummary>> {
        sqlite_ops::list(&mut *self.reader().await?, q).await
    }

    /// A workflow's events after `after`, in order.
    pub async fn history(&self, id: &str, after: i64) -> anyhow::Result<Vec<EventRecord>> {
        sqlite_ops::history(&mut *self.reader().await?, id, after).await
    }

    /// Events after `after`, of one workflow or of all, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        scope: EventScope<'_>,
        after: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<LiveEvent>> {
        sqlite_ops::events_after(&mut *self.reader().await?, scope, after, limit).await
    }

    /// The workspace a workflow belongs to, `None` if there is no such workflow.
    pub async fn workspace_of(&self, id: &str) -> anyhow::Result<Option<String>> {
        sqlite_ops::workspace_of(&mut *self.reader().await?, id).await
    }

    /// The newest event id of the whole log (0 when empty).
    pub async fn last_event_id(&self) -> anyhow::Result<i64> {
        sqlite_ops::last_event_id(&mut *self.reader().await?).await
    }

    /// The newest workflows and the log position they reflect, read in one transaction.
    pub async fn workspace_snapshot(
        &self,
        limit: u32,
        workspace: Option<&str>,
    ) -> anyhow::Result<(i64, Vec<WorkflowSummary>)> {
        let mut tx = self.pool.begin().await.context("beginning a read")?;
        let last = sqlite_ops::last_event_id(&mut tx).await?;
        let q = ListQuery {
            limit,
            workspace: workspace.map(str::to_string),
            ..ListQuery::default()
        };
        let list = sqlite_ops::list(&mut tx, &q).await?;
        tx.commit().await.context("ending a read")?;
        Ok((last, list))
    }

    /// Takes leases on workflows with work and no live owner.
    pub async fn claim(
        &self,
        owner: &str,
        ttl: chrono::Duration,
        limit: u32,
        steal: bool,
    ) -> anyhow::Result<Vec<Claimed>> {
        // One process owns the file, so its clock is the only one.
        let now = Utc::now();
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await.context("beginning a claim")?;
        let claimed = sqlite_ops::claim(&mut tx, owner, now, ttl, limit, steal).await?;
        tx.commit().await.context("committing a claim")?;
        Ok(claimed)
    }

    /// Extends `owner`'s leases on `ids` by `ttl`; returns the workflows it still holds.
    pub async fn renew(
        &self,
        owner: &str,
        ids: &[String],
        ttl: chrono::Duration,
    ) -> anyhow::Result<Vec<String>> {
        let expires = Utc::now() + ttl;
        sqlite_ops::renew(&mut *self.writer().await?, owner, ids, expires).await
    }

    /// Gives up `owner`'s lease on a workflow.
    pub async fn release(&self, owner: &str, workflow_id: &str) -> anyhow::Result<()> {
        sqlite_ops::release(&mut *self.writer().await?, owner, workflow_id).await
    }

    /// See [`super::Store::prune`].
    pub async fn prune(
        &self,
        before: chrono::DateTime<Utc>,
        limit: u32,
        dry_run: bool,
    ) -> anyhow::Result<super::Pruned> {
        sqlite_ops::prune(&mut *self.writer().await?, before, limit, dry_run).await
    }

    /// See [`super::Store::pruned_through`].
    pub async fn pruned_through(&self) -> anyhow::Result<i64> {
        sqlite_ops::pruned_through(&mut *self.reader().await?).await
    }
}

impl GroupCommit for SqliteStore {
    async fn commit_changes(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        self.commit_in_one(changes).await
    }

    fn refused_value(e: &anyhow::Error) -> bool {
        refused_value(e)
    }
}

impl SqliteStore {
    /// One transaction, round after round (see [`super::group::rounds`]).
    async fn commit_in_one(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        let result = self.commit_on_writer(changes).await;
        if result.is_err() {
            // Back to its pool, which tests it and replaces it if it is broken.
            self.held.lock().await.take();
        }
        result
    }

    async fn commit_on_writer(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes = super::group::Outcomes::new(changes.len());
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await.context("beginning a checkpoint")?;
        for (slots, round) in super::group::rounds(changes) {
            outcomes.fill(slots, sqlite_ops::commit_round(&mut tx, round).await?);
        }
        tx.commit().await.context("committing a checkpoint")?;
        outcomes.finish()
    }
}

/// Whether SQLite refused a value rather than failed: too big (`SQLITE_TOOBIG`) or a
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
