//! The SQLite queries behind [`super::Store`]: the checkpoint transaction, reads, leases.
//!
//! Timestamps are stored as RFC 3339 text with a fixed number of digits, so that comparing
//! strings compares instants.

use std::collections::BTreeSet;

use anyhow::Context;
use cairn::{EventRecord, WorkflowState};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{Row, SqliteConnection};

use super::{
    decide::{Facts, Plan, decide},
    types::{Change, Claimed, Fence, ListQuery, Outcome, WorkflowSummary},
};

/// The text form of an instant in the database.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("bad timestamp {s:?} in the database"))?
        .with_timezone(&Utc))
}

/// Applies one change inside the caller's transaction: [`decide`] says whether it applies
/// from the rows read here, then its rows are written. Everything is checked before anything
/// is written, so a rejected change leaves no trace and the rest of the batch goes on.
pub(super) async fn apply_change(
    conn: &mut SqliteConnection,
    change: Change,
) -> anyhow::Result<Outcome> {
    let plan = match decide(&mut SqliteFacts(&mut *conn), change).await? {
        Ok(plan) => plan,
        Err(rejection) => return Ok(Outcome::Rejected(rejection)),
    };
    let Plan {
        workflow_id,
        creating,
        mut state,
        events,
        encoded,
        outputs,
        idempotency,
        lease,
    } = plan;

    let mut records = Vec::with_capacity(events.len());
    let mut touched = BTreeSet::new();
    let mut outputs = outputs.into_iter().peekable();
    for (i, (s, data)) in events.into_iter().zip(encoded).enumerate() {
        if let Some(step) = s.event.step_id() {
            touched.insert(step.to_string());
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (workflow_id, type, at, data) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(&workflow_id)
        .bind(s.event.type_name())
        .bind(ts(s.at))
        .bind(&data)
        .fetch_one(&mut *conn)
        .await
        .context("appending an event")?;
        if let Some((_, output)) = outputs.next_if(|(k, _)| *k == i) {
            let step = s.event.step_id().unwrap_or_default();
            sqlx::query(
                "INSERT INTO outputs (event_id, workflow_id, step_id, bytes, output) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(&workflow_id)
            .bind(step)
            .bind(output.len() as i64)
            .bind(&*output)
            .execute(&mut *conn)
            .await
            .context("storing a step's output")?;
        }
        let rec = EventRecord {
            id,
            workflow_id: workflow_id.clone(),
            at: s.at,
            event: s.event,
        };
        state
            .apply(&rec)
            .context("an event that passed the dry run did not apply")?;
        records.push(rec);
    }

    write_projection(conn, &state, creating, &touched).await?;

    if let Some((key, hash)) = idempotency {
        sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, workflow_id, created_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(key)
        .bind(hash)
        .bind(&workflow_id)
        .bind(ts(state.updated_at.unwrap_or_else(Utc::now)))
        .execute(&mut *conn)
        .await
        .context("recording an idempotency key")?;
    }
    if let Some((fence, ttl)) = lease {
        sqlx::query(
            "INSERT INTO leases (workflow_id, owner, epoch, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&workflow_id)
        .bind(&*fence.owner)
        .bind(fence.epoch)
        .bind(ts(Utc::now() + ttl))
        .execute(&mut *conn)
        .await
        .context("taking a new workflow's lease")?;
    }
    if state.status.is_terminal() {
        // Nothing left to run: no engine needs to hold it.
        sqlx::query("DELETE FROM leases WHERE workflow_id = ?")
            .bind(&workflow_id)
            .execute(&mut *conn)
            .await
            .context("releasing a finished workflow's lease")?;
    }

    Ok(Outcome::Committed {
        records,
        state: Box::new(state),
    })
}

/// What [`decide`] reads, from SQLite.
struct SqliteFacts<'c>(&'c mut SqliteConnection);

impl Facts for SqliteFacts<'_> {
    async fn idempotency_key(&mut self, key: &str) -> anyhow::Result<Option<(String, String)>> {
        sqlx::query_as("SELECT request_hash, workflow_id FROM idempotency_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *self.0)
            .await
            .context("looking up an idempotency key")
    }

    async fn lease(&mut self, workflow_id: &str) -> anyhow::Result<Option<(String, i64)>> {
        sqlx::query_as("SELECT owner, epoch FROM leases WHERE workflow_id = ?")
            .bind(workflow_id)
            .fetch_optional(&mut *self.0)
            .await
            .context("checking a lease")
    }

    async fn position(&mut self, workflow_id: &str) -> anyhow::Result<Option<i64>> {
        sqlx::query_scalar("SELECT last_event_id FROM workflows WHERE id = ?")
            .bind(workflow_id)
            .fetch_optional(&mut *self.0)
            .await
            .context("checking a workflow's position")
    }

    async fn state(&mut self, workflow_id: &str) -> anyhow::Result<Option<WorkflowState>> {
        load_state(self.0, workflow_id).await
    }
}

async fn write_projection(
    conn: &mut SqliteConnection,
    state: &WorkflowState,
    creating: bool,
    touched: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let json = serde_json::to_string(state).context("encoding a workflow state")?;
    let now = state.updated_at.map(ts).unwrap_or_default();
    let created = state.created_at.map(ts).unwrap_or_else(|| now.clone());
    sqlx::query(
        "INSERT INTO workflows (id, name, status, state, created_at, updated_at, last_event_id, next_wake_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state, \
           updated_at = excluded.updated_at, last_event_id = excluded.last_event_id, \
           next_wake_at = excluded.next_wake_at",
    )
    .bind(&state.id)
    .bind(&state.name)
    .bind(state.status.as_str())
    .bind(json)
    .bind(created)
    .bind(&now)
    .bind(state.last_event_id)
    .bind(state.next_wake().map(ts))
    .execute(&mut *conn)
    .await
    .context("updating the workflow projection")?;

    // A manual retry resets descendants too, so on anything but a plain step event all
    // steps are rewritten; otherwise only the ones the events named.
    for step in &state.steps {
        if !creating && !touched.is_empty() && !touched.contains(&step.id) {
            continue;
        }
        sqlx::query(
            "INSERT INTO steps (workflow_id, step_id, status, attempt, session_id, next_attempt_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (workflow_id, step_id) DO UPDATE SET status = excluded.status, \
               attempt = excluded.attempt, session_id = excluded.session_id, \
               next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
        )
        .bind(&state.id)
        .bind(&step.id)
        .bind(step.status.as_str())
        .bind(step.attempt as i64)
        .bind(&step.session_id)
        .bind(step.next_attempt_at.map(ts))
        .bind(&now)
        .execute(&mut *conn)
        .await
        .context("updating a step projection")?;
    }
    Ok(())
}

/// The committed state of a workflow.
pub(super) async fn load_state(
    conn: &mut SqliteConnection,
    id: &str,
) -> anyhow::Result<Option<WorkflowState>> {
    let json: Option<String> = sqlx::query_scalar("SELECT state FROM workflows WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("loading a workflow")?;
    json.map(|j| serde_json::from_str(&j).context("decoding a stored workflow state"))
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
         ORDER BY created_at DESC, id DESC LIMIT ?3",
    )
    .bind(q.status.map(|s| s.as_str()))
    .bind(q.before.as_deref())
    .bind(q.limit as i64)
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

/// Events after `after`, of one workflow or of all, oldest first, at most `limit`.
pub(super) async fn events_after(
    conn: &mut SqliteConnection,
    workflow_id: Option<&str>,
    after: i64,
    limit: u32,
) -> anyhow::Result<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT id, workflow_id, at, data FROM events \
         WHERE id > ?1 AND (?2 IS NULL OR workflow_id = ?2) ORDER BY id LIMIT ?3",
    )
    .bind(after)
    .bind(workflow_id)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await
    .context("reading events")?;
    rows.iter().map(record_from_row).collect()
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
        "SELECT w.id, w.state, l.owner AS lease_owner, l.epoch AS lease_epoch \
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
        let state: WorkflowState = serde_json::from_str(row.get::<&str, _>("state"))
            .context("decoding a stored workflow state")?;
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
