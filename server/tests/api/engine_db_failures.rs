//! The engine when the database fails under it (Postgres only): a checkpoint that a
//! trigger makes fail, as a database gone away would, and one whose `COMMIT` lands but whose
//! answer is lost on the way back. Nothing is stuck, lost or run twice.

use std::time::Duration;

use cairn::{Event, StepStatus, WorkflowStatus};
use serde_json::json;
use server::store::Store;

use crate::{
    engine::{create, engine, run_until_ended},
    store_suite::Db,
};

/// A workflow claimed in a tick whose checkpoint then fails (the database went away between
/// the claim and the commit) must not stay claimed and unstarted: its first events were in
/// that checkpoint. Postgres only: a trigger makes the checkpoint fail as a lost connection
/// would (an error that is not a refused value, so the whole group fails).
#[tokio::test]
async fn a_workflow_claimed_in_a_failed_checkpoint_runs_once_the_database_is_back() {
    let db = Db::postgres().await;
    let pg = db.pg();
    let store = db.store().await;
    let id = create(
        &store,
        json!({ "id": "s", "role": "developer", "task": "T", "params": { "duration_ms": 0 } }),
    )
    .await;
    let mut sql = pg.connect().await;
    refuse_checkpoints(&mut sql).await;
    let mut owner = engine(&store, "owner", false);
    assert!(owner.tick().await.is_err(), "the checkpoint must fail");
    assert_eq!(
        owner.owned_count(),
        0,
        "the claim is let go with its checkpoint"
    );

    accept_checkpoints(&mut sql).await;
    let s = run_until_ended(&mut owner, &store, &id, Duration::from_secs(10)).await;
    assert_eq!(s.status, WorkflowStatus::Completed);
}

/// A checkpoint that reaches the database but whose answer is lost (the connection drops
/// right after `COMMIT`): the engine takes it for failed, yet the step it started is durable
/// as running. It must run, once, rather than stay running with nothing running it; and the
/// result that checkpoint carried must not be committed twice. Postgres only: a relay in
/// front of it loses the answer.
#[tokio::test]
async fn a_step_started_by_a_checkpoint_whose_answer_was_lost_still_runs_once() {
    let p = json!({ "duration_ms": 0 });
    let kinds = through_a_lost_answer(json!([
        { "id": "a", "role": "architect", "task": "A", "params": p },
        { "id": "b", "role": "developer", "task": "{a.output}B", "deps": ["a"], "params": p }
    ]))
    .await;
    assert_eq!(
        kinds,
        [
            ("a".into(), "step.started"),
            ("a".into(), "step.completed"),
            ("b".into(), "step.started"),
            ("b".into(), "step.completed"),
        ],
        "each step started and completed once"
    );
}

/// The same when the lost checkpoint started the next attempt of the step whose failure it
/// carried (a retry without delay): the step runs again under its new number.
#[tokio::test]
async fn a_retry_started_by_a_checkpoint_whose_answer_was_lost_still_runs_once() {
    let kinds = through_a_lost_answer(json!([
        { "id": "a", "role": "architect", "task": "A",
          "retry": { "initial_interval_ms": 0, "jitter": false },
          "params": { "duration_ms": 0, "fail_attempts": 1 } },
        { "id": "b", "role": "developer", "task": "{a.output}B", "deps": ["a"],
          "params": { "duration_ms": 0 } }
    ]))
    .await;
    assert_eq!(
        kinds,
        [
            ("a".into(), "step.started"),
            ("a".into(), "step.retrying"),
            ("a".into(), "step.started"),
            ("a".into(), "step.completed"),
            ("b".into(), "step.started"),
            ("b".into(), "step.completed"),
        ]
    );
}

/// Runs `spec` (its first step `a`, then `b` after it) on Postgres through a relay that loses
/// the answer to the checkpoint taking `a`'s first result, to the end; returns the step
/// events of its history, as (step, type).
async fn through_a_lost_answer(spec: serde_json::Value) -> Vec<(String, &'static str)> {
    let db = Db::postgres().await;
    let pg = db.pg();
    let relay = crate::pg::Relay::start(pg).await;
    let store = Store::connect(&relay.url).await.unwrap();
    let id = create(&store, spec).await;
    let mut owner = engine(&store, "owner", false);
    assert_eq!(owner.tick().await.unwrap().started, 1);
    assert!(owner.wait_for_attempt().await);

    // The checkpoint taking a's result commits, and its answer is lost.
    relay.lose_next_commit_answer();
    assert!(owner.tick().await.is_err(), "the answer must be lost");
    assert_eq!(owner.in_flight_count(), 0, "nothing launched");
    let s = store.load(&id).await.unwrap().unwrap();
    assert!(
        s.steps.iter().any(|s| s.status == StepStatus::Running),
        "yet the checkpoint is durable, a step started in it"
    );

    let s = run_until_ended(&mut owner, &store, &id, Duration::from_secs(10)).await;
    assert_eq!(s.status, WorkflowStatus::Completed);
    assert_eq!(s.step("b").unwrap().output.as_deref(), Some("AB"));
    let history = store.history(&id, 0).await.unwrap();
    history
        .iter()
        .filter_map(|r| Some((r.event.step_id()?.to_string(), r.event.type_name())))
        .collect()
}

/// Makes every checkpoint fail, as a database gone away would (an error that is not a
/// refused value, so the whole group fails), until [`accept_checkpoints`].
async fn refuse_checkpoints(sql: &mut sqlx::PgConnection) {
    for stmt in [
        "CREATE OR REPLACE FUNCTION cairn.refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'the database is away'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON cairn.events FOR EACH ROW EXECUTE FUNCTION cairn.refuse()",
    ] {
        sqlx::query(stmt).execute(&mut *sql).await.unwrap();
    }
}

async fn accept_checkpoints(sql: &mut sqlx::PgConnection) {
    sqlx::query("DROP TRIGGER refuse ON cairn.events")
        .execute(sql)
        .await
        .unwrap();
}

/// The log lines folded into a checkpoint that fails are committed by the next one, in
/// order, with the result they came with. Postgres only (a trigger fails the checkpoint).
#[tokio::test]
async fn log_lines_in_a_failed_checkpoint_are_committed_by_the_next() {
    let db = Db::postgres().await;
    let pg = db.pg();
    let store = db.store().await;
    let id = create(
        &store,
        json!({ "id": "s", "role": "developer", "task": "T",
                "params": { "duration_ms": 0, "log_lines": 3 } }),
    )
    .await;
    let mut owner = engine(&store, "owner", false);
    assert_eq!(owner.tick().await.unwrap().started, 1);
    assert!(owner.wait_for_attempt().await);
    let mut sql = pg.connect().await;
    refuse_checkpoints(&mut sql).await;
    assert!(owner.tick().await.is_err(), "the checkpoint must fail");
    accept_checkpoints(&mut sql).await;
    owner.tick().await.unwrap();

    let s = store.load(&id).await.unwrap().unwrap();
    assert_eq!(s.status, WorkflowStatus::Completed);
    let history = store.history(&id, 0).await.unwrap();
    let lines: Vec<&str> = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::StepLog { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lines, ["s line 1", "s line 2", "s line 3"]);
}
