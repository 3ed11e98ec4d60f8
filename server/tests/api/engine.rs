//! The engine driven step by step through `tick()`: no server, no sleeps.

use cairn::{Event, ParseOptions, StepStatus, WorkflowStatus};
use serde_json::json;
use server::{
    config::{DEFAULT_CONFIG_TOML, EngineConfig},
    engine::{Engine, EngineSettings},
    store::{Change, Outcome, Store},
};

async fn store(dir: &tempfile::TempDir) -> Store {
    Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("cairn.db").display()
    ))
    .await
    .unwrap()
}

fn engine(store: &Store, instance: &str, steal: bool) -> Engine {
    let config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
    let settings = EngineSettings {
        steal_on_start: steal,
        ..EngineSettings::default()
    };
    Engine::new(store.clone(), &config, instance.into(), settings).0
}

async fn create(store: &Store, spec: serde_json::Value) -> String {
    let spec = cairn::parse_spec_value(&spec, &ParseOptions::default()).unwrap();
    let change = Change::created(spec, None, None);
    let id = change.workflow_id.clone();
    let out = store.commit(vec![change]).await.unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }));
    id
}

#[tokio::test]
async fn ticking_runs_a_chain_to_completion_one_checkpoint_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = create(
        &store,
        json!([
            { "id": "a", "role": "architect", "task": "A", "params": { "duration_ms": 0 } },
            { "id": "b", "role": "developer", "task": "{a.output}B", "deps": ["a"], "params": { "duration_ms": 0 } }
        ]),
    )
    .await;
    let mut engine = engine(&store, "e1", false);

    // Tick 1: claim, start the workflow and its first step; the attempt launches after commit.
    let t = engine.tick().await.unwrap();
    assert_eq!((t.claimed, t.started), (1, 1));
    let s = store.load(&id).await.unwrap().unwrap();
    assert_eq!(s.step("a").unwrap().status, StepStatus::Running);
    assert_eq!(s.step("b").unwrap().status, StepStatus::Pending);

    // Each finished attempt is folded in by the next tick, which also starts what it unblocks.
    assert!(engine.wait_for_attempt().await);
    let t = engine.tick().await.unwrap();
    assert_eq!((t.finished, t.started), (1, 1));
    assert!(engine.wait_for_attempt().await);
    engine.tick().await.unwrap();
    let s = store.load(&id).await.unwrap().unwrap();
    assert_eq!(s.status, WorkflowStatus::Completed);
    assert_eq!(s.step("b").unwrap().output.as_deref(), Some("AB"));
    assert_eq!(engine.owned_count(), 0, "a finished workflow is let go");
}

#[tokio::test]
async fn a_result_from_an_engine_that_lost_its_lease_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = create(
        &store,
        json!({ "id": "s", "role": "developer", "task": "T", "params": { "duration_ms": 50 } }),
    )
    .await;
    let mut old = engine(&store, "old", false);
    old.tick().await.unwrap(); // starts attempt 1 under epoch 1

    // Another engine takes the workflow over (as after the old one stopped heartbeating).
    let mut new = engine(&store, "new", true);
    let t = new.tick().await.unwrap();
    assert_eq!(t.claimed, 1);

    // The old attempt finishes; its commit is refused and the old engine lets go.
    assert!(old.wait_for_attempt().await);
    old.tick().await.unwrap();
    assert_eq!(old.owned_count(), 0);

    // The new owner runs the interrupted attempt again and completes it exactly once.
    while new.in_flight_count() > 0 {
        new.wait_for_attempt().await;
        new.tick().await.unwrap();
    }
    let events = store.history(&id, 0).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "step.completed").count(),
        1,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"workflow.stalled") && kinds.contains(&"workflow.resumed"));
    let s = store.load(&id).await.unwrap().unwrap();
    assert_eq!(s.status, WorkflowStatus::Completed);
    // The re-run carried the same attempt number and session id as the interrupted one.
    let starts: Vec<(u32, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepStarted {
                attempt,
                session_id,
                ..
            } => Some((*attempt, session_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0].0, starts[1].0);
}

#[tokio::test]
async fn live_events_come_from_the_log_whoever_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let reader = store(&dir).await;
    let mut live = reader.subscribe();
    // Another handle on the same database writes; this one only reads the log.
    let writer = store(&dir).await;
    let id = create(
        &writer,
        json!({ "id": "a", "role": "architect", "task": "A" }),
    )
    .await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), live.recv())
        .await
        .expect("the event was never published")
        .unwrap();
    assert_eq!(event.workflow_id, id);
    assert_eq!(event.event.type_name(), "workflow.created");
}
