//! What only the Postgres store has: writers racing on one log while a reader tails it, a
//! listener whose connection dies, values Postgres refuses, takeovers during a checkpoint,
//! instances starting together, and what a checkpoint costs in round trips and notifications.

use std::{collections::BTreeSet, time::Duration};

use cairn::{Event, ParseOptions};
use chrono::Utc;
use serde_json::json;
use server::store::{Change, EventScope, Outcome, Rejection, Stamped, Store};

use crate::{
    pg::TestDb,
    store_suite::{Db, create, event, spec, started_a},
};

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
    let pg = db.pg();
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
    let mut late = event(&id, started_a());
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
    let pg = db.pg();
    let store = db.store().await;
    let id = create(&store).await;
    let mut listener = sqlx::postgres::PgListener::connect(&pg.url).await.unwrap();
    listener.listen("cairn_events").await.unwrap();
    let out = store
        .commit(vec![
            event(&id, Event::WorkflowStarted {}),
            event(&id, started_a()),
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
