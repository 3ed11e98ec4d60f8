//! The engine driven step by step through `tick()`: no server, no sleeps. Each test runs on
//! both backends (`sqlite::…` and `postgres::…`), each in a database of its own.

use cairn::{Event, ParseOptions, StepStatus, WorkflowState, WorkflowStatus};
use serde_json::json;
use server::{
    config::{DEFAULT_CONFIG_TOML, EngineConfig},
    engine::{Created, Engine, EngineSettings},
    store::{Change, Outcome, Store},
};

use crate::store_suite::Db;

pub(crate) fn engine(store: &Store, instance: &str, steal: bool) -> Engine {
    engine_with_ttl(store, instance, steal, std::time::Duration::from_secs(30))
}

fn engine_with_ttl(
    store: &Store,
    instance: &str,
    steal: bool,
    lease_ttl: std::time::Duration,
) -> Engine {
    let config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
    let settings = EngineSettings {
        steal_on_start: steal,
        lease_ttl,
        ..EngineSettings::default()
    };
    Engine::new(store.clone(), &config, instance.into(), settings).0
}

crate::both_backends!(
    ticking_runs_a_chain_to_completion_one_checkpoint_at_a_time,
    a_result_from_an_engine_that_lost_its_lease_is_discarded,
    live_events_come_from_the_log_whoever_wrote_them,
    a_control_committed_elsewhere_reaches_the_engine_that_runs_the_workflow,
    a_chain_created_through_the_engine_costs_four_checkpoints,
    results_in_a_checkpoint_refused_after_a_control_elsewhere_are_not_lost,
    an_attempt_reset_by_a_retry_elsewhere_is_stopped_and_its_result_ignored,
    a_skip_elsewhere_replaces_the_whole_output_the_steps_after_it_render,
);

/// An engine with `slots` attempts at once (`max_concurrency`).
pub(crate) fn with_slots(store: &Store, instance: &str, slots: usize, steal: bool) -> Engine {
    let config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
    let settings = EngineSettings {
        max_concurrency: slots,
        steal_on_start: steal,
        ..EngineSettings::default()
    };
    Engine::new(store.clone(), &config, instance.into(), settings).0
}

/// Ticks `owner`, taking in each attempt as it ends, until workflow `id` is no longer
/// running; returns its state then. Fails if it is still running after `within`.
pub(crate) async fn run_until_ended(
    owner: &mut Engine,
    store: &Store,
    id: &str,
    within: std::time::Duration,
) -> WorkflowState {
    let deadline = std::time::Instant::now() + within;
    loop {
        owner.tick().await.unwrap();
        while owner.in_flight_count() > 0 {
            assert!(owner.wait_for_attempt().await);
            owner.tick().await.unwrap();
        }
        let s = store.load(id).await.unwrap().unwrap();
        if s.status != WorkflowStatus::Running && s.status != WorkflowStatus::Pending {
            return s;
        }
        let steps: Vec<_> = s.steps.iter().map(|s| (&s.id, s.status)).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "{id} is stuck {}: {steps:?}",
            s.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub(crate) async fn create(store: &Store, spec: serde_json::Value) -> String {
    let spec = cairn::parse_spec_value(&spec, &ParseOptions::default()).unwrap();
    let change = Change::created(spec, None, cairn::DEFAULT_WORKSPACE, None);
    let id = change.workflow_id.clone();
    let out = store.commit(vec![change]).await.unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }));
    id
}

async fn ticking_runs_a_chain_to_completion_one_checkpoint_at_a_time(db: Db) {
    let store = db.store().await;
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

async fn a_result_from_an_engine_that_lost_its_lease_is_discarded(db: Db) {
    let store = db.store().await;
    let id = create(
        &store,
        json!({ "id": "s", "role": "developer", "task": "T", "params": { "duration_ms": 50 } }),
    )
    .await;
    let ttl = std::time::Duration::from_millis(300);
    let mut old = engine_with_ttl(&store, "old", false, ttl);
    old.tick().await.unwrap(); // starts attempt 1 under epoch 1

    // Another engine (on its own connections, as another instance) takes the workflow over
    // once the old one's lease has expired without renewal (by the database's clock).
    tokio::time::sleep(ttl * 2).await;
    let other = db.store().await;
    let mut new = engine(&other, "new", true);
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

async fn live_events_come_from_the_log_whoever_wrote_them(db: Db) {
    let reader = db.store().await;
    let mut live = reader.subscribe();
    // Another handle on the same database writes; this one only reads the log.
    let writer = db.store().await;
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

/// A cancel committed by another instance (which does not hold the workflow, so it goes
/// through the database with the fold as judge) stops the owner's attempt, and the owner lets
/// the workflow go instead of committing the attempt's result.
async fn a_control_committed_elsewhere_reaches_the_engine_that_runs_the_workflow(db: Db) {
    let store = db.store().await;
    let id = create(
        &store,
        json!({ "id": "s", "role": "developer", "task": "T", "params": { "duration_ms": 60000 } }),
    )
    .await;
    let mut owner = engine(&store, "owner", false);
    owner.tick().await.unwrap();
    assert_eq!(owner.in_flight_count(), 1);

    let elsewhere = db.store().await;
    let mut other = engine(&elsewhere, "other", false);
    let state = other
        .control(
            &id,
            &server::engine::Control::Cancel {
                reason: Some("enough".into()),
            },
            "someone",
        )
        .await
        .unwrap();
    assert_eq!(state.status, WorkflowStatus::Cancelled);
    // A second cancel is refused by the same rule as on the owner.
    let again = other
        .control(&id, &server::engine::Control::Cancel { reason: None }, "x")
        .await;
    assert!(matches!(
        again,
        Err(server::engine::ControlError::Conflict(_))
    ));

    // The owner sees the cancel in the log, stops its attempt (a 60 s sleep) and lets go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while owner.owned_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner never saw the cancel"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        owner.tick().await.unwrap();
    }
    let stopped =
        tokio::time::timeout(std::time::Duration::from_secs(10), owner.wait_for_attempt())
            .await
            .expect("the attempt was not stopped");
    assert!(stopped);
    owner.tick().await.unwrap();
    let events = store.history(&id, 0).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(kinds.last(), Some(&"workflow.cancelled"), "{kinds:?}");
    assert!(!kinds.contains(&"step.completed") && !kinds.contains(&"step.failed"));
}

/// A workflow created through the engine is created, started and given its first step in one
/// checkpoint; with each completion committed with the next start and the last with the end,
/// a three-step chain costs four commits.
async fn a_chain_created_through_the_engine_costs_four_checkpoints(db: Db) {
    let store = db.store().await;
    let config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
    let (mut engine, handle) = Engine::new(
        store.clone(),
        &config,
        "e1".into(),
        EngineSettings::default(),
    );
    let p = json!({ "duration_ms": 0 });
    let spec = cairn::parse_spec_value(
        &json!([
            { "id": "a", "role": "architect", "task": "A", "params": p },
            { "id": "b", "role": "developer", "task": "{a.output}B", "deps": ["a"], "params": p },
            { "id": "c", "role": "tester", "task": "{b.output}C", "deps": ["b"], "params": p }
        ]),
        &ParseOptions::default(),
    )
    .unwrap();
    let change = Change::created(spec, None, cairn::DEFAULT_WORKSPACE, None);
    let id = change.workflow_id.clone();
    let creating = tokio::spawn(async move { handle.create(change).await });
    while !creating.is_finished() {
        engine.tick().await.unwrap();
        tokio::task::yield_now().await;
    }
    let created = creating.await.unwrap().unwrap();
    assert!(
        matches!(created, Created::Committed(WorkflowStatus::Running)),
        "{created:?}"
    );
    // Created, started and its first step started (in one checkpoint: four in all, below).
    let history = store.history(&id, 0).await.unwrap();
    let kinds: Vec<&str> = history
        .iter()
        .take(3)
        .map(|r| r.event.type_name())
        .collect();
    assert_eq!(
        kinds,
        ["workflow.created", "workflow.started", "step.started"]
    );
    while engine.wait_for_attempt().await {
        engine.tick().await.unwrap();
    }
    let s = store.load(&id).await.unwrap().unwrap();
    assert_eq!(s.status, WorkflowStatus::Completed);
    assert_eq!(s.step("c").unwrap().output.as_deref(), Some("ABC"));
    assert_eq!(
        store.commit_latencies_ms().len(),
        4,
        "commits for a 3-step chain"
    );
}

/// A control committed on another instance after the owner last read the log, and before its
/// checkpoint, makes the store refuse that checkpoint: one of its events no longer applies.
/// The attempt results the checkpoint carried must not go with it, or their steps would stay
/// running with nothing running them.
async fn results_in_a_checkpoint_refused_after_a_control_elsewhere_are_not_lost(db: Db) {
    let store = db.store().await;
    let p = json!({ "duration_ms": 0 });
    let logging = json!({ "duration_ms": 0, "log_lines": 3 });
    let id = create(
        &store,
        json!([
            { "id": "a", "role": "architect", "task": "A", "params": logging },
            { "id": "b", "role": "developer", "task": "B", "params": logging },
            { "id": "c", "role": "tester", "task": "{a.output}C", "deps": ["a"], "params": p }
        ]),
    )
    .await;
    let mut owner = engine(&store, "owner", false);
    assert_eq!(owner.tick().await.unwrap().started, 2);
    assert!(owner.wait_for_attempt().await);
    assert!(owner.wait_for_attempt().await);

    // `c` is skipped elsewhere. The owner's next checkpoint completes `a` and `b` and starts
    // `c`, which no longer applies on SQLite, where the owner hears of other writers only at
    // its next poll of the log (on Postgres it usually hears first, and nothing is refused).
    let elsewhere = db.store().await;
    let mut other = engine(&elsewhere, "other", false);
    other
        .control(
            &id,
            &server::engine::Control::Skip {
                step_id: "c".into(),
                output: Some("given".into()),
            },
            "someone",
        )
        .await
        .unwrap();

    let s = run_until_ended(&mut owner, &store, &id, std::time::Duration::from_secs(10)).await;
    assert_eq!(s.status, WorkflowStatus::Completed);
    let outputs: Vec<_> = s
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status, s.output.as_deref()))
        .collect();
    assert_eq!(
        outputs,
        [
            ("a", StepStatus::Completed, Some("A")),
            ("b", StepStatus::Completed, Some("B")),
            ("c", StepStatus::Skipped, Some("given")),
        ]
    );
    let history = store.history(&id, 0).await.unwrap();
    let completed = history
        .iter()
        .filter(|r| matches!(r.event, Event::StepCompleted { .. }))
        .count();
    assert_eq!(completed, 2, "each result is committed once");
    let lines: Vec<String> = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::StepLog { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 6, "the log lines it carried too: {lines:?}");
    for step in ["a", "b"] {
        let of_step: Vec<&String> = lines.iter().filter(|l| l.starts_with(step)).collect();
        assert_eq!(
            of_step,
            [1, 2, 3]
                .map(|i| format!("{step} line {i}"))
                .iter()
                .collect::<Vec<_>>(),
            "in order"
        );
    }
}

/// A retry sent to another instance resets the steps after the retried one, and so takes
/// away an attempt the owner is running. When the owner's next checkpoint is folded onto that
/// change before the owner has read it in the log, the attempt must still be stopped, and what
/// it returns must not count for the step when it starts again under the same number.
async fn an_attempt_reset_by_a_retry_elsewhere_is_stopped_and_its_result_ignored(db: Db) {
    let store = db.store().await;
    let id = create(
        &store,
        json!([
            { "id": "u", "role": "architect", "task": "U", "params": { "duration_ms": 0 } },
            { "id": "x", "role": "developer", "task": "X", "params": { "duration_ms": 200 } },
            { "id": "d", "role": "tester", "task": "{u.output}D", "deps": ["u"], "params": { "duration_ms": 60000 } }
        ]),
    )
    .await;
    let mut owner = engine(&store, "owner", false);
    assert_eq!(owner.tick().await.unwrap().started, 2);
    assert!(owner.wait_for_attempt().await); // u
    assert_eq!(owner.tick().await.unwrap().started, 1); // d, for a minute

    let elsewhere = db.store().await;
    let mut other = engine(&elsewhere, "other", false);
    other
        .control(
            &id,
            &server::engine::Control::RetryStep {
                step_id: "u".into(),
            },
            "someone",
        )
        .await
        .unwrap();
    // x finishes; on SQLite the owner commits it onto the retry without having read it.
    assert!(owner.wait_for_attempt().await);
    owner.tick().await.unwrap();

    // d's first attempt is stopped, not left running for its minute.
    let stopped =
        tokio::time::timeout(std::time::Duration::from_secs(10), owner.wait_for_attempt())
            .await
            .expect("the attempt the retry took away was not stopped");
    assert!(stopped);

    // u runs again, and d starts again under the same attempt number.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        owner.tick().await.unwrap();
        let s = store.load(&id).await.unwrap().unwrap();
        if s.step("d").unwrap().status == StepStatus::Running {
            assert_eq!(s.step("d").unwrap().attempt, 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "d never started again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    owner.tick().await.unwrap();
    assert_eq!(owner.in_flight_count(), 1, "only d's new attempt runs");
    let history = store.history(&id, 0).await.unwrap();
    let of_d: Vec<&str> = history
        .iter()
        .filter(|r| r.event.step_id() == Some("d"))
        .map(|r| r.event.type_name())
        .collect();
    assert_eq!(
        of_d,
        ["step.started", "step.started"],
        "the stopped attempt's end is not d's"
    );
}

/// A step's whole output is the one its state now has. A step skipped here with a long
/// output, run again, and then skipped on another instance with another long output: the
/// step after it must render from the second, which this engine learns of only as a new
/// state, not from the first, which it still holds.
async fn a_skip_elsewhere_replaces_the_whole_output_the_steps_after_it_render(db: Db) {
    let store = db.store().await;
    let id = create(
        &store,
        json!([
            { "id": "a", "role": "architect", "task": "A",
              "retry": { "max_attempts": 5, "initial_interval_ms": 30000, "jitter": false },
              "params": { "duration_ms": 0, "fail_attempts": 99 } },
            { "id": "b", "role": "developer", "task": "B", "params": { "duration_ms": 5000 } },
            { "id": "c", "role": "tester", "task": "{a.output}", "deps": ["a", "b"],
              "params": { "duration_ms": 0 } }
        ]),
    )
    .await;
    let mut owner = engine(&store, "owner", false);
    let skip = |output: String| server::engine::Control::Skip {
        step_id: "a".into(),
        output: Some(output),
    };
    // a fails and waits half a minute to retry; b runs for five seconds, long enough for a
    // to fail twice first on a loaded machine.
    assert_eq!(owner.tick().await.unwrap().started, 2);
    assert!(owner.wait_for_attempt().await);
    owner.tick().await.unwrap();
    owner
        .control(&id, &skip("x".repeat(70_000)), "someone")
        .await
        .unwrap();
    // Run again, a fails again and waits.
    owner
        .control(
            &id,
            &server::engine::Control::RetryStep {
                step_id: "a".into(),
            },
            "someone",
        )
        .await
        .unwrap();
    assert_eq!(owner.tick().await.unwrap().started, 1);
    assert!(owner.wait_for_attempt().await);
    owner.tick().await.unwrap();
    assert_eq!(
        store
            .load(&id)
            .await
            .unwrap()
            .unwrap()
            .step("a")
            .unwrap()
            .status,
        StepStatus::Retrying
    );

    let elsewhere = db.store().await;
    let mut other = engine(&elsewhere, "other", false);
    other
        .control(&id, &skip("y".repeat(80_000)), "someone else")
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let s = loop {
        owner.tick().await.unwrap();
        let s = store.load(&id).await.unwrap().unwrap();
        if s.status != WorkflowStatus::Running {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workflow is stuck"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(s.status, WorkflowStatus::Completed);
    let c = s.step("c").unwrap();
    assert_eq!(
        c.task_bytes,
        Some(80_000),
        "c rendered the output a has now"
    );
    assert!(c.task.as_deref().unwrap().starts_with('y'));
}
