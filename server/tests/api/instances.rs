//! Three real `cairn serve` processes on one Postgres database: the work spreads over them,
//! one is SIGKILLed mid-step, and its workflows finish on the others with nothing completed
//! twice, while an SSE client on a survivor sees every event exactly once, in order.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    helpers::{config_file, get_json, serve_binary_on, start_on, wait_completed},
    pg::TestDb,
    sse::Sse,
};

/// Kills the child when the test ends, however it ends.
struct Server {
    child: std::process::Child,
    url: String,
    instance: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(db: &TestDb, config: &std::path::Path) -> Server {
    let (child, url) = serve_binary_on(&db.url, Some(config));
    let health = get_json(&reqwest::Client::new(), &url, "/api/health").await;
    assert_eq!(health["store"], "postgres", "{health}");
    let instance = health["instance"].as_str().unwrap().to_string();
    Server {
        child,
        url,
        instance,
    }
}

fn chain(name: &str) -> Value {
    let steps: Vec<Value> = (0..3)
        .map(|i| {
            let mut s = json!({
                "id": format!("s{i}"), "role": "developer", "task": format!("step {i}"),
                "params": { "duration_ms": 700 }
            });
            if i > 0 {
                s["deps"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({ "name": name, "steps": steps })
}

/// A role `marked` whose every run of a step leaves a line `WORKFLOW STEP` in the file `runs`
/// and then takes `seconds`: what ran is counted, not what the log says ran.
fn marked_role(runs: &std::path::Path, seconds: &str) -> String {
    format!(
        "\n[roles.marked]\nrunner = \"command\"\nprogram = \"sh\"\n\
         args = ['-c', 'echo \"$CAIRN_WORKFLOW_ID $CAIRN_STEP_ID\" >> {}; sleep {seconds}; cat']\n",
        runs.display()
    )
}

/// [`chain`] with every step in the role `marked`.
fn marked_chain(name: &str) -> Value {
    let mut spec = chain(name);
    for step in spec["steps"].as_array_mut().unwrap() {
        step["role"] = json!("marked");
    }
    spec
}

/// How many times each (workflow, step) ran, from the `runs` file of [`marked_role`].
fn runs_per_step(runs: &std::path::Path) -> BTreeMap<(String, String), usize> {
    let mut ran = BTreeMap::new();
    for line in std::fs::read_to_string(runs).unwrap().lines() {
        let (wf, step) = line.split_once(' ').unwrap();
        *ran.entry((wf.to_string(), step.to_string())).or_default() += 1;
    }
    ran
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work_and_one_killed_mid_step_loses_nothing() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // A short lease: the killed instance's workflows are taken over within ~2 s.
    let runs = dir.path().join("runs");
    let config = config_file(
        dir.path(),
        &format!(
            "[engine]\nlease_ttl_ms = 2000\n{}",
            marked_role(&runs, "0.7")
        ),
    );
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(serve(&db, &config).await);
    }
    let instances: BTreeSet<&str> = servers.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(instances.len(), 3, "each instance has an id of its own");

    // A browser on the instance that survives, from before anything starts.
    let mut sse = Sse::connect_url(&format!("{}/api/events", servers[2].url), None).await;
    let snapshot = sse.next_event(Duration::from_secs(20)).await.unwrap();
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let from: i64 = snapshot.id.unwrap().parse().unwrap();

    // Workflows started on all three.
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..9 {
        let spec = marked_chain(&format!("wf{i}"));
        ids.push(start_on(&client, &servers[i % 3].url, &spec).await);
    }

    // The work spreads: each instance holds leases. Then the first is killed mid-step.
    let mut admin = db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let owners = loop {
        let owners: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT owner FROM cairn.leases ORDER BY owner")
                .fetch_all(&mut admin)
                .await
                .unwrap();
        if owners.len() == 3 || Instant::now() > deadline {
            break owners;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(owners.len(), 3, "the work did not spread: {owners:?}");
    let victim = servers.remove(0);
    let victim_id = victim.instance.clone();
    let killed_at = chrono::Utc::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(victim);
    // What it held when it died (a finished workflow's lease goes with its last commit);
    // read before the TTL lets anyone take them.
    let held: Vec<String> =
        sqlx::query_scalar("SELECT workflow_id FROM cairn.leases WHERE owner = $1")
            .bind(&victim_id)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert!(!held.is_empty(), "the victim held nothing when killed");

    // Every workflow finishes on the survivors (asked of one, run by either).
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        wait_completed(&client, &servers[0].url, id, deadline).await;
    }

    // Nothing completed twice; the victim's workflows were taken over with the events that
    // say so.
    let ran = runs_per_step(&runs);
    let mut taken_over = 0;
    for id in &ids {
        let h = get_json(
            &client,
            &servers[1].url,
            &format!("/api/workflows/{id}/history"),
        )
        .await;
        let events = h["events"].as_array().unwrap();
        let mut completed: BTreeMap<String, usize> = BTreeMap::new();
        for e in events {
            if e["type"] == "step.completed" {
                *completed
                    .entry(e["step_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        assert_eq!(completed.len(), 3, "{id}: {completed:?}");
        assert!(
            completed.values().all(|n| *n == 1),
            "{id} ran a step twice: {completed:?}"
        );
        // The first takeover, the victim's or (on a machine slow enough for a survivor's
        // lease to lapse) another's: a step running then may run again.
        let stalled_at = events.iter().position(|e| e["type"] == "workflow.stalled");
        for step in ["s0", "s1", "s2"] {
            let runs = ran
                .get(&(id.clone(), step.to_string()))
                .copied()
                .unwrap_or(0);
            let started = events
                .iter()
                .filter(|e| e["type"] == "step.started" && e["step_id"] == step)
                .count();
            // Every run was a start the log holds (none launched without its start durable).
            assert!(
                runs >= 1 && runs <= started,
                "{id}/{step}: ran {runs}, started {started}"
            );
            // A step completed before the takeover (or with none) never ran again.
            let completed_at = events
                .iter()
                .position(|e| e["type"] == "step.completed" && e["step_id"] == step)
                .unwrap();
            if stalled_at.is_none_or(|at| completed_at < at) {
                assert_eq!(runs, 1, "{id}/{step} completed, then ran again");
            }
        }
        let by_victim = events
            .iter()
            .find(|e| e["type"] == "workflow.stalled" && e["previous_owner"] == victim_id.as_str());
        if held.contains(id) {
            let stalled =
                by_victim.unwrap_or_else(|| panic!("{id} was the victim's but was not taken over"));
            // Taken over once the lease ran out (2 s), not much later: the slack is for a
            // busy machine, far from the 30 s default TTL a stuck claim would look like.
            let at: chrono::DateTime<chrono::Utc> =
                stalled["at"].as_str().unwrap().parse().unwrap();
            let after = (at - killed_at).num_milliseconds();
            assert!(after < 15_000, "{id} taken over {after} ms after the kill");
            assert!(events.iter().any(|e| e["type"] == "workflow.resumed"));
            taken_over += 1;
        }
    }
    assert!(taken_over > 0);

    // The survivor's stream carried every event of every instance once, in id order.
    let logged: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM cairn.events WHERE id > $1 ORDER BY id")
            .bind(from)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    let mut streamed = Vec::new();
    while streamed.len() < logged.len() {
        let Some(f) = sse.next_event(Duration::from_secs(10)).await else {
            break;
        };
        streamed.push(f.id.unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(streamed, logged);

    // A browser that resumes on another instance with its Last-Event-ID gets the rest, exact.
    let half = logged[logged.len() / 2];
    let mut resumed = Sse::connect_url(&format!("{}/api/events", servers[0].url), Some(half)).await;
    let rest: Vec<i64> = logged.iter().copied().filter(|id| *id > half).collect();
    let mut again = Vec::new();
    while again.len() < rest.len() {
        let Some(f) = resumed.next_event(Duration::from_secs(10)).await else {
            break;
        };
        again.push(f.id.unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(again, rest);
}

/// Every connection the server has to Postgres is killed, again and again, while workflows
/// run (as when Postgres restarts or a network drops): the server reconnects and carries on,
/// nothing acknowledged is lost and no completed step runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_database_connections_die_mid_run_carries_on() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, server::config::DEFAULT_CONFIG_TOML).unwrap();
    let server = serve(&db, &config).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(start_on(&client, &server.url, &chain(&format!("wf{i}"))).await);
    }
    let mut admin = db.connect().await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let mut killed = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        killed += n.len();
    }
    assert!(killed > 0);

    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let resp = client
                .get(format!("{}/api/workflows/{id}", server.url))
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                let s: Value = resp.json().await.unwrap();
                if s["status"] == "completed" {
                    break;
                }
                assert_eq!(s["status"], "running", "{s}");
            }
            assert!(Instant::now() < deadline, "{id} never completed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT data FROM cairn.events WHERE workflow_id = $1 AND type = 'step.completed'",
        )
        .bind(id)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert_eq!(events.len(), 3, "{id}: {events:?}");
    }
}

/// Postgres itself restarted in the middle of running workflows (a cluster of the test's own,
/// so that the shared one is not disturbed): the server's connections are cut and refused
/// until it is back; the server reconnects and carries on, its workflows all finish, and every
/// step's program ran only under a start the log holds, a completed step never again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_carries_on_across_a_postgres_restart() {
    let cluster = crate::pg::OwnCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let config = config_file(dir.path(), &marked_role(&runs, "0.5"));
    let (child, url) = serve_binary_on(&cluster.url, Some(&config));
    let _server = Server {
        child,
        url: url.clone(),
        instance: String::new(),
    };
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let spec = marked_chain(&format!("wf{i}"));
        ids.push(start_on(&client, &url, &spec).await);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let first = get_json(&client, &url, &format!("/api/workflows/{}", ids[0])).await;
    assert_eq!(first["status"], "running", "restarted mid-run: {first}");
    cluster.restart();

    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        wait_completed(&client, &url, id, deadline).await;
    }
    let ran = runs_per_step(&runs);
    for id in &ids {
        let h = get_json(&client, &url, &format!("/api/workflows/{id}/history")).await;
        let events = h["events"].as_array().unwrap();
        for step in ["s0", "s1", "s2"] {
            let runs = ran
                .get(&(id.clone(), step.to_string()))
                .copied()
                .unwrap_or(0);
            let of = |kind: &str| {
                events
                    .iter()
                    .filter(|e| e["type"] == kind && e["step_id"] == step)
                    .count()
            };
            assert_eq!(of("step.completed"), 1, "{id}/{step}");
            assert!(
                runs >= 1 && runs <= of("step.started"),
                "{id}/{step}: ran {runs}, started {}",
                of("step.started")
            );
        }
    }
}

/// An instance stopped on purpose (`SIGTERM`, as a rolling deploy does) hands its workflows
/// over: another instance takes them over at once rather than when the leases expire (a
/// minute here), runs the stopped attempt again, and nothing completed runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_gracefully_hands_its_workflows_over_at_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[engine]\nlease_ttl_ms = 60000\n");
    let leaving = serve(&db, &config).await;
    let staying = serve(&db, &config).await;
    let client = reqwest::Client::new();
    let id = start_on(
        &client,
        &leaving.url,
        &json!({ "steps": [
            { "id": "first", "role": "developer", "task": "1", "params": { "duration_ms": 0 } },
            { "id": "long", "role": "developer", "task": "2", "deps": ["first"],
              "params": { "duration_ms": 3000 } }
        ] }),
    )
    .await;
    // Mid-step on the instance that leaves.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wf = get_json(&client, &staying.url, &format!("/api/workflows/{id}")).await;
        if wf["steps"][1]["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {wf}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = db.connect().await;
    let owner: String = sqlx::query_scalar("SELECT owner FROM cairn.leases WHERE workflow_id = $1")
        .bind(&id)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(owner, leaving.instance);

    let stopped_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leaving.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Done well before the minute the lease would have lasted: the step takes 3 s again.
    wait_completed(
        &client,
        &staying.url,
        &id,
        stopped_at + Duration::from_secs(30),
    )
    .await;
    drop(leaving);

    let h = get_json(
        &client,
        &staying.url,
        &format!("/api/workflows/{id}/history"),
    )
    .await;
    let events = h["events"].as_array().unwrap();
    let stalled = events
        .iter()
        .find(|e| e["type"] == "workflow.stalled")
        .expect("taken over");
    assert_eq!(stalled["previous_owner"], owner.as_str(), "{stalled}");
    let resumed = events
        .iter()
        .find(|e| e["type"] == "workflow.resumed")
        .expect("resumed");
    assert_eq!(
        resumed["by"],
        format!("recovery:{}", staying.instance).as_str()
    );
    let completed: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "step.completed")
        .map(|e| e["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(completed, ["first", "long"], "each step completed once");
}

/// Any instance answers for every workflow: controls sent over HTTP to an instance that does
/// not run the workflow take effect on the one that does, with the same 409 rules, and the
/// workflow's own stream on the first instance carries what they caused to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_and_a_workflows_stream_work_on_an_instance_that_does_not_run_it() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    let servers = [serve(&db, &config).await, serve(&db, &config).await];
    let client = reqwest::Client::new();
    let quick = json!({ "duration_ms": 0 });
    // a runs for a minute; b fails and waits a minute for its retry.
    let spec = json!({ "steps": [
        { "id": "a", "role": "developer", "task": "A", "params": { "duration_ms": 60000 } },
        { "id": "b", "role": "developer", "task": "B",
          "params": { "duration_ms": 0, "fail_attempts": 10, "error": "flaky" },
          "retry": { "max_attempts": 5, "initial_interval_ms": 60000, "max_interval_ms": 60000,
                     "jitter": false } },
        { "id": "c", "role": "developer", "task": "after {b.output}", "deps": ["b"],
          "params": quick }
    ] });
    let id = start_on(&client, &servers[0].url, &spec).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wf = get_json(&client, &servers[1].url, &format!("/api/workflows/{id}")).await;
        if wf["steps"][0]["status"] == "running" && wf["steps"][1]["status"] == "retrying" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {wf}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = db.connect().await;
    let elsewhere = not_running(&mut admin, &servers, &id).await;
    let mut stream = Sse::connect_url(
        &format!("{}/api/workflows/{id}/events", elsewhere.url),
        None,
    )
    .await;
    let post = async |path: &str, body: Value| {
        let resp = client
            .post(format!("{}/api/workflows/{id}{path}", elsewhere.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };

    // b is skipped while it waits: the owner runs c, which renders the skip's output.
    let (status, body) = post("/steps/b/skip", json!({ "output": "S" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["steps"][1]["status"], "skipped", "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wf = get_json(&client, &elsewhere.url, &format!("/api/workflows/{id}")).await;
        if wf["steps"][2]["status"] == "completed" {
            assert_eq!(wf["steps"][2]["output"], "after S", "{wf}");
            break;
        }
        assert!(Instant::now() < deadline, "c never ran: {wf}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = post("/steps/b/skip", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    // Cancelled there too: the lease is gone with it; a second cancel is refused.
    let (status, body) = post("/cancel", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["steps"][0]["status"], "cancelled", "{body}");
    let (status, body) = post("/cancel", json!({})).await;
    assert_eq!(status, 409, "{body}");
    let leases: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cairn.leases WHERE workflow_id = $1")
            .bind(&id)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(leases, 0);

    // The stream on the instance that sent the controls carried the run to its end.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|t| t != "workflow.cancelled") {
        let Some(f) = stream.next_event(Duration::from_secs(10)).await else {
            panic!("the stream stopped after {seen:?}");
        };
        match f.event {
            Some(t) if t != "snapshot" && t != "step.log" => seen.push(t),
            _ => {}
        }
    }
    let from_skip: Vec<&str> = seen
        .iter()
        .skip_while(|t| *t != "step.skipped")
        .map(String::as_str)
        .collect();
    assert!(
        from_skip.starts_with(&["step.skipped", "step.started", "step.completed"]),
        "{seen:?}"
    );
}

/// The server of `servers` that does not hold workflow `id`'s lease.
async fn not_running<'a>(
    admin: &mut sqlx::PgConnection,
    servers: &'a [Server],
    id: &str,
) -> &'a Server {
    let owner: String = sqlx::query_scalar("SELECT owner FROM cairn.leases WHERE workflow_id = $1")
        .bind(id)
        .fetch_one(admin)
        .await
        .unwrap();
    servers.iter().find(|s| s.instance != owner).unwrap()
}
