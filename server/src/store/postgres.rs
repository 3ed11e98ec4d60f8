//! Postgres: one database that any number of instances share.
//!
//! Reads go straight to a pool. Writes go through each instance's group commit
//! ([`GroupCommit`]): a constant number of round trips per round of a group whatever its size
//! (begin, lock, read leases, take ids, write, commit; a group has one round unless it changes
//! a workflow twice), with array (`UNNEST`) inserts and upserts rather than a statement per
//! row. The rules that decide whether a
//! change applies are the backend-free [`decide`]; this module reads the rows it needs and
//! writes the plan.
//!
//! What makes several instances safe:
//! - **Row locks.** A checkpoint locks the `workflows` rows it changes (in id order) and only
//!   then reads their leases, in a statement of its own so that it sees any takeover that
//!   committed while it waited. A claim locks the same rows (`FOR UPDATE … SKIP LOCKED`), so
//!   no takeover can commit between a checkpoint's lease check and its commit.
//! - **The database's clock.** Lease expiries are set and compared with `now()`.
//! - **Contiguous event ids.** A checkpoint takes its ids by adding to the one `log_head` row,
//!   the last lock it takes (see `migrations/postgres/0001_init.sql`), so ids become visible
//!   in order and a reader of `id > cursor` never skips one that commits late.
//! - **Wake-ups.** Each checkpoint sends one `NOTIFY` with the newest id; every instance's
//!   listener wakes its publisher, which reads the log from its cursor (and polls anyway).

mod checkpoint;

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use cairn::{EventRecord, WorkflowState};

use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Row,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    group,
    types::{Claimed, EventScope, Fence, ListQuery, LiveEvent, WorkflowSummary},
};

/// The schema cairn's tables live in unless the URL names another (`?schema=NAME`).
pub const DEFAULT_SCHEMA: &str = "cairn";

/// A migrated Postgres database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// For the listener's own connection.
    options: Arc<PgConnectOptions>,
    /// The `NOTIFY` channel of this schema's log.
    channel: Arc<str>,
    /// The checkpoints' connection, kept from one to the next: taking a connection from the
    /// pool costs a round trip each time (sqlx pings it before handing it out, and again
    /// when it comes back). Dropped after any error, so the next checkpoint starts on a
    /// fresh one.
    checkpoints: Arc<tokio::sync::Mutex<Option<PoolConnection<Postgres>>>>,
}

/// Splits cairn's own `schema` parameter off a database URL.
fn split_schema(url: &str) -> anyhow::Result<(String, String)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), DEFAULT_SCHEMA.to_string()));
    };
    let mut schema = DEFAULT_SCHEMA.to_string();
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = name.to_string(),
            None => rest.push(pair),
        }
    }
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        anyhow::bail!(
            "invalid schema {schema:?} in the database URL: use lowercase letters, digits and _"
        );
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, schema))
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://…`), creates cairn's schema if
    /// needed and migrates it.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (url, schema) = split_schema(url)?;
        let options = PgConnectOptions::from_str(&url)
            .context("parsing the database URL")?
            .options([("search_path", schema.as_str())])
            .application_name("cairn");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .context("connecting to Postgres")?;
        // The schema, compiled into the binary; applied in the schema the URL names.
        let mut migrator = sqlx::migrate!("../migrations/postgres");
        migrator.create_schema(schema.clone());
        migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
        migrator
            .run(&pool)
            .await
            .context("migrating the Postgres database")?;
        Ok(Self {
            pool,
            options: Arc::new(options),
            channel: format!("{schema}_events").into(),
            checkpoints: Arc::default(),
        })
    }

    /// The pool (benchmarks measure the commit floor on it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging Postgres")?;
        Ok(())
    }

    /// A workflow's committed state.
    pub async fn load(&self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        load_state(&mut *self.pool.acquire().await?, id).await
    }

    /// The newest stored whole output of a step.
    pub async fn output(&self, workflow_id: &str, step_id: &str) -> anyhow::Result<Option<String>> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT output FROM outputs WHERE workflow_id = $1 AND step_id = $2 \
             ORDER BY event_id DESC LIMIT 1",
        )
        .bind(workflow_id)
        .bind(step_id)
        .fetch_optional(&self.pool)
        .await
        .context("reading a step's output")?;
        bytes
            .map(|b| String::from_utf8(b).context("a stored output is not UTF-8"))
            .transpose()
    }

    /// Workflow summaries, newest first.
    pub async fn list(&self, q: &ListQuery) -> anyhow::Result<Vec<WorkflowSummary>> {
        list(&mut *self.pool.acquire().await?, q).await
    }

    /// A workflow's events after `after`, in order.
    pub async fn history(&self, id: &str, after: i64) -> anyhow::Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT id, workflow_id, at, data FROM events \
             WHERE workflow_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .context("reading a workflow's events")?;
        rows.iter().map(record_from_row).collect()
    }

    /// Events after `after`, of one workflow or of all, oldest first, at most `limit`. Ids
    /// are visible as a contiguous prefix, so reading `id > after` never skips one.
    pub async fn events_after(
        &self,
        scope: EventScope<'_>,
        after: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<LiveEvent>> {
        let rows = sqlx::query(
            "SELECT e.id, e.workflow_id, e.at, e.data, w.workspace \
             FROM events e JOIN workflows w ON w.id = e.workflow_id \
             WHERE e.id > $1 AND ($2::text IS NULL OR e.workflow_id = $2) \
               AND ($4::text IS NULL OR w.workspace = $4) \
             ORDER BY e.id LIMIT $3",
        )
        .bind(after)
        .bind(scope.workflow)
        .bind(limit as i64)
        .bind(scope.workspace)
        .fetch_all(&self.pool)
        .await
        .context("reading events")?;
        rows.iter()
            .map(|row| Ok(LiveEvent::new(record_from_row(row)?, row.get("workspace"))))
            .collect()
    }

    /// The workspace a workflow belongs to, `None` if there is no such workflow.
    pub async fn workspace_of(&self, id: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar("SELECT workspace FROM workflows WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a workflow's workspace")
    }

    /// The newest committed event id (0 when empty).
    pub async fn last_event_id(&self) -> anyhow::Result<i64> {
        sqlx::query_scalar("SELECT last_id FROM log_head")
            .fetch_one(&self.pool)
            .await
            .context("reading the last event id")
    }

    /// The newest workflows and the log position they reflect, read in one snapshot.
    pub async fn workspace_snapshot(
        &self,
        limit: u32,
        workspace: Option<&str>,
    ) -> anyhow::Result<(i64, Vec<WorkflowSummary>)> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await.context("beginning a read")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .context("beginning a read")?;
        let last: i64 = sqlx::query_scalar("SELECT last_id FROM log_head")
            .fetch_one(&mut *tx)
            .await
            .context("reading the last event id")?;
        let q = ListQuery {
            limit,
            workspace: workspace.map(str::to_string),
            ..ListQuery::default()
        };
        let list = list(&mut tx, &q).await?;
        tx.commit().await.context("ending a read")?;
        Ok((last, list))
    }

    /// Takes leases on up to `limit` workflows that have work and no live owner, by the
    /// database's clock. Rows another instance is checkpointing or claiming are skipped.
    pub async fn claim(
        &self,
        owner: &str,
        ttl: chrono::Duration,
        limit: u32,
    ) -> anyhow::Result<Vec<Claimed>> {
        let rows = sqlx::query(
            "WITH cand AS ( \
               SELECT w.id, l.owner AS previous_owner FROM workflows w \
               LEFT JOIN leases l ON l.workflow_id = w.id \
               WHERE w.status IN ('pending', 'running', 'stalled') \
                 AND (l.workflow_id IS NULL OR l.expires_at < now()) \
               ORDER BY w.created_at LIMIT $2 \
               FOR UPDATE OF w SKIP LOCKED), \
             taken AS ( \
               INSERT INTO leases (workflow_id, owner, epoch, expires_at) \
               SELECT id, $1, 1, now() + $3 * interval '1 millisecond' FROM cand \
               ON CONFLICT (workflow_id) DO UPDATE SET owner = excluded.owner, \
                 epoch = leases.epoch + 1, expires_at = excluded.expires_at \
                 WHERE leases.expires_at < now() \
               RETURNING workflow_id, epoch) \
             SELECT w.state, w.spec, t.epoch, c.previous_owner FROM taken t \
             JOIN cand c ON c.id = t.workflow_id JOIN workflows w ON w.id = t.workflow_id \
             ORDER BY w.created_at",
        )
        .bind(owner)
        .bind(limit as i64)
        .bind(ttl.num_milliseconds())
        .fetch_all(&self.pool)
        .await
        .context("claiming workflows")?;
        rows.iter()
            .map(|row| {
                let state = group::decode_state(row.get("state"), row.get("spec"))?;
                Ok(Claimed {
                    state,
                    fence: Fence {
                        owner: owner.into(),
                        epoch: row.get("epoch"),
                    },
                    previous_owner: row.get("previous_owner"),
                })
            })
            .collect()
    }

    /// Extends `owner`'s leases on `ids` by `ttl` from the database's now; returns the ids it
    /// still holds (fenced: a lease taken over is not renewed).
    pub async fn renew(
        &self,
        owner: &str,
        ids: &[String],
        ttl: chrono::Duration,
    ) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar(
            "UPDATE leases SET expires_at = now() + $3 * interval '1 millisecond' \
             WHERE owner = $1 AND workflow_id = ANY($2) RETURNING workflow_id",
        )
        .bind(owner)
        .bind(ids)
        .bind(ttl.num_milliseconds())
        .fetch_all(&self.pool)
        .await
        .context("renewing leases")
    }

    /// Gives up `owner`'s lease on a workflow.
    pub async fn release(&self, owner: &str, workflow_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM leases WHERE workflow_id = $1 AND owner = $2")
            .bind(workflow_id)
            .bind(owner)
            .execute(&self.pool)
            .await
            .context("releasing a lease")?;
        Ok(())
    }

    /// See [`super::Store::prune`]. The chosen rows are locked (`SKIP LOCKED`: a workflow
    /// that an instance is checkpointing is left for the next round), so no checkpoint can
    /// resume one between choosing and deleting it; several instances may prune at once.
    pub async fn prune(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
        dry_run: bool,
    ) -> anyhow::Result<super::Pruned> {
        let mut tx = self.pool.begin().await.context("beginning a prune")?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM workflows WHERE status IN ('completed', 'failed', 'cancelled') \
               AND updated_at < $1 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("finding finished workflows")?;
        let events: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE workflow_id = ANY($1)")
                .bind(&ids)
                .fetch_one(&mut *tx)
                .await
                .context("counting their events")?;
        if dry_run || ids.is_empty() {
            return Ok(super::Pruned {
                workflows: ids,
                events: events as u64,
            });
        }
        // Children first (outputs refer to events, steps and leases to workflows).
        for delete in [
            "DELETE FROM outputs WHERE workflow_id = ANY($1)",
            "DELETE FROM events WHERE workflow_id = ANY($1)",
            "DELETE FROM steps WHERE workflow_id = ANY($1)",
            "DELETE FROM leases WHERE workflow_id = ANY($1)",
            "DELETE FROM idempotency_keys WHERE workflow_id = ANY($1)",
            "DELETE FROM workflows WHERE id = ANY($1)",
        ] {
            sqlx::query(delete)
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("pruning: {delete}"))?;
        }
        sqlx::query("UPDATE retention SET pruned_through = (SELECT last_id FROM log_head)")
            .execute(&mut *tx)
            .await
            .context("recording the pruned ids")?;
        tx.commit().await.context("committing a prune")?;
        Ok(super::Pruned {
            workflows: ids,
            events: events as u64,
        })
    }

    /// See [`super::Store::pruned_through`].
    pub async fn pruned_through(&self) -> anyhow::Result<i64> {
        sqlx::query_scalar("SELECT pruned_through FROM retention")
            .fetch_one(&self.pool)
            .await
            .context("reading the retention mark")
    }

    /// Starts the listener: every `NOTIFY` of a checkpoint (this instance's or another's)
    /// wakes the publisher. A lost connection is reconnected, and the publisher is woken then
    /// too, since notifications sent meanwhile are gone; it catches up from the table, and it
    /// polls anyway, so a lost notification only delays.
    /// It stops with `stop`.
    pub(super) fn listen(&self, wake: mpsc::Sender<()>, stop: CancellationToken) {
        let options = self.options.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = tokio::time::Instant::now();
                let result = tokio::select! {
                    r = listen_once(&options, &channel, &wake) => r,
                    _ = stop.cancelled() => return,
                };
                // A connection that lived a while was healthy: start the backoff afresh.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(100);
                }
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "the Postgres listener stopped; reconnecting"
                        );
                        let _ = wake.try_send(());
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}

/// Listens until the publisher is gone (`Ok`) or the connection fails for good (`Err`).
async fn listen_once(
    options: &PgConnectOptions,
    channel: &str,
    wake: &mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .context("connecting the listener")?;
    let mut listener = PgListener::connect_with(&pool)
        .await
        .context("connecting the listener")?;
    listener
        .listen(channel)
        .await
        .context("listening for checkpoints")?;
    // Whatever was committed before the LISTEN took effect.
    let _ = wake.try_send(());
    loop {
        let notification = tokio::select! {
            n = listener.try_recv() => n.context("receiving a notification")?,
            _ = wake.closed() => return Ok(()),
        };
        if notification.is_none() {
            tracing::warn!("the Postgres listener reconnected; catching up from the log");
        }
        // Full means a wake-up is pending already.
        let _ = wake.try_send(());
    }
}

fn record_from_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<EventRecord> {
    Ok(EventRecord {
        id: row.get("id"),
        workflow_id: row.get("workflow_id"),
        at: row.get("at"),
        event: serde_json::from_str(row.get("data")).context("decoding a stored event")?,
    })
}

async fn load_state(conn: &mut PgConnection, id: &str) -> anyhow::Result<Option<WorkflowState>> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, spec FROM workflows WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .context("loading a workflow")?;
    row.map(|(state, spec)| group::decode_state(&state, spec.as_deref()))
        .transpose()
}

async fn list(conn: &mut PgConnection, q: &ListQuery) -> anyhow::Result<Vec<WorkflowSummary>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM workflows \
         WHERE ($1::text IS NULL OR status = $1) \
           AND ($2::text IS NULL OR (created_at, id) < \
                (SELECT created_at, id FROM workflows WHERE id = $2)) \
           AND ($4::text IS NULL OR workspace = $4) \
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(q.status.map(|s| s.as_str()))
    .bind(q.before.as_deref())
    .bind(q.limit as i64)
    .bind(q.workspace.as_deref())
    .fetch_all(&mut *conn)
    .await
    .context("listing workflows")?;
    rows.iter()
        .map(|json| {
            let s: WorkflowState =
                serde_json::from_str(json).context("decoding a stored workflow state")?;
            Ok(WorkflowSummary::of(&s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_cairns_own() {
        let (url, schema) = split_schema("postgres://u@h/db").unwrap();
        assert_eq!(
            (url.as_str(), schema.as_str()),
            ("postgres://u@h/db", "cairn")
        );
        let (url, schema) =
            split_schema("postgres://u@h/db?sslmode=disable&schema=team_a").unwrap();
        assert_eq!(
            (url.as_str(), schema.as_str()),
            ("postgres://u@h/db?sslmode=disable", "team_a")
        );
        assert!(split_schema("postgres://u@h/db?schema=a;drop").is_err());
        assert!(split_schema("postgres://u@h/db?schema=").is_err());
    }
}
