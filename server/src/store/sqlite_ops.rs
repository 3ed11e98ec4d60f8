//! The SQLite queries behind [`super::Store`]: reads, leases and pruning; the checkpoint's
//! statements are in `checkpoint`.
//!
//! Timestamps are stored as RFC 3339 text with a fixed number of digits, so that comparing
//! strings compares instants.

mod checkpoint;

use anyhow::Context;
use cairn::{EventRecord, WorkflowState};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{Row, SqliteConnection};

use super::{
    group::{self, LoadState},
    types::{Claimed, EventScope, Fence, ListQuery, LiveEvent, WorkflowSummary},
};

/// The text form of an instant in the database.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An instant read back from its text form.
pub(super) fn parse_ts(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("bad timestamp {s:?} in the database"))?
        .with_timezone(&Utc))
}

pub(super) use checkpoint::commit_round;

impl LoadState for SqliteConnection {
    async fn load_state(&mut self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        load_state(self, id).await
    }
}

/// The committed state of a workflow.
pub(super) async fn load_state(
    conn: &mut SqliteConnection,
    id: &str,
) -> anyhow::Result<Option<WorkflowState>> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, spec FROM workflows WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .context("loading a workflow")?;
    row.map(|(state, spec)| group::decode_state(&state, spec.as_deref()))
        .transpose()
}

/// The whole output behind a step's preview: the newest stored for the step.
pub(super) async fn output(
    conn: &mut SqliteConnection,
    workflow_id: &str,
    step_id: &str,
) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT output FROM outputs WHERE workflow_id = ? AND step_id = ? \
         ORDER BY event_id DESC LIMIT 1",
    )
    .bind(workflow_id)
    .bind(step_id)
    .fetch_optional(&mut *conn)
    .await
    .context("reading a step's output")
}

/// Workflows, newest first.
pub(super) async fn list(
    conn: &mut SqliteConnection,
    q: &ListQuery,
) -> anyhow::Result<Vec<WorkflowSummary>> {
    let rows = sqlx::query(
        "SELECT state FROM workflows \
         WHERE (?1 IS NULL OR status = ?1) \
           AND (?2 IS NULL OR (created_at, id) < (SELECT created_at, id FROM workflows WHERE id = ?2)) \
           AND (?4 IS NULL OR workspace = ?4) \
         ORDER BY created_at DESC, id DESC LIMIT ?3",
    )
    .bind(q.status.map(|s| s.as_str()))
    .bind(q.before.as_deref())
    .bind(q.limit as i64)
    .bind(q.workspace.as_deref())
    .fetch_all(&mut *conn)
    .await
    .context("listing workflows")?;
    rows.iter()
        .map(|r| {
            let s: WorkflowState = serde_json::from_str(r.get::<&str, _>(0))
                .context("decoding a stored workflow state")?;
            Ok(WorkflowSummary::of(&s))
        })
        .collect()
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<EventRecord> {
    Ok(EventRecord {
        id: row.get("id"),
        workflow_id: row.get("workflow_id"),
        at: parse_ts(row.get("at"))?,
        event: serde_json::from_str(row.get("data")).context("decoding a stored event")?,
    })
}

/// A workflow's events after `after`, in order.
pub(super) async fn history(
    conn: &mut SqliteConnection,
    workflow_id: &str,
    after: i64,
) -> anyhow::Result<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT id, workflow_id, at, data FROM events WHERE workflow_id = ? AND id > ? ORDER BY id",
    )
    .bind(workflow_id)
    .bind(after)
    .fetch_all(&mut *conn)
    .await
    .context("reading a workflow's events")?;
    rows.iter().map(record_from_row).collect()
}

/// Events after `after` (of one workflow, or of all; of one workspace, or of all), oldest
/// first, at most `limit`, each with its workflow's workspace.
pub(super) async fn events_after(
    conn: &mut SqliteConnection,
    scope: EventScope<'_>,
    after: i64,
    limit: u32,
) -> anyhow::Result<Vec<LiveEvent>> {
    let rows = sqlx::query(
        "SELECT e.id, e.workflow_id, e.at, e.data, w.workspace \
         FROM events e JOIN workflows w ON w.id = e.workflow_id \
         WHERE e.id > ?1 AND (?2 IS NULL OR e.workflow_id = ?2) \
           AND (?4 IS NULL OR w.workspace = ?4) \
         ORDER BY e.id LIMIT ?3",
    )
    .bind(after)
    .bind(scope.workflow)
    .bind(limit as i64)
    .bind(scope.workspace)
    .fetch_all(&mut *conn)
    .await
    .context("reading events")?;
    rows.iter()
        .map(|row| Ok(LiveEvent::new(record_from_row(row)?, row.get("workspace"))))
        .collect()
}

/// The workspace a workflow belongs to, `None` if there is no such workflow.
pub(super) async fn workspace_of(
    conn: &mut SqliteConnection,
    id: &str,
) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar("SELECT workspace FROM workflows WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a workflow's workspace")
}

/// The newest event id of the whole log (0 when empty).
pub(super) async fn last_event_id(conn: &mut SqliteConnection) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events")
        .fetch_one(&mut *conn)
        .await
        .context("reading the last event id")
}

/// Takes leases on up to `limit` workflows that have work and no live owner: no lease, or an
/// expired one (this owner's own too: it let it lapse, so it holds nothing there any more).
/// With `steal`, a lease held by another owner is taken even before it expires (SQLite: this
/// process owns the file, so any other owner is a dead predecessor).
pub(super) async fn claim(
    conn: &mut SqliteConnection,
    owner: &str,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
    limit: u32,
    steal: bool,
) -> anyhow::Result<Vec<Claimed>> {
    let rows = sqlx::query(
        "SELECT w.id, w.state, w.spec, l.owner AS lease_owner, l.epoch AS lease_epoch \
         FROM workflows w LEFT JOIN leases l ON l.workflow_id = w.id \
         WHERE w.status IN ('pending', 'running', 'stalled') \
           AND (l.workflow_id IS NULL OR l.expires_at < ?2 OR (l.owner <> ?1 AND ?3)) \
         ORDER BY w.created_at LIMIT ?4",
    )
    .bind(owner)
    .bind(ts(now))
    .bind(steal)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await
    .context("finding workflows to claim")?;

    let expires = ts(now + ttl);
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get("id");
        let previous_owner: Option<String> = row.get("lease_owner");
        let epoch = row.get::<Option<i64>, _>("lease_epoch").unwrap_or(0) + 1;
        let state = group::decode_state(row.get("state"), row.get("spec"))?;
        sqlx::query(
            "INSERT INTO leases (workflow_id, owner, epoch, expires_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (workflow_id) DO UPDATE SET owner = excluded.owner, \
               epoch = excluded.epoch, expires_at = excluded.expires_at",
        )
        .bind(&id)
        .bind(owner)
        .bind(epoch)
        .bind(&expires)
        .execute(&mut *conn)
        .await
        .context("taking a lease")?;
        claimed.push(Claimed {
            state,
            fence: Fence {
                owner: owner.into(),
                epoch,
            },
            previous_owner,
        });
    }
    Ok(claimed)
}

/// Extends the leases `owner` holds on `ids`; returns the ids it still holds. A lease it
/// holds on a workflow it no longer runs is left to expire.
pub(super) async fn renew(
    conn: &mut SqliteConnection,
    owner: &str,
    ids: &[String],
    expires: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let ids = serde_json::to_string(ids).context("encoding workflow ids")?;
    sqlx::query_scalar(
        "UPDATE leases SET expires_at = ?1 WHERE owner = ?2 \
           AND workflow_id IN (SELECT value FROM json_each(?3)) RETURNING workflow_id",
    )
    .bind(ts(expires))
    .bind(owner)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .context("renewing leases")
}

/// Gives up a workflow (e.g. paused: nothing to run until a person decides).
pub(super) async fn release(
    conn: &mut SqliteConnection,
    owner: &str,
    workflow_id: &str,
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM leases WHERE workflow_id = ? AND owner = ?")
        .bind(workflow_id)
        .bind(owner)
        .execute(&mut *conn)
        .await
        .context("releasing a lease")?;
    Ok(())
}

/// Deletes (or with `dry_run` only finds) up to `limit` finished workflows that last changed
/// before `before`, with everything that belongs to them, in one transaction.
pub(super) async fn prune(
    conn: &mut SqliteConnection,
    before: DateTime<Utc>,
    limit: u32,
    dry_run: bool,
) -> anyhow::Result<super::Pruned> {
    // IMMEDIATE: the write lock first, so no other process changes a workflow between
    // choosing it and deleting it.
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
        .await
        .context("beginning a prune")?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM workflows WHERE status IN ('completed', 'failed', 'cancelled') \
           AND updated_at < ?1 ORDER BY updated_at LIMIT ?2",
    )
    .bind(ts(before))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .context("finding finished workflows")?;
    let json = serde_json::to_string(&ids).context("encoding workflow ids")?;
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE workflow_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(&json)
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
        "DELETE FROM outputs WHERE workflow_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM events WHERE workflow_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM steps WHERE workflow_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM leases WHERE workflow_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM idempotency_keys WHERE workflow_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM workflows WHERE id IN (SELECT value FROM json_each(?1))",
    ] {
        sqlx::query(delete)
            .bind(&json)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("pruning: {delete}"))?;
    }
    // The log's head (AUTOINCREMENT's counter: the newest events may be among the deleted).
    sqlx::query(
        "UPDATE retention SET pruned_through = \
           (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events')",
    )
    .execute(&mut *tx)
    .await
    .context("recording the pruned ids")?;
    tx.commit().await.context("committing a prune")?;
    Ok(super::Pruned {
        workflows: ids,
        events: events as u64,
    })
}

/// The log's last id when retention last deleted something (0 if never).
pub(super) async fn pruned_through(conn: &mut SqliteConnection) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT pruned_through FROM retention")
        .fetch_one(&mut *conn)
        .await
        .context("reading the retention mark")
}
