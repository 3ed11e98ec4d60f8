//! The database behind cairn.
//!
//! The default is an embedded SQLite file in WAL mode with `synchronous=FULL`: a commit is on
//! disk before it is acknowledged. With a `postgres://` URL, any number of instances share one
//! Postgres database ([`PgStore`]). The URL chooses the backend; the schema comes from the
//! append-only files in `migrations/<backend>/`, applied at start-up.
//!
//! Everything that changes a workflow goes through [`Store::commit`]: one transaction appends
//! the events and updates the projections (the checkpoint), under the lease of whoever makes
//! the change; concurrent commits share a transaction (group commit). Committed events are
//! published on [`Store::subscribe`] for live streams by one publisher that reads the log in
//! id order.

mod decide;
mod group;
mod postgres;
mod publisher;
mod sqlite;
mod sqlite_ops;
mod tokens;
mod types;
mod writer;

use std::sync::Arc;

use anyhow::bail;
use cairn::{EventRecord, WorkflowState};
use tokio::sync::broadcast;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use types::{
    Change, Claimed, EventScope, Fence, ListQuery, LiveEvent, Outcome, Rejection, Stamped,
    WorkflowSummary,
};

/// The largest event the store writes, as JSON. Events carry previews of outputs and tasks,
/// so only something pathological gets near it (an agent reporting a megabyte session id);
/// such a change is refused ([`Rejection::Unstorable`]) and the engine records the attempt
/// as failed with the reason, instead of retrying a checkpoint that can never succeed.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// The largest output the store keeps (the largest `max_output_bytes` a role may set).
pub const MAX_STORED_OUTPUT_BYTES: usize = 256 * 1024 * 1024;

/// Cuts every event's output and task to its preview ([`cairn::Event::cut_to_preview`]) and
/// returns the whole outputs — those cut here and those `given` beside the events — with the
/// index of the event they belong to, in event order; or why the change cannot be stored.
fn split_outputs(
    events: &mut [Stamped],
    given: Vec<(usize, Arc<str>)>,
) -> Result<Vec<(usize, Arc<str>)>, String> {
    let mut outputs = given;
    for (i, s) in events.iter_mut().enumerate() {
        if let Some(output) = s.event.cut_to_preview() {
            outputs.push((i, output.into()));
        }
    }
    outputs.sort_by_key(|(i, _)| *i);
    for (i, output) in &outputs {
        let step = events.get(*i).and_then(|s| s.event.step_id());
        let Some(step) = step else {
            return Err(format!("an output names event {i}, which is not a step's"));
        };
        if output.len() > MAX_STORED_OUTPUT_BYTES {
            return Err(format!(
                "the output of step '{step}' is {} bytes, over the store's limit of {} bytes",
                output.len(),
                MAX_STORED_OUTPUT_BYTES
            ));
        }
    }
    Ok(outputs)
}

/// Each event as the JSON the log stores, or why one cannot be stored.
fn encode_events(events: &[Stamped]) -> Result<Vec<String>, String> {
    events
        .iter()
        .map(|s| {
            let data = serde_json::to_string(&s.event)
                .map_err(|e| format!("a {} event cannot be encoded: {e}", s.event.type_name()))?;
            if data.len() > MAX_EVENT_BYTES {
                return Err(format!(
                    "a {} event is {} bytes, over the store's limit of {} bytes",
                    s.event.type_name(),
                    data.len(),
                    MAX_EVENT_BYTES
                ));
            }
            Ok(data)
        })
        .collect()
}

/// How many committed events a live subscriber may lag behind before it must catch up from
/// the database.
const BROADCAST_CAPACITY: usize = 4096;

/// An open, migrated database.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    events: broadcast::Sender<Arc<LiveEvent>>,
    /// Stops the background tasks that outlive no handle (the Postgres listener) when the
    /// last clone of this store is dropped.
    _stop: Arc<tokio_util::sync::DropGuard>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore, writer::Writer),
    Postgres(PgStore, writer::Writer),
}

impl Store {
    /// Opens (creating if needed) and migrates the database named by `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let stop = tokio_util::sync::CancellationToken::new();
        if url.starts_with("sqlite:") {
            let sqlite = SqliteStore::connect(url).await?;
            let (wake, woken) = tokio::sync::mpsc::channel(1);
            let from = sqlite.last_event_id().await?;
            publisher::start(
                publisher::Log::Sqlite(sqlite.clone()),
                from,
                woken,
                events.clone(),
            );
            let writer = writer::Writer::start(sqlite.clone(), wake);
            return Ok(Self {
                backend: Backend::Sqlite(sqlite, writer),
                events,
                _stop: Arc::new(stop.drop_guard()),
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pg = PgStore::connect(url).await?;
            let (wake, woken) = tokio::sync::mpsc::channel(1);
            let from = pg.last_event_id().await?;
            publisher::start(
                publisher::Log::Postgres(pg.clone()),
                from,
                woken,
                events.clone(),
            );
            // Other instances' checkpoints arrive as notifications; this one's own too.
            pg.listen(wake.clone(), stop.clone());
            let writer = writer::Writer::start(pg.clone(), wake);
            return Ok(Self {
                backend: Backend::Postgres(pg, writer),
                events,
                _stop: Arc::new(stop.drop_guard()),
            });
        }
        bail!("unsupported database URL: use sqlite://PATH or postgres://USER@HOST/DATABASE")
    }

    /// The backend's name, as `/api/health` reports it.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(..) => "sqlite",
            Backend::Postgres(..) => "postgres",
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.ping().await,
            Backend::Postgres(p, _) => p.ping().await,
        }
    }

    /// Commits changes durably (see the module docs); one outcome per change, in order.
    pub async fn commit(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        match &self.backend {
            Backend::Sqlite(_, w) | Backend::Postgres(_, w) => w.commit(changes).await,
        }
    }

    /// Live committed events. A receiver that lags gets `Lagged` and should re-read the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.events.subscribe()
    }

    /// Durations of recent commits in milliseconds (for benchmarks).
    pub fn commit_latencies_ms(&self) -> Vec<f64> {
        match &self.backend {
            Backend::Sqlite(_, w) | Backend::Postgres(_, w) => w.commit_latencies_ms(),
        }
    }

    /// Whether this backend's database has one owner, this process: then, at start-up, the
    /// leases of any earlier owner are taken at once (it is dead) instead of waiting for them
    /// to expire. True for SQLite; a database that several instances share answers false.
    pub fn single_owner(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(..) => true,
            Backend::Postgres(..) => false,
        }
    }

    /// A workflow's committed state.
    pub async fn load(&self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.load(id).await,
            Backend::Postgres(p, _) => p.load(id).await,
        }
    }

    /// The whole output of a step that has one (completed or skipped), `None` when the
    /// workflow or the step is unknown or the step has no output now.
    pub async fn output(&self, workflow_id: &str, step_id: &str) -> anyhow::Result<Option<String>> {
        let Some(state) = self.load(workflow_id).await? else {
            return Ok(None);
        };
        let Some(step) = state.step(step_id) else {
            return Ok(None);
        };
        if !step.status.is_done() {
            return Ok(None);
        }
        if !step.output_is_cut() {
            return Ok(step.output.clone());
        }
        let whole = match &self.backend {
            Backend::Sqlite(s, _) => s.output(workflow_id, step_id).await?,
            Backend::Postgres(p, _) => p.output(workflow_id, step_id).await?,
        };
        match whole {
            Some(w) if Some(w.len() as u64) == step.output_bytes => Ok(Some(w)),
            _ => anyhow::bail!("the stored output of {workflow_id}/{step_id} is missing"),
        }
    }

    /// Workflow summaries, newest first.
    pub async fn list(&self, q: &ListQuery) -> anyhow::Result<Vec<WorkflowSummary>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.list(q).await,
            Backend::Postgres(p, _) => p.list(q).await,
        }
    }

    /// A workflow's events after `after` (0 = all), in order.
    pub async fn history(&self, id: &str, after: i64) -> anyhow::Result<Vec<EventRecord>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.history(id, after).await,
            Backend::Postgres(p, _) => p.history(id, after).await,
        }
    }

    /// Events after `after` (as `scope` narrows them), oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        scope: EventScope<'_>,
        after: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<LiveEvent>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.events_after(scope, after, limit).await,
            Backend::Postgres(p, _) => p.events_after(scope, after, limit).await,
        }
    }

    /// The workspace a workflow belongs to, `None` if there is no such workflow.
    pub async fn workspace_of(&self, id: &str) -> anyhow::Result<Option<String>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.workspace_of(id).await,
            Backend::Postgres(p, _) => p.workspace_of(id).await,
        }
    }

    /// The newest workflows and the log position they reflect, read in one transaction so
    /// the two agree: a stream that starts from this snapshot continues after that id.
    pub async fn workspace_snapshot(
        &self,
        limit: u32,
        workspace: Option<&str>,
    ) -> anyhow::Result<(i64, Vec<WorkflowSummary>)> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.workspace_snapshot(limit, workspace).await,
            Backend::Postgres(p, _) => p.workspace_snapshot(limit, workspace).await,
        }
    }

    /// Takes leases for `ttl` on workflows with work and no live owner (see [`Claimed`]);
    /// with `steal` (only honoured where [`Store::single_owner`]), also those of other
    /// owners. Expiries are the database's business: Postgres compares them with its own
    /// clock, so instances whose clocks differ still agree on who holds what.
    pub async fn claim(
        &self,
        owner: &str,
        ttl: chrono::Duration,
        limit: u32,
        steal: bool,
    ) -> anyhow::Result<Vec<Claimed>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.claim(owner, ttl, limit, steal).await,
            Backend::Postgres(p, _) => {
                debug_assert!(!steal, "other owners of a shared database are alive");
                p.claim(owner, ttl, limit).await
            }
        }
    }

    /// Extends `owner`'s leases on the workflows `ids` by `ttl`; returns those it still holds
    /// (a lease another instance took over is not renewed).
    pub async fn renew(
        &self,
        owner: &str,
        ids: &[String],
        ttl: chrono::Duration,
    ) -> anyhow::Result<Vec<String>> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.renew(owner, ids, ttl).await,
            Backend::Postgres(p, _) => p.renew(owner, ids, ttl).await,
        }
    }

    /// Ends `owner`'s leases on `ids` now, as if they had expired: the next claim (any
    /// instance's) takes each workflow over with `workflow.stalled` and `workflow.resumed`
    /// instead of waiting out the TTL. The lease rows stay, so the takeover names the old
    /// owner and moves the epoch on (nothing the old owner started can commit after it).
    /// Returns the ids whose lease `owner` still held.
    pub async fn hand_over(&self, owner: &str, ids: &[String]) -> anyhow::Result<Vec<String>> {
        // A renewal into the past: the same fenced update, by each backend's clock.
        self.renew(owner, ids, -chrono::Duration::milliseconds(1))
            .await
    }

    /// Gives up `owner`'s lease on a workflow.
    pub async fn release(&self, owner: &str, workflow_id: &str) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.release(owner, workflow_id).await,
            Backend::Postgres(p, _) => p.release(owner, workflow_id).await,
        }
    }

    /// Deletes up to `limit` finished (completed, failed or cancelled) workflows whose last
    /// change is older than `before`, with their events, steps, outputs, leases and
    /// idempotency keys, in one transaction; a running workflow is never touched. With
    /// `dry_run`, only says which it would delete.
    pub async fn prune(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
        dry_run: bool,
    ) -> anyhow::Result<Pruned> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.prune(before, limit, dry_run).await,
            Backend::Postgres(p, _) => p.prune(before, limit, dry_run).await,
        }
    }

    /// The log's last event id when retention last deleted something (0 if never): a client
    /// whose stream position is not past it may still show what was deleted.
    pub async fn pruned_through(&self) -> anyhow::Result<i64> {
        match &self.backend {
            Backend::Sqlite(s, _) => s.pruned_through().await,
            Backend::Postgres(p, _) => p.pruned_through().await,
        }
    }
}

/// What one round of [`Store::prune`] deleted (or would).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruned {
    /// The workflows, oldest change first.
    pub workflows: Vec<String>,
    /// How many events they had.
    pub events: u64,
}
