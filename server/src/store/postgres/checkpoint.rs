//! The Postgres checkpoint: a group's changes in one transaction, a constant number of
//! round trips per round (lock, read leases, take ids, write with `UNNEST`), and one
//! notification per group.

use std::collections::HashMap;

use anyhow::Context;
use cairn::WorkflowState;
use sqlx::{Connection, PgConnection};

use super::{PgStore, load_state};
use crate::store::{
    group::{self, LoadState, RoundFacts, Rows},
    types::{Change, Outcome},
    writer::GroupCommit,
};

impl GroupCommit for PgStore {
    async fn commit_changes(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        self.commit_in_one(changes).await
    }

    fn refused_value(e: &anyhow::Error) -> bool {
        refused_value(e)
    }
}

impl LoadState for PgConnection {
    async fn load_state(&mut self, id: &str) -> anyhow::Result<Option<WorkflowState>> {
        load_state(self, id).await
    }
}

impl PgStore {
    /// One transaction, round after round (see [`super::group::rounds`]), on the
    /// checkpoints' connection.
    async fn commit_in_one(&self, changes: Vec<Change>) -> anyhow::Result<Vec<Outcome>> {
        let mut held = self.checkpoints.lock().await;
        let conn = match held.take() {
            Some(conn) => held.insert(conn),
            None => held.insert(
                self.pool
                    .acquire()
                    .await
                    .context("acquiring a connection")?,
            ),
        };
        let result = commit_on(conn, changes, &self.channel).await;
        if result.is_err() {
            // Back to the pool, which tests it and closes it if it is broken.
            *held = None;
        }
        result
    }
}

async fn commit_on(
    conn: &mut PgConnection,
    changes: Vec<Change>,
    channel: &str,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = group::Outcomes::new(changes.len());
    let (ids, keys) = group::touched(&changes);
    let rounds = group::rounds(changes);
    let mut tx = conn.begin().await.context("beginning a checkpoint")?;
    if rounds.len() > 1 {
        // The log head's lock must be the last any checkpoint takes (so that two instances'
        // checkpoints never wait on each other in a circle), but the first round takes it:
        // every lock of the later rounds is taken now.
        lock(&mut tx, &ids, &keys).await?;
    }
    let count = rounds.len();
    let mut last = None;
    for (i, (slots, round)) in rounds.into_iter().enumerate() {
        // The group's one notification goes with its last round's rows, or on its own when
        // that round writes nothing.
        let notify = (i + 1 == count).then_some(channel);
        let (done, written) = commit_round(&mut tx, round, notify).await?;
        outcomes.fill(slots, done);
        match written {
            Written::Notified => last = None,
            Written::Upto(id) => last = Some(id),
            Written::Nothing => {}
        }
    }
    if let Some(last) = last {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(last.to_string())
            .execute(&mut *tx)
            .await
            .context("notifying a checkpoint")?;
    }
    tx.commit().await.context("committing a checkpoint")?;
    outcomes.finish()
}

/// What a round wrote to the log.
enum Written {
    Nothing,
    /// Events up to this id, not yet notified.
    Upto(i64),
    /// Events, and the notification for the whole group.
    Notified,
}

/// Locks the rows of the workflows `ids` that exist, in id order (no deadlocks between
/// instances), and the idempotency keys `keys` by value (two instances given the same key at
/// once decide one after the other); returns the workflows' log positions. Both sorted.
async fn lock(
    tx: &mut PgConnection,
    ids: &[String],
    keys: &[String],
) -> anyhow::Result<HashMap<String, i64>> {
    let positions = sqlx::query_as(
        "SELECT id, last_event_id FROM workflows WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .context("locking workflows")?
    .into_iter()
    .collect();
    if !keys.is_empty() {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 7)) \
             FROM unnest($1::text[]) AS k ORDER BY k",
        )
        .bind(keys)
        .execute(&mut *tx)
        .await
        .context("locking idempotency keys")?;
    }
    Ok(positions)
}

/// One round inside the checkpoint's transaction: lock, read, decide, take ids, write, and
/// notify `notify` (the group's last round).
async fn commit_round(
    tx: &mut PgConnection,
    changes: Vec<Change>,
    notify: Option<&str>,
) -> anyhow::Result<(Vec<Outcome>, Written)> {
    let (ids, key_list) = group::touched(&changes);
    // 1. Lock (already held when an earlier round of the group took them), then read the
    //    leases in a statement of its own: it sees a takeover that committed while this one
    //    waited for the locks.
    let positions = lock(tx, &ids, &key_list).await?;
    let leases: HashMap<String, (String, i64)> = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT workflow_id, owner, epoch FROM leases WHERE workflow_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .context("checking leases")?
    .into_iter()
    .map(|(id, owner, epoch)| (id, (owner, epoch)))
    .collect();

    // 2. Idempotency keys, locked above.
    let mut keys = HashMap::new();
    if !key_list.is_empty() {
        keys = sqlx::query_as::<_, (String, String, String)>(
            "SELECT key, request_hash, workflow_id FROM idempotency_keys WHERE key = ANY($1)",
        )
        .bind(&key_list)
        .fetch_all(&mut *tx)
        .await
        .context("looking up idempotency keys")?
        .into_iter()
        .map(|(k, h, w)| (k, (h, w)))
        .collect();
    }

    // 3. Decide every change on what was read.
    let mut facts = RoundFacts {
        conn: &mut *tx,
        positions,
        leases,
        keys,
    };
    let decided = group::decide_round(&mut facts, changes).await?;
    let total = group::event_count(&decided);
    if total == 0 {
        return Ok((Rows::build(decided, 0)?.1, Written::Nothing));
    }

    // 4. Take the ids: the log head's row lock is the last lock taken.
    let first: i64 =
        sqlx::query_scalar("UPDATE log_head SET last_id = last_id + $1 RETURNING last_id - $1 + 1")
            .bind(total)
            .fetch_one(&mut *tx)
            .await
            .context("taking event ids")?;
    let (rows, outcomes) = Rows::build(decided, first)?;
    let last = first + total - 1;
    write_rows(tx, &rows, notify, last).await?;
    let written = match notify {
        Some(_) => Written::Notified,
        None => Written::Upto(last),
    };
    Ok((outcomes, written))
}

/// 5. Every table in one statement: one data-modifying CTE per table (foreign keys are
///    checked at the end of the statement, when all of them are written), and, with
///    `notify`, the group's one notification on that channel, ids only: listeners read the
///    log themselves.
async fn write_rows(
    tx: &mut PgConnection,
    rows: &Rows,
    notify: Option<&str>,
    last: i64,
) -> anyhow::Result<()> {
    let outputs: Vec<&[u8]> = rows.outputs.iter().map(|o| o.as_bytes()).collect();
    sqlx::query(
        "WITH \
         events_written AS (INSERT INTO events (id, workflow_id, type, at, data) \
           SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])), \
         outputs_written AS (INSERT INTO outputs (event_id, workflow_id, step_id, bytes, output) \
           SELECT * FROM UNNEST($6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::bytea[])), \
         workflows_written AS (INSERT INTO workflows \
             (id, name, status, state, created_at, updated_at, last_event_id, next_wake_at, spec, workspace) \
           SELECT * FROM UNNEST($11::text[], $12::text[], $13::text[], $14::text[], \
             $15::timestamptz[], $16::timestamptz[], $17::bigint[], $18::timestamptz[], $37::text[], \
             $38::text[]) \
           ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state, \
             updated_at = excluded.updated_at, last_event_id = excluded.last_event_id, \
             next_wake_at = excluded.next_wake_at), \
         steps_written AS (INSERT INTO steps \
             (workflow_id, step_id, status, attempt, session_id, next_attempt_at, updated_at) \
           SELECT * FROM UNNEST($19::text[], $20::text[], $21::text[], $22::bigint[], $23::text[], \
             $24::timestamptz[], $25::timestamptz[]) \
           ON CONFLICT (workflow_id, step_id) DO UPDATE SET status = excluded.status, \
             attempt = excluded.attempt, session_id = excluded.session_id, \
             next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at), \
         keys_written AS (INSERT INTO idempotency_keys (key, request_hash, workflow_id, created_at) \
           SELECT * FROM UNNEST($26::text[], $27::text[], $28::text[], $29::timestamptz[])), \
         leases_taken AS (INSERT INTO leases (workflow_id, owner, epoch, expires_at) \
           SELECT w, o, e, now() + t * interval '1 millisecond' \
           FROM UNNEST($30::text[], $31::text[], $32::bigint[], $33::bigint[]) AS l(w, o, e, t)), \
         leases_released AS (DELETE FROM leases WHERE workflow_id = ANY($34)) \
         SELECT pg_notify($35, $36) WHERE $35::text IS NOT NULL",
    )
    .bind(&rows.event_ids)
    .bind(&rows.event_workflows)
    .bind(&rows.event_types)
    .bind(&rows.event_ats)
    .bind(&rows.event_data)
    .bind(&rows.output_events)
    .bind(&rows.output_workflows)
    .bind(&rows.output_steps)
    .bind(&rows.output_bytes)
    .bind(&outputs)
    .bind(&rows.wf_ids)
    .bind(&rows.wf_names)
    .bind(&rows.wf_statuses)
    .bind(&rows.wf_states)
    .bind(&rows.wf_created)
    .bind(&rows.wf_updated)
    .bind(&rows.wf_last)
    .bind(&rows.wf_wake)
    .bind(&rows.step_workflows)
    .bind(&rows.step_ids)
    .bind(&rows.step_statuses)
    .bind(&rows.step_attempts)
    .bind(&rows.step_sessions)
    .bind(&rows.step_next)
    .bind(&rows.step_updated)
    .bind(&rows.key_keys)
    .bind(&rows.key_hashes)
    .bind(&rows.key_workflows)
    .bind(&rows.key_created)
    .bind(&rows.lease_workflows)
    .bind(&rows.lease_owners)
    .bind(&rows.lease_epochs)
    .bind(&rows.lease_ttls_ms)
    .bind(&rows.finished)
    .bind(notify)
    .bind(last.to_string())
    .bind(&rows.wf_specs)
    .bind(&rows.wf_workspaces)
    .execute(&mut *tx)
    .await
    .context("writing a checkpoint")?;
    Ok(())
}

/// Whether Postgres refused a value rather than failed: a data exception (class 22: a NUL in
/// text, a value out of range), an integrity violation (23) or a size limit (54). Retrying
/// such a change can never succeed; anything else (a lost connection, a restart, a deadlock)
/// fails the group, which is then retried.
fn refused_value(e: &anyhow::Error) -> bool {
    let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    db.code()
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
}
