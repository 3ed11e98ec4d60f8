//! `cairn bench`: measured numbers for the engine, one JSON line per run.
//!
//! Each workload runs the real engine against a real SQLite file (fresh, in a temporary
//! folder, `synchronous=FULL`) in this process, verifies every output, and exits non-zero if
//! one is wrong. `chain` and `concurrent` also run on Postgres (`--store postgres`: a fresh
//! database on the server `--database-url` names, dropped afterwards), with `--instances K`
//! engines, each with its own connections, writer and publisher, as K servers would have. `resume` also runs a real `cairn serve` child and kills it with SIGKILL.
//! `big-output` and `runaway` measure what large and endless outputs cost: time, database
//! bytes and memory.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use cairn::{Event, ParseOptions, WorkflowStatus};
use chrono::Utc;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{
        DEFAULT_CONFIG_TOML, DEFAULT_MAX_OUTPUT_BYTES, EngineConfig, OnOverflow, OutputLimit,
        RoleConfig, RunnerConfig, TaskVia,
    },
    engine::{Created, Engine, EngineSettings},
    store::{Change, Store},
};

mod outputs;
mod target;

use outputs::{big_output, runaway};
use target::Target;

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// N three-step chains, one after another, no-op steps.
    Chain,
    /// N chains at once, every step waits 10 ms.
    Concurrent,
    /// One workflow: a start step, W parallel steps, a join.
    Fanout,
    /// N chains; the server is killed mid-run and a new one finishes them.
    Resume,
    /// C streaming clients on the workspace feed of a server running N chains.
    Sse,
    /// A chain of N steps whose first step outputs `--output-bytes`, against the same chain
    /// with tiny outputs.
    BigOutput,
    /// Programs that print without end, or far past `max_output_bytes`.
    Runaway,
    /// C clients reading snapshots, on the open server and then with a token.
    Reads,
}

/// Where a benchmark stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStore {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh Postgres database.
    Postgres,
}

/// `cairn bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to run.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// The store: `sqlite` (a fresh file) or `postgres` (a fresh database).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub store: BenchStore,
    /// For `--store postgres`: the server, as a URL to a database the bench may create
    /// databases from.
    #[arg(
        long,
        env = "CAIRN_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Engines sharing the store (`chain` and `concurrent` on Postgres).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Workflows (default: 500 for chain/concurrent, 200 for resume); for big-output, the
    /// steps of its chain (default 21).
    #[arg(long)]
    pub n: Option<usize>,
    /// Parallel steps of `fanout`.
    #[arg(long, default_value_t = 100)]
    pub width: usize,
    /// Streaming clients of `sse` (default 1000), reading clients of `reads` (default 8).
    #[arg(long)]
    pub clients: Option<usize>,
    /// The first step's output in `big-output`, in bytes.
    #[arg(long, default_value_t = 5_000_000)]
    pub output_bytes: usize,
}

/// Runs the benchmark and prints its JSON line.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.workload == Workload::Resume && args.n.is_some_and(|n| n > 200) {
        bail!("--n for resume is at most 200 (one page of the workflow list)");
    }
    let multi = matches!(args.workload, Workload::Chain | Workload::Concurrent);
    if !multi && (args.store != BenchStore::Sqlite || args.instances != 1) {
        bail!("--store postgres and --instances apply to the chain and concurrent workloads");
    }
    if !(1..=16).contains(&args.instances) {
        bail!("--instances must be between 1 and 16");
    }
    if args.store == BenchStore::Sqlite && args.instances != 1 {
        bail!("--instances needs --store postgres: one process owns an SQLite file");
    }
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let db = dir.path().join("bench.db");
    let target = match args.store {
        BenchStore::Sqlite => Target::Sqlite(db.clone()),
        BenchStore::Postgres => Target::postgres(&args.database_url).await?,
    };
    let result = match args.workload {
        Workload::Chain => chain(&target, args.n.unwrap_or(500), false, args.instances).await,
        Workload::Concurrent => chain(&target, args.n.unwrap_or(500), true, args.instances).await,
        Workload::Fanout => fanout(&db, args.width).await,
        Workload::Resume => resume(&db, args.n.unwrap_or(200)).await,
        Workload::Sse => {
            let clients = args.clients.unwrap_or(1000);
            super::bench_sse::run(dir.path(), clients, args.n.unwrap_or(20)).await
        }
        Workload::BigOutput => {
            big_output(dir.path(), args.n.unwrap_or(21), args.output_bytes).await
        }
        Workload::Runaway => runaway(&db).await,
        Workload::Reads => {
            let clients = args.clients.unwrap_or(8);
            super::bench_reads::run(dir.path(), clients, args.n.unwrap_or(20)).await
        }
    };
    target.drop_database().await;
    let result = result?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

struct Harness {
    store: Store,
    shutdown: CancellationToken,
    engine: tokio::task::JoinHandle<()>,
    handle: crate::engine::EngineHandle,
}

async fn harness(db: &Path) -> anyhow::Result<Harness> {
    harness_with(db, EngineConfig::from_toml(DEFAULT_CONFIG_TOML)?).await
}

/// The engine with `config`'s roles (and room for 1024 attempts at once) on a fresh store.
async fn harness_with(db: &Path, config: EngineConfig) -> anyhow::Result<Harness> {
    harness_on(&format!("sqlite://{}", db.display()), config, "bench").await
}

/// Like [`harness_with`], on any database, as instance `instance`.
async fn harness_on(
    url: &str,
    mut config: EngineConfig,
    instance: &str,
) -> anyhow::Result<Harness> {
    let store = Store::connect(url).await?;
    config.settings = EngineSettings {
        max_concurrency: 1024,
        ..EngineSettings::default()
    };
    let (engine, handle) = Engine::new(
        store.clone(),
        &config,
        instance.into(),
        config.settings.clone(),
    );
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn(engine.run(shutdown.clone()));
    Ok(Harness {
        store,
        shutdown,
        engine,
        handle,
    })
}

impl Harness {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.engine.await;
    }

    async fn create(&self, spec: &Value) -> anyhow::Result<String> {
        let spec = cairn::parse_spec_value(spec, &ParseOptions::default())
            .map_err(|e| anyhow::anyhow!("bench spec invalid: {:?}", e.errors))?;
        let change = Change::created(spec, Some("bench".into()), cairn::DEFAULT_WORKSPACE, None);
        let id = change.workflow_id.clone();
        // As the HTTP API does: the engine starts it in the checkpoint that creates it.
        let out = self.handle.create(change).await?;
        ensure!(matches!(out, Created::Committed(_)), "create refused");
        Ok(id)
    }
}

/// The benchmark chain: design → implement → test, each step waiting `duration_ms`.
pub(super) fn chain_spec(i: usize, duration_ms: u64) -> Value {
    let p = json!({ "duration_ms": duration_ms });
    json!({ "name": format!("chain-{i}"), "steps": [
        { "id": "design", "role": "architect", "task": format!("Design goal-{i}"), "params": p },
        { "id": "implement", "role": "developer", "task": "Build {design.output}", "deps": ["design"], "params": p },
        { "id": "test", "role": "tester", "task": "Test {implement.output}", "deps": ["implement"], "params": p }
    ]})
}

/// Waits for the workflows to finish (through the committed-event feed) and returns each
/// one's finish time.
async fn finish_times(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<crate::store::LiveEvent>>,
    store: &Store,
    ids: &[String],
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut left: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut done = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !left.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "{} workflows did not finish",
            left.len()
        );
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Ok(rec)) => {
                if matches!(
                    rec.event,
                    Event::WorkflowCompleted {} | Event::WorkflowFailed { .. }
                ) && left.remove(rec.workflow_id.as_str())
                {
                    done.insert(rec.workflow_id.clone(), Instant::now());
                }
            }
            // Lagged or quiet: look at the database instead.
            _ => {
                let mut finished = vec![];
                for id in left.iter() {
                    if store
                        .load(id)
                        .await?
                        .is_some_and(|s| s.status.is_terminal())
                    {
                        finished.push(id.to_string());
                    }
                }
                for id in finished {
                    left.remove(id.as_str());
                    done.insert(id, Instant::now());
                }
            }
        }
    }
    Ok(done)
}

async fn verify_chain(store: &Store, id: &str, i: usize) -> anyhow::Result<()> {
    let s = store.load(id).await?.context("workflow vanished")?;
    ensure!(
        s.status == WorkflowStatus::Completed,
        "{id} is {}",
        s.status.as_str()
    );
    let out = s
        .step("test")
        .and_then(|t| t.output.clone())
        .unwrap_or_default();
    ensure!(
        out == format!("Test Build Design goal-{i}"),
        "{id}: wrong output {out:?}"
    );
    Ok(())
}

/// Commits a 3-step chain needs at the least: created with its start and first step, each
/// completion with the next start, the last completion with the workflow's end.
const MIN_COMMITS_PER_CHAIN: f64 = 4.0;

async fn chain(
    target: &Target,
    n: usize,
    concurrent: bool,
    instances: usize,
) -> anyhow::Result<Value> {
    let floor_ms = target.commit_floor_ms().await?;
    let mut hs = Vec::with_capacity(instances);
    for k in 0..instances {
        let config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML)?;
        hs.push(harness_on(&target.url(), config, &format!("bench-{k}")).await?);
    }
    // Every instance's events reach every instance's feed; the first one's is watched.
    let store = hs[0].store.clone();
    let mut rx = store.subscribe();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    if concurrent {
        // All at once, spread over the instances as a load balancer would: every start is
        // submitted together (they share group commits).
        let specs: Vec<Value> = (0..n).map(|i| chain_spec(i, 10)).collect();
        let created = futures::future::join_all(
            specs
                .iter()
                .enumerate()
                .map(|(i, s)| hs[i % instances].create(s)),
        )
        .await;
        for id in created {
            ids.push(id?);
        }
        let done = finish_times(&mut rx, &store, &ids).await?;
        for id in &ids {
            latencies.push((done[id] - started).as_secs_f64() * 1000.0);
        }
    } else {
        for i in 0..n {
            let t = Instant::now();
            let id = hs[i % instances].create(&chain_spec(i, 0)).await?;
            finish_times(&mut rx, &store, std::slice::from_ref(&id)).await?;
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            ids.push(id);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    for (i, id) in ids.iter().enumerate() {
        verify_chain(&store, id, i).await?;
    }
    let commits: Vec<f64> = hs
        .iter()
        .flat_map(|h| h.store.commit_latencies_ms())
        .collect();
    for h in hs {
        h.stop().await;
    }
    let commits_per_workflow = commits.len() as f64 / n as f64;
    // The part of each instance's wall time its writer spent committing (the rest is the
    // engine, the runners and the hand-offs between them).
    let commit_share = commits.iter().sum::<f64>() / 1000.0 / (wall * instances as f64);
    let mut result = report(
        if concurrent { "concurrent" } else { "chain" },
        n,
        n * 3,
        wall,
        latencies,
        commits,
        0,
    );
    // What the disk allows one chain after another: 3 steps per 4 minimal commits.
    let allowed_steps_per_s = 3.0 * 1000.0 / (MIN_COMMITS_PER_CHAIN * floor_ms);
    let achieved = (n * 3) as f64 / wall;
    result["store"] = json!(target.kind());
    result["instances"] = json!(instances);
    result["commit_floor_ms"] = json!(round3(floor_ms));
    result["commits_per_workflow"] = json!(round3(commits_per_workflow));
    result["commit_share"] = json!(round3(commit_share));
    if !concurrent {
        result["floor_ratio"] = json!(round3(achieved / allowed_steps_per_s));
    }
    Ok(result)
}

async fn fanout(db: &Path, width: usize) -> anyhow::Result<Value> {
    let h = harness(db).await?;
    let mut rx = h.store.subscribe();
    let p = json!({ "duration_ms": 0 });
    let mut steps = vec![json!({ "id": "start", "role": "architect", "task": "go", "params": p })];
    let mut join_task = String::new();
    for i in 0..width {
        steps.push(json!({ "id": format!("p{i}"), "role": "developer", "task": format!("part {i} of {{start.output}}"), "deps": ["start"], "params": p }));
        join_task.push_str(&format!("{{p{i}.output}};"));
    }
    let deps: Vec<String> = (0..width).map(|i| format!("p{i}")).collect();
    steps.push(
        json!({ "id": "join", "role": "tester", "task": join_task, "deps": deps, "params": p }),
    );
    let started = Instant::now();
    let id = h
        .create(&json!({ "name": "fanout", "steps": steps }))
        .await?;
    finish_times(&mut rx, &h.store, std::slice::from_ref(&id)).await?;
    let wall = started.elapsed().as_secs_f64();
    let s = h.store.load(&id).await?.context("workflow vanished")?;
    let expected: String = (0..width).map(|i| format!("part {i} of go;")).collect();
    ensure!(
        s.step("join").and_then(|j| j.output.as_deref()) == Some(expected.as_str()),
        "fanout join output is wrong"
    );
    let commits = h.store.commit_latencies_ms();
    h.stop().await;
    Ok(report(
        "fanout",
        1,
        width + 2,
        wall,
        vec![wall * 1000.0],
        commits,
        0,
    ))
}

async fn resume(db: &Path, n: usize) -> anyhow::Result<Value> {
    // Phase 1: a real server process runs the chains until all are inside `implement`
    // (with room to run them all at once).
    let config = db.with_file_name("resume.toml");
    std::fs::write(
        &config,
        // One client address starts every workflow: no write limit.
        format!(
            "{DEFAULT_CONFIG_TOML}\n[engine]\nmax_concurrency = 1024\n[http]\nwrites_per_second = 0\n"
        ),
    )?;
    let (mut child, url) = spawn_server(db, Some(&config)).await?;
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        // A long `implement`, so every workflow is inside it when the server is killed.
        let mut spec = chain_spec(i, 1);
        spec["steps"][1]["params"]["duration_ms"] = json!(3000);
        ids.push(post_workflow(&client, &url, &spec).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page: Value = client
            .get(format!("{url}/api/workflows?status=running&limit=200"))
            .send()
            .await?
            .json()
            .await?;
        let inside = page["workflows"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter(|w| w["current_steps"] == json!(["implement"]))
                    .count()
            })
            .unwrap_or(0);
        if inside >= n {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {inside} of {n} workflows reached implement"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().context("SIGKILL")?;
    child.wait().await?;

    // Phase 2: a fresh engine recovers them all.
    let started = Instant::now();
    let phase2 = Utc::now();
    let h = harness(db).await?;
    let mut rx = h.store.subscribe();
    finish_times(&mut rx, &h.store, &ids).await?;
    let wall = started.elapsed().as_secs_f64();
    let mut re_executed = 0;
    let mut takeover_ms: f64 = 0.0;
    for (i, id) in ids.iter().enumerate() {
        verify_chain(&h.store, id, i).await?;
        let events = h.store.history(id, 0).await?;
        if let Some(r) = events
            .iter()
            .find(|e| matches!(e.event, Event::WorkflowResumed { .. }) && e.at >= phase2)
        {
            takeover_ms =
                takeover_ms.max((r.at - phase2).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        let mut completed = std::collections::HashSet::new();
        for e in &events {
            match &e.event {
                Event::StepCompleted { step_id, .. } => {
                    completed.insert(step_id.clone());
                }
                Event::StepStarted { step_id, .. } if completed.contains(step_id) => {
                    re_executed += 1
                }
                _ => {}
            }
        }
    }
    let commits = h.store.commit_latencies_ms();
    h.stop().await;
    let mut r = report(
        "resume",
        n,
        n * 3,
        wall,
        vec![wall * 1000.0],
        commits,
        re_executed,
    );
    ensure!(
        re_executed == 0,
        "{re_executed} completed steps ran again: {r}"
    );
    r["recovered_workflows"] = json!(n);
    // Start-up to the last workflow resumed; wall_s also re-runs each interrupted 3 s step.
    r["takeover_ms"] = json!(round3(takeover_ms));
    Ok(r)
}

/// `POST /api/workflows` on a running server; returns the new id.
pub(super) async fn post_workflow(
    client: &reqwest::Client,
    url: &str,
    spec: &Value,
) -> anyhow::Result<String> {
    let r: Value = client
        .post(format!("{url}/api/workflows"))
        .json(spec)
        .send()
        .await?
        .json()
        .await?;
    Ok(r["id"].as_str().context("no id in the answer")?.to_string())
}

/// Starts `cairn serve` (this very binary) on a free port; returns it and its URL.
pub(super) async fn spawn_server(
    db: &Path,
    config: Option<&Path>,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--log",
        "info",
        "--database-url",
    ])
    .arg(format!("sqlite://{}", db.display()));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting cairn serve")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let url = loop {
        let line = lines.next_line().await?.context("cairn serve exited")?;
        if let Some(i) = line.find("listening on http://") {
            let rest = &line[i + "listening on ".len()..];
            break rest.split_whitespace().next().unwrap_or("").to_string();
        }
    };
    // Keep draining its output so it never blocks on a full pipe; ends with the child.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The process's peak resident memory so far, in MB (`VmHWM`).
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// The process's resident memory now, in MB (`VmRSS`).
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A `kB` line of `/proc/self/status`, in MB (0 where there is no such file).
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| round3(kb / 1024.0))
        .unwrap_or(0.0)
}

/// Starts a new peak: writing 5 to `/proc/self/clear_refs` sets `VmHWM` back to the current
/// RSS (Linux 4.0 and later). `false` when that is not possible here.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn report(
    workload: &str,
    workflows: usize,
    steps: usize,
    wall_s: f64,
    mut latencies: Vec<f64>,
    mut commits: Vec<f64>,
    re_executed: usize,
) -> Value {
    latencies.sort_by(f64::total_cmp);
    commits.sort_by(f64::total_cmp);
    json!({
        "engine": "cairn",
        "workload": workload,
        "store": "sqlite",
        "workflows": workflows,
        "steps": steps,
        "wall_s": round3(wall_s),
        "steps_per_s": round3(steps as f64 / wall_s),
        "p50_ms": round3(percentile(&latencies, 0.5)),
        "p95_ms": round3(percentile(&latencies, 0.95)),
        "peak_rss_mb": peak_rss_mb(),
        "commits": commits.len(),
        "commit_p50_ms": round3(percentile(&commits, 0.5)),
        "commit_p95_ms": round3(percentile(&commits, 0.95)),
        "re_executed_completed_steps": re_executed,
    })
}
