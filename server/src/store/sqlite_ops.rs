//! The SQLite queries behind [`super::Store`]: the checkpoint's statements, reads, leases.
//!
//! Timestamps are stored as RFC 3339 text with a fixed number of digits, so that comparing
//! strings compares instants.

use std::collections::HashMap;

use anyhow::Context;
use cairn::{EventRecord, WorkflowState};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, query_builder::Separated};

use super::{
    group::{self, LoadState, RoundFacts, Rows},
    types::{Change, Claimed, EventScope, Fence, ListQuery, LiveEvent, Outcome, WorkflowSummary},
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

impl LoadState for SqliteConnection {
    async fn load_state(&mut self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        load_state(self, id).await
    }
}

/// A list of values as the JSON array that `json_each` reads, so that one statement takes a
/// whole column however many rows it has.
fn json<T: serde::Serialize>(values: &T) -> anyhow::Result<String> {
    serde_json::to_string(values).context("encoding rows")
}

/// One round of a group commit inside the caller's transaction: read what the round touches
/// in bulk (positions, leases and the log's next id in one statement; idempotency keys when
/// the round has any), decide each change ([`decide`]), then write every table in one call.
/// Ids are the log's next ones: this process is the file's only writer, and its writes go
/// through one connection, so nothing else can take them meanwhile.
///
/// Each call is a round trip to the connection's worker thread, and a chain's checkpoint is
/// a handful of rows: the round trips, not the rows, are most of what a checkpoint costs
/// beside its fsync. So reads are joined and writes are sent as one multi-statement query
/// (sqlx binds `?` parameters across its statements in order).
pub(super) async fn commit_round(
    conn: &mut SqliteConnection,
    changes: Vec<Change>,
) -> anyhow::Result<Vec<Outcome>> {
    let (ids, key_list) = group::touched(&changes);
    type Touched = (String, Option<i64>, Option<String>, Option<i64>, i64);
    let read: Vec<Touched> = sqlx::query_as(
        "SELECT j.value, w.last_event_id, l.owner, l.epoch, \
           (SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), \
                       COALESCE((SELECT MAX(id) FROM events), 0)) + 1) \
         FROM json_each(?) AS j \
         LEFT JOIN workflows AS w ON w.id = j.value \
         LEFT JOIN leases AS l ON l.workflow_id = j.value",
    )
    .bind(json(&ids)?)
    .fetch_all(&mut *conn)
    .await
    .context("reading workflows' positions and leases")?;
    // AUTOINCREMENT: never an id the log had before, even one since deleted.
    let first = read.first().map_or(1, |r| r.4);
    let mut positions = HashMap::new();
    let mut leases = HashMap::new();
    for (id, position, owner, epoch, _) in read {
        if let Some(p) = position {
            positions.insert(id.clone(), p);
        }
        if let (Some(owner), Some(epoch)) = (owner, epoch) {
            leases.insert(id, (owner, epoch));
        }
    }
    let mut keys = HashMap::new();
    if !key_list.is_empty() {
        keys = sqlx::query_as::<_, (String, String, String)>(
            "SELECT key, request_hash, workflow_id FROM idempotency_keys \
             WHERE key IN (SELECT value FROM json_each(?))",
        )
        .bind(json(&key_list)?)
        .fetch_all(&mut *conn)
        .await
        .context("looking up idempotency keys")?
        .into_iter()
        .map(|(k, h, w)| (k, (h, w)))
        .collect();
    }
    let mut facts = RoundFacts {
        conn: &mut *conn,
        positions,
        leases,
        keys,
    };
    let decided = group::decide_round(&mut facts, changes).await?;
    if group::event_count(&decided) == 0 {
        return Ok(Rows::build(decided, 0)?.1);
    }
    let (rows, outcomes) = Rows::build(decided, first)?;
    write_rows(conn, rows).await?;
    Ok(outcomes)
}

/// Rows per `INSERT` statement: at ten columns, well under SQLite's 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 2000;

/// Statements of up to this many rows in all are kept prepared: a chain's checkpoint has the
/// same few shapes again and again, while a big group's shape rarely comes back and its
/// prepared form would only fill the cache.
const PREPARED_ROWS: usize = 16;

/// Appends `INSERT INTO {head} VALUES (…), … {tail};` for `rows`, one statement per
/// [`ROWS_PER_STATEMENT`] (nothing when there are none).
fn push_insert<T>(
    q: &mut QueryBuilder<Sqlite>,
    head: &str,
    rows: impl IntoIterator<Item = T>,
    tail: &str,
    mut push: impl FnMut(Separated<'_, Sqlite, &'static str>, T),
) {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        q.push("INSERT INTO ").push(head).push(" ");
        q.push_values(rows.by_ref().take(ROWS_PER_STATEMENT), &mut push);
        q.push(tail).push(";\n");
    }
}

/// Writes every table a round touches as one multi-statement query, one round trip: multi-row
/// `VALUES` with each value bound as a parameter (sqlx binds `?` across the statements in
/// order). A state or an output is moved into its parameter as it is, never escaped into
/// another text and parsed back.
async fn write_rows(conn: &mut SqliteConnection, rows: Rows) -> anyhow::Result<()> {
    let Rows {
        event_ids,
        event_workflows,
        event_types,
        event_ats,
        event_data,
        output_events,
        output_workflows,
        output_steps,
        output_bytes,
        outputs,
        wf_ids,
        wf_names,
        wf_statuses,
        wf_states,
        wf_specs,
        wf_workspaces,
        wf_created,
        wf_updated,
        wf_last,
        wf_wake,
        step_workflows,
        step_ids,
        step_statuses,
        step_attempts,
        step_sessions,
        step_next,
        step_updated,
        key_keys,
        key_hashes,
        key_workflows,
        key_created,
        lease_workflows,
        lease_owners,
        lease_epochs,
        lease_ttls_ms,
        finished,
    } = rows;
    let count = event_ids.len() + wf_ids.len() + step_ids.len() + key_keys.len();
    let mut q = QueryBuilder::<Sqlite>::new("");
    let events = event_ids
        .into_iter()
        .zip(event_workflows)
        .zip(event_types)
        .zip(event_ats)
        .zip(event_data);
    push_insert(
        &mut q,
        "events (id, workflow_id, type, at, data)",
        events,
        "",
        |mut b, ((((id, workflow), kind), at), data)| {
            b.push_bind(id)
                .push_bind(workflow)
                .push_bind(kind)
                .push_bind(ts(at))
                .push_bind(data);
        },
    );
    let outputs = output_events
        .into_iter()
        .zip(output_workflows)
        .zip(output_steps)
        .zip(output_bytes)
        .zip(outputs);
    push_insert(
        &mut q,
        "outputs (event_id, workflow_id, step_id, bytes, output)",
        outputs,
        "",
        |mut b, ((((event, workflow), step), bytes), output)| {
            b.push_bind(event)
                .push_bind(workflow)
                .push_bind(step)
                .push_bind(bytes)
                .push_bind(output);
        },
    );
    let workflows = wf_ids
        .into_iter()
        .zip(wf_names)
        .zip(wf_statuses)
        .zip(wf_states)
        .zip(wf_specs)
        .zip(wf_created)
        .zip(wf_updated)
        .zip(wf_last)
        .zip(wf_wake)
        .zip(wf_workspaces);
    push_insert(
        &mut q,
        "workflows (id, name, status, state, spec, created_at, updated_at, last_event_id, \
         next_wake_at, workspace)",
        workflows,
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state, \
         updated_at = excluded.updated_at, last_event_id = excluded.last_event_id, \
         next_wake_at = excluded.next_wake_at",
        |mut b, (((((((((id, name), status), state), spec), created), updated), last), wake), ws)| {
            b.push_bind(id)
                .push_bind(name)
                .push_bind(status)
                .push_bind(state)
                .push_bind(spec)
                .push_bind(ts(created))
                .push_bind(ts(updated))
                .push_bind(last)
                .push_bind(wake.map(ts))
                .push_bind(ws);
        },
    );
    let steps = step_workflows
        .into_iter()
        .zip(step_ids)
        .zip(step_statuses)
        .zip(step_attempts)
        .zip(step_sessions)
        .zip(step_next)
        .zip(step_updated);
    push_insert(
        &mut q,
        "steps (workflow_id, step_id, status, attempt, session_id, next_attempt_at, updated_at)",
        steps,
        " ON CONFLICT (workflow_id, step_id) DO UPDATE SET status = excluded.status, \
         attempt = excluded.attempt, session_id = excluded.session_id, \
         next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
        |mut b, ((((((workflow, step), status), attempt), session), next), updated)| {
            b.push_bind(workflow)
                .push_bind(step)
                .push_bind(status)
                .push_bind(attempt)
                .push_bind(session)
                .push_bind(next.map(ts))
                .push_bind(ts(updated));
        },
    );
    let keys = key_keys
        .into_iter()
        .zip(key_hashes)
        .zip(key_workflows)
        .zip(key_created);
    push_insert(
        &mut q,
        "idempotency_keys (key, request_hash, workflow_id, created_at)",
        keys,
        "",
        |mut b, (((key, hash), workflow), created)| {
            b.push_bind(key)
                .push_bind(hash)
                .push_bind(workflow)
                .push_bind(ts(created));
        },
    );
    let now = Utc::now();
    let leases = lease_workflows
        .into_iter()
        .zip(lease_owners)
        .zip(lease_epochs)
        .zip(lease_ttls_ms);
    push_insert(
        &mut q,
        "leases (workflow_id, owner, epoch, expires_at)",
        leases,
        "",
        |mut b, (((workflow, owner), epoch), ttl_ms)| {
            b.push_bind(workflow)
                .push_bind(owner)
                .push_bind(epoch)
                .push_bind(ts(now + chrono::Duration::milliseconds(ttl_ms)));
        },
    );
    if !finished.is_empty() {
        // Nothing left to run: no engine needs to hold them.
        q.push("DELETE FROM leases WHERE workflow_id IN (SELECT value FROM json_each(")
            .push_bind(json(&finished)?)
            .push("))");
    }
    q.build()
        .persistent(count <= PREPARED_ROWS)
        .execute(&mut *conn)
        .await
        .context("writing a checkpoint's rows")?;
    Ok(())
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
