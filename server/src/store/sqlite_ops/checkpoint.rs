//! The SQLite checkpoint: one round of a group commit, read in one statement and written in
//! one multi-statement query.

use std::collections::HashMap;

use anyhow::Context;
use chrono::Utc;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, query_builder::Separated};

use super::ts;
use crate::store::{
    group::{self, RoundFacts, Rows},
    types::{Change, Outcome},
};

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
pub(in crate::store) async fn commit_round(
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
