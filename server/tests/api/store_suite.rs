//! The store's behaviour, the same on both backends: each test in [`both_backends!`] runs once
//! on a fresh SQLite file and once on a fresh Postgres database. Then what only Postgres has:
//! writers racing on one log while a reader tails it, and a listener whose connection dies.

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

fn spec(steps: serde_json::Value) -> cairn::ValidSpec {
    cairn::parse_spec_value(&steps, &ParseOptions::default()).unwrap()
}

async fn create(store: &Store) -> String {
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

fn event(id: &str, event: Event) -> Change {
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

/// Writers on separate connections race to append while a reader tails the log with
/// `id > cursor`, the way an SSE client resumes: with ids that could commit out of order the
/// reader would skip one for good. It must see every id exactly once, in order.
#[tokio::test]
async fn racing_writers_never_hide_an_event_from_a_tailing_reader() {
    let db = TestDb::new().await;
    let writers: Vec<Store> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Store::connect(&db.url).await.unwrap());
        }
        v
    };
    let reader = Store::connect(&db.url).await.unwrap();
    let mut live = reader.subscribe();
    const PER_WRITER: usize = 150;
    let total = writers.len() * PER_WRITER;
    let tail = {
        let reader = reader.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(total);
            let mut cursor = 0;
            while seen.len() < total {
                let page = reader
                    .events_after(EventScope::default(), cursor, 97)
                    .await
                    .unwrap();
                for e in page {
                    seen.push(e.id);
                    cursor = e.id;
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let mut tasks = Vec::new();
    for w in writers {
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_WRITER / 3 {
                // Three concurrent commits per writer: groups of varying size.
                let changes = (0..3).map(|_| {
                    Change::created(
                        cairn::parse_spec_value(
                            &json!({ "id": "a", "role": "architect", "task": "A" }),
                            &ParseOptions::default(),
                        )
                        .unwrap(),
                        None,
                        cairn::DEFAULT_WORKSPACE,
                        None,
                    )
                });
                let commits: Vec<_> = changes.map(|c| w.commit(vec![c])).collect();
                for out in futures::future::join_all(commits).await {
                    assert!(matches!(out.unwrap()[0], Outcome::Committed { .. }));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), tail)
        .await
        .expect("the reader never caught up")
        .unwrap();
    assert_eq!(seen, (1..=total as i64).collect::<Vec<_>>());
    // The live feed (the publisher, woken by notifications) saw the same, in the same order.
    let mut published = Vec::new();
    while published.len() < total {
        let e = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("the live feed stopped")
            .unwrap();
        published.push(e.id);
    }
    assert_eq!(published, seen);
}

/// The listener's connection is killed: it reconnects and events keep flowing.
#[tokio::test]
async fn events_keep_flowing_when_the_listeners_connection_is_killed() {
    let db = TestDb::new().await;
    let reader = Store::connect(&db.url).await.unwrap();
    let writer = Store::connect(&db.url).await.unwrap();
    let mut live = reader.subscribe();
    let mut admin = db.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut pids = listeners(&mut admin, &db).await;
    while pids.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no listeners: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        pids = listeners(&mut admin, &db).await;
    }
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
            .bind(&pids)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert!(killed.iter().all(|k| *k));

    let mut made = BTreeSet::new();
    for _ in 0..5 {
        made.insert(create(&writer).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = BTreeSet::new();
    while seen.len() < made.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("events stopped flowing")
            .unwrap();
        seen.insert(e.workflow_id.clone());
    }
    assert_eq!(seen, made);
    // And the listeners are back (new connections), so wake-ups are prompt again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = listeners(&mut admin, &db).await;
        if now.len() >= 2 && now.iter().all(|p| !pids.contains(p)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "listeners never came back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backends listening for checkpoints on the test database.
async fn listeners(admin: &mut sqlx::PgConnection, db: &TestDb) -> Vec<i32> {
    let name = db.url.rsplit('/').next().unwrap().to_string();
    sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(name)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// Postgres refuses a NUL in a text column (here a session id an agent reported): that change
/// alone is answered `Unstorable`, and the rest of its group commits.
#[tokio::test]
async fn a_value_postgres_refuses_fails_its_change_alone() {
    let db = Db::postgres().await;
    let store = db.store().await;
    let (good, bad) = (create(&store).await, create(&store).await);
    let mut refused = event(&bad, Event::WorkflowStarted {});
    refused.events.push(Stamped {
        at: Utc::now(),
        event: Event::StepStarted {
            step_id: "a".into(),
            attempt: 1,
            task: "A".into(),
            task_bytes: None,
            session_id: Some("sess\0ion".into()),
        },
    });
    let out = store
        .commit(vec![event(&good, Event::WorkflowStarted {}), refused])
        .await
        .unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }), "{out:?}");
    assert!(
        matches!(&out[1], Outcome::Rejected(Rejection::Unstorable(_))),
        "{out:?}"
    );
    let bad_state = store.load(&bad).await.unwrap().unwrap();
    assert_eq!(
        bad_state.status,
        cairn::WorkflowStatus::Pending,
        "nothing of it was written"
    );
    let good_state = store.load(&good).await.unwrap().unwrap();
    assert_eq!(good_state.status, cairn::WorkflowStatus::Running);
}

/// A takeover while the old owner is still committing: the old owner's checkpoint holds the
/// workflow's row until it commits, so a claim skips the workflow rather than take the lease
/// between that checkpoint's lease check and its commit; once the claim has taken it over, the
/// old owner's late result is refused and leaves no trace.
#[tokio::test]
async fn a_takeover_waits_for_a_checkpoint_in_progress_and_then_fences_the_old_owner() {
    let db = Db::postgres().await;
    let Db::Postgres(pg) = &db else {
        unreachable!()
    };
    let (old, new) = (db.store().await, db.store().await);
    let id = create(&old).await;
    let ttl = chrono::Duration::milliseconds(200);
    let claimed = old.claim("old", ttl, 10, false).await.unwrap();
    let fence = claimed[0].fence.clone();
    tokio::time::sleep(Duration::from_millis(400)).await; // the old owner's lease expires

    // The old owner's checkpoint, held up between its lease check and its commit.
    let mut admin = pg.connect().await;
    for sql in [
        // It waits for the lock the test holds, as long as the test holds it.
        "CREATE FUNCTION cairn.slow_ids() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); \
         RETURN NEW; END $$",
        // Taking the ids comes after the lease check and before the rows are written.
        "CREATE TRIGGER slow_ids BEFORE UPDATE ON cairn.log_head FOR EACH ROW \
         EXECUTE FUNCTION cairn.slow_ids()",
    ] {
        sqlx::query(sql).execute(&mut admin).await.unwrap();
    }
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut start = event(&id, Event::WorkflowStarted {});
    start.fence = Some(fence.clone());
    let committing = tokio::spawn({
        let old = old.clone();
        async move { old.commit(vec![start]).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = $1",
        )
        .bind(pg.url.rsplit('/').next().unwrap())
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint never took its ids"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = tokio::time::timeout(Duration::from_secs(5), new.claim("new", ttl, 10, false))
        .await
        .expect("a claim waited on a checkpoint in progress instead of skipping it")
        .unwrap();
    assert!(
        during.is_empty(),
        "a claim took the lease from under a checkpoint in progress"
    );
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut admin)
        .await
        .unwrap();
    let out = committing.await.unwrap().unwrap();
    assert!(matches!(out[0], Outcome::Committed { .. }), "{out:?}");
    sqlx::query("DROP TRIGGER slow_ids ON cairn.log_head")
        .execute(&mut admin)
        .await
        .unwrap();

    // Once it is done, the expired lease is taken over under a new epoch...
    let taken = new
        .claim("new", chrono::Duration::seconds(30), 10, false)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].fence.epoch, fence.epoch + 1);
    assert_eq!(taken[0].previous_owner.as_deref(), Some("old"));
    // ...and the old owner's late result is refused.
    let before = old.history(&id, 0).await.unwrap().len();
    let mut late = event(
        &id,
        Event::StepStarted {
            step_id: "a".into(),
            attempt: 1,
            task: "A".into(),
            task_bytes: None,
            session_id: None,
        },
    );
    late.fence = Some(fence);
    let out = old.commit(vec![late]).await.unwrap();
    assert!(
        matches!(out[0], Outcome::Rejected(Rejection::LeaseLost)),
        "{out:?}"
    );
    assert_eq!(old.history(&id, 0).await.unwrap().len(), before);
}

/// Instances started at once on an empty database all come up (one of them applies the
/// schema, the others wait for it), and a `postgresql://` URL names the same database.
#[tokio::test]
async fn instances_starting_at_once_on_an_empty_database_share_one_schema() {
    let db = TestDb::new().await;
    let other_scheme = db.url.replacen("postgres://", "postgresql://", 1);
    let urls = [db.url.as_str(), other_scheme.as_str(), db.url.as_str()];
    let stores = futures::future::join_all(urls.map(Store::connect)).await;
    let stores: Vec<Store> = stores.into_iter().map(|s| s.unwrap()).collect();
    let id = create(&stores[1]).await;
    for store in &stores {
        assert!(store.load(&id).await.unwrap().is_some());
    }
}

/// A checkpoint costs Postgres the same round trips whatever its size: three hundred new
/// workflows as many as one (array inserts and upserts, never a statement per row), and as
/// many as the README says: begin, lock, read the leases, take the ids, write, commit; two
/// more to lock and read idempotency keys.
#[tokio::test]
async fn a_checkpoint_of_three_hundred_changes_takes_the_round_trips_of_one() {
    let db = TestDb::new().await;
    let relay = crate::pg::Relay::start(&db).await;
    let store = Store::connect(&relay.url).await.unwrap();
    let new = |n: usize, keyed: bool| -> Vec<Change> {
        (0..n)
            .map(|_| {
                let s = spec(json!({ "id": "a", "role": "architect", "task": "A" }));
                let key = keyed.then(|| (uuid::Uuid::new_v4().to_string(), "h".to_string()));
                Change::created(s, None, cairn::DEFAULT_WORKSPACE, key)
            })
            .collect()
    };
    // Each statement is prepared at its first use, which costs one round trip more.
    store.commit(new(2, true)).await.unwrap();
    let mut costs = Vec::new();
    for (n, keyed) in [(1, false), (300, false), (1, true), (300, true)] {
        let before = relay.counts();
        let out = store.commit(new(n, keyed)).await.unwrap();
        assert!(out.iter().all(|o| matches!(o, Outcome::Committed { .. })));
        // The checkpoint's connection: the one that committed meanwhile (the publisher reads
        // the new events on another, outside any transaction).
        let committed: Vec<u64> = relay
            .counts()
            .iter()
            .enumerate()
            .filter_map(|(i, (trips, commits))| {
                let (trips_before, commits_before) = before.get(i).copied().unwrap_or((0, 0));
                (*commits > commits_before).then(|| trips - trips_before)
            })
            .collect();
        assert_eq!(committed.len(), 1, "{committed:?}");
        costs.push(committed[0]);
    }
    assert_eq!(
        costs,
        [6, 6, 8, 8],
        "round trips of checkpoints of 1 and 300 changes, without and with keys"
    );
}

/// A group that changes one workflow twice is committed in two rounds, in one transaction:
/// it wakes the other instances once, with the id of its last event.
#[tokio::test]
async fn a_group_of_several_rounds_notifies_once() {
    let db = Db::postgres().await;
    let Db::Postgres(pg) = &db else {
        unreachable!()
    };
    let store = db.store().await;
    let id = create(&store).await;
    let mut listener = sqlx::postgres::PgListener::connect(&pg.url).await.unwrap();
    listener.listen("cairn_events").await.unwrap();
    let out = store
        .commit(vec![
            event(&id, Event::WorkflowStarted {}),
            event(
                &id,
                Event::StepStarted {
                    step_id: "a".into(),
                    attempt: 1,
                    task: "A".into(),
                    task_bytes: None,
                    session_id: None,
                },
            ),
        ])
        .await
        .unwrap();
    let Outcome::Committed { records, .. } = &out[1] else {
        panic!("{out:?}")
    };
    let wait = Duration::from_secs(10);
    let first = tokio::time::timeout(wait, listener.recv()).await.unwrap();
    assert_eq!(first.unwrap().payload(), records[0].id.to_string());
    // Both would come with the commit.
    let again = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(again.is_err(), "notified again: {again:?}");

    // Its last round refused (a workflow cannot start twice), it still notifies, once.
    let other = create(&store).await;
    let first = tokio::time::timeout(wait, listener.recv()).await.unwrap();
    assert!(first.is_ok(), "the creation is notified");
    let start = || event(&other, Event::WorkflowStarted {});
    let out = store.commit(vec![start(), start()]).await.unwrap();
    let Outcome::Committed { records, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(matches!(out[1], Outcome::Rejected(_)), "{out:?}");
    let notified = tokio::time::timeout(wait, listener.recv()).await.unwrap();
    assert_eq!(notified.unwrap().payload(), records[0].id.to_string());
    let again = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(again.is_err(), "notified again: {again:?}");
}

/// Runs workflow `id` (one step `a`) to `end`: completed with an output, failed or cancelled.
async fn finish(store: &Store, id: &str, end: Event) {
    let mut change = event(id, Event::WorkflowStarted {});
    let at = Utc::now();
    let mut push = |event| change.events.push(Stamped { at, event });
    push(Event::StepStarted {
        step_id: "a".into(),
        attempt: 1,
        task: "A".into(),
        task_bytes: None,
        session_id: None,
    });
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
