//! The store's behaviour, the same on both backends: each test in [`both_backends!`] runs once
//! on a fresh SQLite file and once on a fresh Postgres database. What only Postgres has is in
//! `store_postgres`.

use std::{collections::BTreeSet, time::Duration};

use cairn::{Event, ParseOptions};
use chrono::Utc;
use serde_json::json;
use server::store::{Change, EventScope, ListQuery, Outcome, Pruned, Rejection, Stamped, Store};

use crate::pg::TestDb;

/// A fresh database of either backend, alive as long as this value.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
}

impl Db {
    pub fn sqlite() -> Self {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    pub async fn postgres() -> Self {
        Db::Postgres(TestDb::new().await)
    }

    /// The Postgres database (for tests that only run there).
    pub fn pg(&self) -> &TestDb {
        match self {
            Db::Postgres(db) => db,
            Db::Sqlite(_) => panic!("a Postgres-only test on SQLite"),
        }
    }

    /// The database URL, as `--database-url` takes it.
    pub fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}", dir.path().join("cairn.db").display()),
            Db::Postgres(db) => db.url.clone(),
        }
    }

    /// A new handle on the database: its own connections, publisher and writer, as another
    /// instance would have.
    pub async fn store(&self) -> Store {
        Store::connect(&self.url()).await.unwrap()
    }

    /// Another instance writing beside `store`: on Postgres a handle of its own; on SQLite,
    /// whose file one process owns (every write goes through its one writer), `store` itself.
    pub async fn peer(&self, store: &Store) -> Store {
        match self {
            Db::Sqlite(_) => store.clone(),
            Db::Postgres(_) => self.store().await,
        }
    }
}

/// For each `async fn name(db: Db)` listed, a test `sqlite::name` and a test
/// `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::store_suite::Db::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::store_suite::Db::postgres().await).await
                }
            )*
        }
    };
}

crate::both_backends!(
    a_checkpoint_is_durable_and_folds_into_the_stored_state,
    an_idempotency_key_answers_every_instance_with_the_first_workflow,
    a_stale_or_unknown_change_is_refused_and_leaves_no_trace,
    whole_outputs_are_stored_beside_the_log,
    the_workspace_snapshot_and_the_log_agree,
    only_one_instance_claims_a_workflow,
    pruning_deletes_exactly_the_old_finished_workflows_with_all_they_own,
    workspaces_keep_lists_streams_and_lookups_apart,
    tokens_are_stored_as_hashes_and_revoked_once,
    a_group_bigger_than_one_statement_commits_whole,
);

pub(crate) fn spec(steps: serde_json::Value) -> cairn::ValidSpec {
    cairn::parse_spec_value(&steps, &ParseOptions::default()).unwrap()
}

pub(crate) async fn create(store: &Store) -> String {
    let change = Change::created(
        spec(json!({ "id": "a", "role": "architect", "task": "A" })),
        None,
        cairn::DEFAULT_WORKSPACE,
        None,
    );
    let id = change.workflow_id.clone();
    let out = store.commit(vec![change]).await.unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }), "{out:?}");
    id
}

pub(crate) fn event(id: &str, event: Event) -> Change {
    Change {
        workflow_id: id.into(),
        fence: None,
        events: vec![Stamped {
            at: Utc::now(),
            event,
        }],
        outputs: Vec::new(),
        idempotency: None,
        base: None,
        take_lease: None,
    }
}

async fn a_checkpoint_is_durable_and_folds_into_the_stored_state(db: Db) {
    let store = db.store().await;
    let id = create(&store).await;
    let out = store
        .commit(vec![event(&id, Event::WorkflowStarted {})])
        .await
        .unwrap();
    let Outcome::Committed { records, state } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(state.status, cairn::WorkflowStatus::Running);
    assert_eq!(state.last_event_id, records[0].id);
    drop(store);
    // Another handle (a restart, or another instance) reads the same.
    let again = db.store().await;
    let loaded = again.load(&id).await.unwrap().unwrap();
    assert_eq!(loaded, **state, "the stored state is the folded one");
    let history = again.history(&id, 0).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(kinds, ["workflow.created", "workflow.started"]);
    assert_eq!(again.history(&id, history[0].id).await.unwrap().len(), 1);
}

async fn an_idempotency_key_answers_every_instance_with_the_first_workflow(db: Db) {
    let a = db.store().await;
    let b = db.peer(&a).await;
    let make = |hash: &str| {
        Change::created(
            spec(json!({ "id": "a", "role": "architect", "task": "A" })),
            None,
            cairn::DEFAULT_WORKSPACE,
            Some(("key-1".into(), hash.into())),
        )
    };
    // The same key sent to two instances at once: one workflow.
    let (x, y) = tokio::join!(a.commit(vec![make("h")]), b.commit(vec![make("h")]));
    let outcomes: Vec<Outcome> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    let made: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Committed { .. }))
        .collect();
    assert_eq!(made.len(), 1, "{outcomes:?}");
    let Outcome::Committed { state, .. } = made[0] else {
        unreachable!()
    };
    let first = state.id.clone();
    assert!(outcomes.iter().any(
        |o| matches!(o, Outcome::Rejected(Rejection::IdempotentReplay(Some(w))) if *w == first)
    ));
    // Twice in one group, and with another request under the same key.
    let out = a.commit(vec![make("h"), make("other")]).await.unwrap();
    assert!(
        matches!(&out[0], Outcome::Rejected(Rejection::IdempotentReplay(Some(w))) if *w == first)
    );
    assert!(matches!(
        &out[1],
        Outcome::Rejected(Rejection::IdempotentReplay(None))
    ));
}

async fn a_stale_or_unknown_change_is_refused_and_leaves_no_trace(db: Db) {
    let store = db.store().await;
    let id = create(&store).await;
    let before = store
        .events_after(EventScope::default(), 0, 100)
        .await
        .unwrap()
        .len();
    let out = store
        .commit(vec![
            // Does not fit: a workflow that never started cannot complete.
            event(&id, Event::WorkflowCompleted {}),
            event("wf_unknown", Event::WorkflowStarted {}),
            // In the same group, a change that applies still commits.
            event(&id, Event::WorkflowStarted {}),
        ])
        .await
        .unwrap();
    assert!(
        matches!(out[0], Outcome::Rejected(Rejection::DoesNotApply(_))),
        "{out:?}"
    );
    assert!(matches!(
        out[1],
        Outcome::Rejected(Rejection::UnknownWorkflow)
    ));
    assert!(matches!(out[2], Outcome::Committed { .. }));
    let log = store
        .events_after(EventScope::default(), 0, 100)
        .await
        .unwrap();
    assert_eq!(log.len(), before + 1);
    let ids: Vec<i64> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=log.len() as i64).collect::<Vec<_>>(), "no gaps");
}

async fn whole_outputs_are_stored_beside_the_log(db: Db) {
    let store = db.store().await;
    let id = create(&store).await;
    // A NUL and multi-byte text survive on both backends.
    let output: String = "résumé\0".repeat(2000);
    let started = Event::StepStarted {
        step_id: "a".into(),
        attempt: 1,
        task: "A".into(),
        task_bytes: None,
        session_id: None,
    };
    let mut change = event(&id, Event::WorkflowStarted {});
    change.events.push(Stamped {
        at: Utc::now(),
        event: started,
    });
    change.events.push(Stamped {
        at: Utc::now(),
        event: Event::StepCompleted {
            step_id: "a".into(),
            attempt: 1,
            output: output.clone(),
            output_bytes: None,
            session_id: None,
            duration_ms: 1,
        },
    });
    let out = store.commit(vec![change]).await.unwrap();
    let Outcome::Committed { state, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let step = state.step("a").unwrap();
    assert!(step.output_is_cut());
    assert_eq!(step.output_bytes, Some(output.len() as u64));
    assert_eq!(
        store.output(&id, "a").await.unwrap().as_deref(),
        Some(&*output)
    );
}

/// More workflows in one commit than SQLite takes rows in one statement: every one is
/// written, once, with its own events in one unbroken run of ids.
async fn a_group_bigger_than_one_statement_commits_whole(db: Db) {
    let store = db.store().await;
    let changes: Vec<Change> = (0..2_100)
        .map(|i| {
            let mut change = Change::created(
                spec(json!({ "id": "a", "role": "architect", "task": format!("task {i}") })),
                None,
                cairn::DEFAULT_WORKSPACE,
                None,
            );
            change.events.push(Stamped {
                at: Utc::now(),
                event: Event::WorkflowStarted {},
            });
            change
        })
        .collect();
    let ids: Vec<String> = changes.iter().map(|c| c.workflow_id.clone()).collect();
    let out = store.commit(changes).await.unwrap();
    assert_eq!(out.len(), ids.len());
    let mut event_ids = Vec::new();
    for (id, outcome) in ids.iter().zip(&out) {
        let Outcome::Committed { records, state } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(&state.id, id);
        event_ids.extend(records.iter().map(|r| r.id));
    }
    assert!(
        event_ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids in one run"
    );
    let log = store
        .events_after(EventScope::default(), 0, 10_000)
        .await
        .unwrap();
    assert_eq!(log.iter().map(|e| e.id).collect::<Vec<_>>(), event_ids);
    for (i, id) in ids.iter().enumerate().step_by(499) {
        let state = store.load(id).await.unwrap().unwrap();
        assert_eq!(state.status, cairn::WorkflowStatus::Running);
        let task = &state.spec.as_ref().unwrap().steps[0].task;
        assert_eq!(task, &format!("task {i}"));
        assert_eq!(store.history(id, 0).await.unwrap().len(), 2);
    }
    let listed = store
        .list(&ListQuery {
            limit: 1_000,
            before: None,
            status: Some(cairn::WorkflowStatus::Running),
            workspace: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1_000);
}

async fn the_workspace_snapshot_and_the_log_agree(db: Db) {
    let store = db.store().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&store).await);
    }
    let (last, list) = store.workspace_snapshot(10, None).await.unwrap();
    let log = store
        .events_after(EventScope::default(), 0, 100)
        .await
        .unwrap();
    assert_eq!(last, log.last().unwrap().id);
    assert_eq!(list.len(), 3);
    // Newest first, and pages continue where they stop.
    let newest: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        newest,
        ids.iter().rev().map(|s| s.as_str()).collect::<Vec<_>>()
    );
    let page = store
        .list(&server::store::ListQuery {
            limit: 10,
            before: Some(ids[2].clone()),
            status: None,
            workspace: None,
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
}

async fn only_one_instance_claims_a_workflow(db: Db) {
    let a = db.store().await;
    let b = db.peer(&a).await;
    for _ in 0..20 {
        create(&a).await;
    }
    let ttl = chrono::Duration::seconds(30);
    let (x, y) = tokio::join!(a.claim("a", ttl, 15, false), b.claim("b", ttl, 15, false));
    let (x, y) = (x.unwrap(), y.unwrap());
    let mine: BTreeSet<String> = x.iter().map(|c| c.state.id.clone()).collect();
    let mut theirs: BTreeSet<String> = y.iter().map(|c| c.state.id.clone()).collect();
    assert!(mine.is_disjoint(&theirs), "a workflow was claimed twice");
    // On Postgres a claim can lose a race without harm: when the other one commits between
    // its snapshot and its lease insert, the rows it chose are already leased and it takes
    // fewer. What it missed, its next round takes; nothing is ever taken twice.
    for _ in 0..5 {
        if mine.len() + theirs.len() == 20 {
            break;
        }
        for c in b.claim("b", ttl, 20, false).await.unwrap() {
            assert!(!mine.contains(&c.state.id), "a workflow was claimed twice");
            theirs.insert(c.state.id);
        }
    }
    assert_eq!(mine.len() + theirs.len(), 20);
    // Renewal is fenced: an instance renews only what it holds.
    let all: Vec<String> = mine.iter().chain(&theirs).cloned().collect();
    let renewed = a.renew("a", &all, ttl).await.unwrap();
    assert_eq!(renewed.into_iter().collect::<BTreeSet<_>>(), mine);
    // Nothing is left to claim while the leases live.
    assert!(b.claim("c", ttl, 100, false).await.unwrap().is_empty());
}

/// The first start of step `a`.
pub(crate) fn started_a() -> Event {
    Event::StepStarted {
        step_id: "a".into(),
        attempt: 1,
        task: "A".into(),
        task_bytes: None,
        session_id: None,
    }
}

/// Runs workflow `id` (one step `a`) to `end`: completed with an output, failed or cancelled.
async fn finish(store: &Store, id: &str, end: Event) {
    let mut change = event(id, Event::WorkflowStarted {});
    let at = Utc::now();
    let mut push = |event| change.events.push(Stamped { at, event });
    push(started_a());
    if matches!(end, Event::WorkflowCompleted {}) {
        push(Event::StepCompleted {
            step_id: "a".into(),
            attempt: 1,
            output: "x".repeat(10_000),
            output_bytes: None,
            session_id: None,
            duration_ms: 1,
        });
    }
    push(end);
    let out = store.commit(vec![change]).await.unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }), "{out:?}");
}

async fn pruning_deletes_exactly_the_old_finished_workflows_with_all_they_own(db: Db) {
    let store = db.store().await;
    let keyed = Change::created(
        spec(json!({ "id": "a", "role": "architect", "task": "A" })),
        None,
        cairn::DEFAULT_WORKSPACE,
        Some(("key-1".into(), "hash-1".into())),
    );
    let done = keyed.workflow_id.clone();
    store.commit(vec![keyed]).await.unwrap();
    finish(&store, &done, Event::WorkflowCompleted {}).await;
    let cancelled = create(&store).await;
    finish(
        &store,
        &cancelled,
        Event::WorkflowCancelled {
            by: None,
            reason: None,
        },
    )
    .await;
    let running = create(&store).await;
    store
        .commit(vec![event(&running, Event::WorkflowStarted {})])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let recent = create(&store).await;
    finish(&store, &recent, Event::WorkflowCompleted {}).await;
    let doomed_events = store.history(&done, 0).await.unwrap().len()
        + store.history(&cancelled, 0).await.unwrap().len();
    let head = store.history(&recent, 0).await.unwrap().last().unwrap().id;

    // A dry run names them and deletes nothing.
    let seen = store.prune(cut, 100, true).await.unwrap();
    assert_eq!(seen.workflows, [done.clone(), cancelled.clone()]);
    assert_eq!(seen.events, doomed_events as u64);
    assert!(store.load(&done).await.unwrap().is_some());
    assert_eq!(store.pruned_through().await.unwrap(), 0);

    // Batches of one, oldest first, until none is left.
    assert_eq!(
        store.prune(cut, 1, false).await.unwrap().workflows,
        [done.as_str()]
    );
    assert_eq!(
        store.prune(cut, 1, false).await.unwrap().workflows,
        [cancelled.as_str()]
    );
    assert_eq!(store.prune(cut, 1, false).await.unwrap(), Pruned::default());
    for id in [&done, &cancelled] {
        assert!(store.load(id).await.unwrap().is_none());
        assert!(store.history(id, 0).await.unwrap().is_empty());
    }
    assert_eq!(store.output(&done, "a").await.unwrap(), None);
    // The log's head then: a stream at or before it may still show the deleted ones.
    assert_eq!(store.pruned_through().await.unwrap(), head);
    // Untouched: the running one and the one that finished after the cut.
    assert!(store.load(&running).await.unwrap().is_some());
    assert_eq!(store.history(&recent, 0).await.unwrap().len(), 5);
    assert!(store.output(&recent, "a").await.unwrap().is_some());
    // Its idempotency key went with it: the key starts a new workflow now.
    let again = Change::created(
        spec(json!({ "id": "a", "role": "architect", "task": "A" })),
        None,
        cairn::DEFAULT_WORKSPACE,
        Some(("key-1".into(), "hash-1".into())),
    );
    let out = store.commit(vec![again]).await.unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }), "{out:?}");
    let list = store
        .list(&ListQuery {
            limit: 50,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
}

async fn workspaces_keep_lists_streams_and_lookups_apart(db: Db) {
    let store = db.store().await;
    let mut made = Vec::new();
    for workspace in ["team-a", "team-b", cairn::DEFAULT_WORKSPACE] {
        let change = Change::created(
            spec(json!({ "id": "a", "role": "architect", "task": "A" })),
            None,
            workspace,
            None,
        );
        let id = change.workflow_id.clone();
        let out = store.commit(vec![change]).await.unwrap();
        let Outcome::Committed { state, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(state.workspace, workspace);
        made.push(id);
    }
    let (a, b, default) = (&made[0], &made[1], &made[2]);
    // The workflow knows its workspace, from its first event.
    assert_eq!(store.load(a).await.unwrap().unwrap().workspace, "team-a");
    assert_eq!(
        store.workspace_of(b).await.unwrap().as_deref(),
        Some("team-b")
    );
    assert_eq!(store.workspace_of("wf_nope").await.unwrap(), None);
    // Lists and snapshots of a workspace hold its workflows only.
    let q = ListQuery {
        limit: 10,
        workspace: Some("team-a".into()),
        ..ListQuery::default()
    };
    let ids: Vec<String> = store
        .list(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![a.clone()]);
    let (_, snap) = store.workspace_snapshot(10, Some("team-b")).await.unwrap();
    assert_eq!(snap.iter().map(|s| &s.id).collect::<Vec<_>>(), vec![b]);
    let (_, all) = store.workspace_snapshot(10, None).await.unwrap();
    assert_eq!(all.len(), 3);
    // The log too: each event carries its workspace, and a scope filters on it.
    let scope = EventScope {
        workflow: None,
        workspace: Some(cairn::DEFAULT_WORKSPACE),
    };
    let events = store.events_after(scope, 0, 100).await.unwrap();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| &e.workflow_id == default && e.workspace == "default")
    );
    let every = store
        .events_after(EventScope::default(), 0, 100)
        .await
        .unwrap();
    let spaces: BTreeSet<&str> = every.iter().map(|e| e.workspace.as_str()).collect();
    assert_eq!(spaces, BTreeSet::from(["default", "team-a", "team-b"]));
}

async fn tokens_are_stored_as_hashes_and_revoked_once(db: Db) {
    use server::auth::{self, Scope, TokenInfo};
    let store = db.store().await;
    assert!(!store.has_tokens().await.unwrap());
    let new = auth::mint().unwrap();
    let created_at = Utc::now();
    let info = TokenInfo {
        id: new.id.clone(),
        workspace: "team-a".into(),
        label: "ann's laptop".into(),
        scope: Scope::Run,
        created_at,
        expires_at: Some(created_at + chrono::Duration::days(30)),
        revoked_at: None,
    };
    store.create_token(&info, &new.hash).await.unwrap();
    assert!(store.has_tokens().await.unwrap());
    let (stored, hash) = store.token(&new.id).await.unwrap().unwrap();
    assert!(auth::matches(&new.token, &hash));
    assert!(!hash.contains(&new.token), "only a hash is stored");
    assert_eq!(stored.label, "ann's laptop");
    assert_eq!(stored.scope, Scope::Run);
    assert_eq!(stored.state(Utc::now()), "active");
    assert_eq!(
        stored.expires_at.unwrap().timestamp(),
        info.expires_at.unwrap().timestamp()
    );
    let first = store
        .revoke_token(&new.id, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.state(Utc::now()), "revoked");
    let again = store
        .revoke_token(&new.id, Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at, first.revoked_at,
        "revoking twice keeps the first time"
    );
    assert!(
        store
            .revoke_token("nope", Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.tokens().await.unwrap().len(), 1);
    // A revoked token still counts: the server stays closed.
    assert!(store.has_tokens().await.unwrap());
}
