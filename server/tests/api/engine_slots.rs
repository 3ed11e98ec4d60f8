//! The engine's slots (`max_concurrency`), driven through `tick()`: what it claims and ends
//! while they are taken, and how it stops. Each test in [`crate::both_backends!`] runs on
//! both backends.

use cairn::{Event, StepStatus, WorkflowStatus};
use serde_json::json;
use server::store::Store;

use crate::{
    engine::{create, engine, run_until_ended, with_slots},
    store_suite::Db,
};

crate::both_backends!(
    a_finished_workflow_ends_even_while_every_slot_is_taken,
    an_engine_claims_only_the_workflows_it_has_slots_for,
    a_stopping_engine_commits_what_finished_and_hands_the_rest_over,
);

/// `n` workflows of one step that takes `duration_ms`, created (pending).
async fn one_step_workflows(store: &Store, n: usize, duration_ms: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let spec = json!({ "id": "s", "role": "developer", "task": "T",
                           "params": { "duration_ms": duration_ms } });
        ids.push(create(store, spec).await);
    }
    ids
}

/// Slots are given oldest workflow first, but a workflow whose last step has completed needs
/// none to end: it must not wait, `running`, for an older workflow's steps to free one.
async fn a_finished_workflow_ends_even_while_every_slot_is_taken(db: Db) {
    let store = db.store().await;
    let p = json!({ "duration_ms": 0 });
    let slow = json!({ "duration_ms": 60000 });
    let older = create(
        &store,
        json!([
            { "id": "x", "role": "architect", "task": "X", "params": p },
            { "id": "y1", "role": "developer", "task": "Y", "deps": ["x"], "params": slow },
            { "id": "y2", "role": "developer", "task": "Y", "deps": ["x"], "params": slow },
            { "id": "y3", "role": "developer", "task": "Y", "deps": ["x"], "params": slow }
        ]),
    )
    .await;
    let newer = create(
        &store,
        json!({ "id": "r", "role": "architect", "task": "R", "params": p }),
    )
    .await;
    let mut owner = with_slots(&store, "owner", 2, false);
    assert_eq!(owner.tick().await.unwrap().started, 2, "x and r");
    assert!(owner.wait_for_attempt().await);
    assert!(owner.wait_for_attempt().await);
    // x's end makes three steps ready for two slots; r's end leaves its workflow nothing to do.
    assert_eq!(owner.tick().await.unwrap().started, 2);
    owner.tick().await.unwrap();
    let status = |id: &str| {
        let store = store.clone();
        let id = id.to_string();
        async move { store.load(&id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(&newer).await, WorkflowStatus::Completed);
    assert_eq!(status(&older).await, WorkflowStatus::Running);
    assert_eq!(owner.in_flight_count(), 2);
}

/// Two engines with two slots each and five workflows waiting: the first takes only the two
/// it can start, so the second finds work; the fifth waits, `pending`, for a free slot
/// anywhere instead of sitting claimed behind a busy one.
async fn an_engine_claims_only_the_workflows_it_has_slots_for(db: Db) {
    let store = db.store().await;
    let ids = one_step_workflows(&store, 5, 60_000).await;
    let mut first = with_slots(&store, "first", 2, false);
    let mut second = with_slots(&db.store().await, "second", 2, false);
    assert_eq!(first.tick().await.unwrap().claimed, 2);
    assert_eq!(first.tick().await.unwrap().claimed, 0, "no slot left");
    assert_eq!(second.tick().await.unwrap().claimed, 2);
    assert_eq!((first.owned_count(), second.owned_count()), (2, 2));
    assert_eq!((first.in_flight_count(), second.in_flight_count()), (2, 2));
    let mut pending = 0;
    for id in &ids {
        if store.load(id).await.unwrap().unwrap().status == WorkflowStatus::Pending {
            pending += 1;
        }
    }
    assert_eq!(pending, 1);
}

/// SQLite: one process owns the file, so at start-up the leases of the one before are taken
/// at once, and that holds however many claims it takes to get them all, with fewer slots
/// than workflows (not only the first claim's worth, the rest waiting out the TTL).
#[tokio::test]
async fn at_start_up_every_lease_of_the_previous_process_is_taken_at_once() {
    let db = Db::sqlite();
    let store = db.store().await;
    let ids = one_step_workflows(&store, 5, 0).await;
    // The previous process claimed all five and died with their leases (half a minute).
    let mut before = engine(&store, "before", false);
    assert_eq!(before.tick().await.unwrap().claimed, 5);
    drop(before);

    let mut after = with_slots(&store, "after", 2, true);
    // Well within the half minute the old leases would take to expire.
    let within = std::time::Duration::from_secs(10);
    for id in &ids {
        let s = run_until_ended(&mut after, &store, id, within).await;
        assert_eq!(s.status, WorkflowStatus::Completed);
    }
}

/// Postgres: other instances share the database and are alive, so an engine starting with
/// `steal_on_start` (the default) still leaves their unexpired leases alone.
#[tokio::test]
async fn on_a_shared_database_a_starting_engine_leaves_live_leases_alone() {
    let db = Db::postgres().await;
    let store = db.store().await;
    let ids = one_step_workflows(&store, 3, 0).await;
    let mut running = engine(&store, "running", false);
    assert_eq!(running.tick().await.unwrap().claimed, 3);

    let mut starting = engine(&db.peer(&store).await, "starting", true);
    let t = starting.tick().await.unwrap();
    assert_eq!(t.claimed, 0, "took leases another live instance holds");
    assert_eq!(starting.owned_count(), 0);
    for id in &ids {
        let s = run_until_ended(&mut running, &store, id, std::time::Duration::from_secs(10)).await;
        assert_eq!(s.status, WorkflowStatus::Completed);
        let stalled = store
            .history(id, 0)
            .await
            .unwrap()
            .iter()
            .any(|r| matches!(r.event, Event::WorkflowStalled { .. }));
        assert!(!stalled, "{id} was taken over");
    }
}

/// Stopping, an engine commits the results that came back before the stop (they must not
/// run again elsewhere) without starting anything, and hands the workflow over: another
/// engine takes it over at once, runs the stopped attempt again and the steps after.
async fn a_stopping_engine_commits_what_finished_and_hands_the_rest_over(db: Db) {
    let store = db.store().await;
    let p = json!({ "duration_ms": 0 });
    let id = create(
        &store,
        json!([
            { "id": "a", "role": "architect", "task": "A", "params": p },
            { "id": "b", "role": "developer", "task": "B", "params": { "duration_ms": 60000 } },
            { "id": "c", "role": "tester", "task": "{a.output}C", "deps": ["a"], "params": p }
        ]),
    )
    .await;
    let mut owner = engine(&store, "owner", false);
    assert_eq!(owner.tick().await.unwrap().started, 2);
    assert!(
        owner.wait_for_attempt().await,
        "a is back, not yet committed"
    );
    owner.stop().await;

    let s = store.load(&id).await.unwrap().unwrap();
    let steps: Vec<_> = s.steps.iter().map(|s| (s.id.as_str(), s.status)).collect();
    assert_eq!(
        steps,
        [
            ("a", StepStatus::Completed),
            ("b", StepStatus::Running),
            ("c", StepStatus::Pending),
        ],
        "a's result is committed, and nothing new started"
    );

    // Taken over at once, not when the lease would have expired (half a minute).
    let mut next = engine(&db.peer(&store).await, "next", false);
    let t = next.tick().await.unwrap();
    assert_eq!((t.claimed, t.started), (1, 2), "b again, and c");
    let history = store.history(&id, 0).await.unwrap();
    let stalled = history
        .iter()
        .find_map(|r| match &r.event {
            Event::WorkflowStalled { previous_owner, .. } => Some(previous_owner.clone()),
            _ => None,
        })
        .expect("taken over");
    assert_eq!(stalled.as_deref(), Some("owner"));
    let completed = history
        .iter()
        .filter(|r| matches!(r.event, Event::StepCompleted { .. }))
        .count();
    assert_eq!(completed, 1, "a completed once");
}
