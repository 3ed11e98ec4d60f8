//! The `big-output` and `runaway` workloads: what large and endless outputs cost in time,
//! database bytes and memory.

use super::*;

// ---- big-output ---------------------------------------------------------------------------

/// The first step's task in `big-output`; its big output is this text repeated.
pub(super) const BIG_TASK: &str =
    "Write the report in full: every section, every table, every appendix.";

/// The second step's template around the first step's whole output.
pub(super) const SUMMARY_PREFIX: &str = "Summarise ";

/// What the second step of `big-output` answers, in bytes.
pub(super) const SUMMARY_BYTES: usize = 64;

/// The chain of `big-output`: `s1` answers `output_bytes` bytes (its task when `None`), `s2`
/// is rendered from the whole of it and answers [`SUMMARY_BYTES`], each later step answers
/// its task (`Next ` and the output before it).
pub(super) fn big_chain_spec(n: usize, output_bytes: Option<usize>) -> Value {
    let mut first = json!({ "duration_ms": 0 });
    if let Some(b) = output_bytes {
        first["output_bytes"] = json!(b);
    }
    let mut steps = vec![
        json!({ "id": "s1", "role": "architect", "task": BIG_TASK, "params": first }),
        json!({ "id": "s2", "role": "developer", "task": format!("{SUMMARY_PREFIX}{{s1.output}}"),
                "deps": ["s1"], "params": { "duration_ms": 0, "output_bytes": SUMMARY_BYTES } }),
    ];
    for i in 3..=n {
        steps.push(json!({ "id": format!("s{i}"), "role": "tester",
            "task": format!("Next {{s{}.output}}", i - 1), "deps": [format!("s{}", i - 1)],
            "params": { "duration_ms": 0 } }));
    }
    json!({ "name": "big-output", "steps": steps })
}

/// One run of the `big-output` chain, measured.
pub(super) struct ChainRun {
    wall_ms: f64,
    /// Commit durations, sorted.
    commits: Vec<f64>,
    /// The database (file and WAL) after the run, the WAL folded in.
    db_bytes: u64,
    /// `db_bytes` less the freshly migrated database's.
    db_growth: u64,
    /// Bytes this process wrote (`wchar`) from the start of the run to the last checkpoint.
    written: u64,
    /// Peak RSS of the process when the workflow had finished (before it was checked).
    peak_rss_mb: f64,
}

impl ChainRun {
    fn json(&self) -> Value {
        let per_commit = |bytes: u64| bytes / (self.commits.len().max(1) as u64);
        json!({
            "wall_ms": round3(self.wall_ms),
            "commits": self.commits.len(),
            "commit_p50_ms": round3(percentile(&self.commits, 0.5)),
            "commit_p95_ms": round3(percentile(&self.commits, 0.95)),
            "commit_max_ms": round3(self.commits.last().copied().unwrap_or(0.0)),
            "db_bytes": self.db_bytes,
            "db_growth_bytes": self.db_growth,
            "db_growth_per_commit": per_commit(self.db_growth),
            "written_bytes": self.written,
            "written_per_commit": per_commit(self.written),
            "peak_rss_mb": self.peak_rss_mb,
        })
    }
}

/// `big-output`: the chain with tiny outputs, then with a big first output; compares time,
/// database size, bytes written and memory.
pub(super) async fn big_output(dir: &Path, n: usize, output_bytes: usize) -> anyhow::Result<Value> {
    // The limits the big output must fit: the role's max_output_bytes and the rendered
    // task of `s2` (both 16 MiB).
    let max = DEFAULT_MAX_OUTPUT_BYTES - SUMMARY_PREFIX.len();
    if !(1..=max).contains(&output_bytes) {
        bail!("--output-bytes must be between 1 and {max} (16 MiB less the template of s2)");
    }
    if !(2..=500).contains(&n) {
        bail!("--n for big-output is the length of the chain: between 2 and 500");
    }
    // Tiny first: peak RSS is process-wide and never goes down.
    let tiny = big_chain_run(&dir.join("tiny.db"), n, None).await?;
    let big = big_chain_run(&dir.join("big.db"), n, Some(output_bytes)).await?;
    let ratio = big.wall_ms / tiny.wall_ms.max(0.001);
    let growth = big.db_bytes as f64 - tiny.db_bytes as f64;
    Ok(json!({
        "engine": "cairn",
        "workload": "big-output",
        "store": "sqlite",
        "steps": n,
        "output_bytes": output_bytes,
        "big_wall_ms": round3(big.wall_ms),
        "tiny_wall_ms": round3(tiny.wall_ms),
        "ratio": round3(ratio),
        "db_bytes_big": big.db_bytes,
        "db_bytes_tiny": tiny.db_bytes,
        "db_growth_over_output": round3(growth / output_bytes as f64),
        "peak_rss_mb": big.peak_rss_mb,
        "tiny_peak_rss_mb": tiny.peak_rss_mb,
        "commits": big.commits.len() + tiny.commits.len(),
        "big": big.json(),
        "tiny": tiny.json(),
    }))
}

/// Runs the `big-output` chain on a fresh database at `db` and checks it.
pub(super) async fn big_chain_run(
    db: &Path,
    n: usize,
    output_bytes: Option<usize>,
) -> anyhow::Result<ChainRun> {
    let h = harness(db).await?;
    let db_before = db_bytes(db).await?;
    let written_before = written_bytes();
    let mut rx = h.store.subscribe();
    let started = Instant::now();
    let id = h.create(&big_chain_spec(n, output_bytes)).await?;
    finish_times(&mut rx, &h.store, std::slice::from_ref(&id)).await?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let peak_rss_mb = peak_rss_mb();
    let checked = verify_big_chain(&h.store, &id, n, output_bytes).await;
    let mut commits = h.store.commit_latencies_ms();
    h.stop().await;
    checked?;
    let db_after = db_bytes(db).await?;
    commits.sort_by(f64::total_cmp);
    Ok(ChainRun {
        wall_ms,
        commits,
        db_bytes: db_after,
        db_growth: db_after.saturating_sub(db_before),
        written: written_bytes().saturating_sub(written_before),
        peak_rss_mb,
    })
}

/// Checks a finished `big-output` chain: completed, `s1`'s whole output stored, `s2`
/// rendered from all of it, every later step's output as expected.
pub(super) async fn verify_big_chain(
    store: &Store,
    id: &str,
    n: usize,
    output_bytes: Option<usize>,
) -> anyhow::Result<()> {
    let s = store.load(id).await?.context("workflow vanished")?;
    ensure!(
        s.status == WorkflowStatus::Completed,
        "{id} is {}: {}",
        s.status.as_str(),
        s.error.as_deref().unwrap_or("")
    );
    let first = match output_bytes {
        // What the simulator answers: its task repeated to exactly that many bytes.
        Some(b) => {
            let mut text = BIG_TASK.repeat(b.div_ceil(BIG_TASK.len()));
            text.truncate(b);
            text
        }
        None => BIG_TASK.to_string(),
    };
    let stored = store.output(id, "s1").await?.context("s1 has no output")?;
    ensure!(
        stored.len() == first.len(),
        "{id}: the stored output of s1 is {} bytes, not {}",
        stored.len(),
        first.len()
    );
    ensure!(
        stored == first,
        "{id}: the stored output of s1 is not what it produced"
    );
    let s2 = s.step("s2").context("no step s2")?;
    let task_bytes = (SUMMARY_PREFIX.len() + first.len()) as u64;
    ensure!(
        s2.task_bytes == Some(task_bytes),
        "{id}: s2's task is {:?} bytes, not {task_bytes} (all of s1's output and the template)",
        s2.task_bytes
    );
    let summary: String = SUMMARY_PREFIX
        .chars()
        .chain(first.chars())
        .take(SUMMARY_BYTES)
        .collect();
    let last = format!("s{n}");
    let want = format!("{}{summary}", "Next ".repeat(n - 2));
    let got = store.output(id, &last).await?.unwrap_or_default();
    ensure!(got == want, "{id}: {last} answered {got:?}, not {want:?}");
    Ok(())
}

/// The database's size: the file and its WAL, after folding the WAL into the file
/// (`PRAGMA wal_checkpoint(TRUNCATE)`) through a connection of our own.
pub(super) async fn db_bytes(db: &Path) -> anyhow::Result<u64> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    // A reader still inside the WAL would keep part of it (busy = 1); the sum below is what
    // is on disk either way.
    let _: (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut conn)
        .await
        .context("checkpointing the WAL")?;
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let bytes = size(db) + size(&wal);
    conn.close().await.context("closing the database")?;
    Ok(bytes)
}

/// Bytes this process has passed to `write` and its kin so far (`wchar` in
/// `/proc/self/io`; 0 where there is no such file).
pub(super) fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

// ---- runaway ------------------------------------------------------------------------------

/// The environment variable every runaway program gets (with a value naming the process and
/// the case), to find any of its processes left behind.
pub(super) const RUNAWAY_ENV: &str = "CAIRN_BENCH_RUNAWAY";

/// One runaway program of the `runaway` workload.
pub(super) struct Runaway {
    /// The case, and the role it runs as.
    name: &'static str,
    /// What `sh -c` runs.
    script: &'static str,
    /// Past `max_output_bytes` (the default 16 MiB).
    on_overflow: OnOverflow,
    /// The step's timeout.
    timeout_s: u64,
    /// How its workflow must end.
    end: RunawayEnd,
}

/// How a runaway's workflow must end.
enum RunawayEnd {
    /// Failed, the step's error containing this.
    Fails(&'static str),
    /// Completed, its output the first 16 MiB then this marker.
    Truncated(&'static str),
}

pub(super) const RUNAWAYS: [Runaway; 4] = [
    Runaway {
        name: "zeros-fail",
        script: "head -c 300000000 /dev/zero",
        on_overflow: OnOverflow::Fail,
        timeout_s: 60,
        end: RunawayEnd::Fails("output exceeded 16 MiB (max_output_bytes)"),
    },
    Runaway {
        name: "yes-fail",
        script: "yes",
        on_overflow: OnOverflow::Fail,
        timeout_s: 60,
        end: RunawayEnd::Fails("output exceeded 16 MiB (max_output_bytes)"),
    },
    Runaway {
        name: "yes-head-truncate",
        script: "yes | head -c 100000000",
        on_overflow: OnOverflow::Truncate,
        timeout_s: 60,
        end: RunawayEnd::Truncated("\n[cairn] output truncated: kept 16 MiB of 95.4 MiB"),
    },
    // Endless and truncated: drained (and dropped) until the timeout kills it.
    Runaway {
        name: "yes-truncate-timeout",
        script: "yes",
        on_overflow: OnOverflow::Truncate,
        timeout_s: 5,
        end: RunawayEnd::Fails("timed out after 5s"),
    },
];

/// `runaway`: each program of [`RUNAWAYS`] as a one-step workflow, one after another; checks
/// how each ends and that none of its processes is left, and reports memory.
pub(super) async fn runaway(db: &Path) -> anyhow::Result<Value> {
    let tag = |r: &Runaway| format!("{}-{}", std::process::id(), r.name);
    let mut config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML)?;
    for r in &RUNAWAYS {
        let role = RoleConfig {
            runner: RunnerConfig::Command {
                program: "sh".into(),
                args: vec!["-c".into(), r.script.into()],
                resume_args: vec![],
                task_via: TaskVia::Stdin,
                env: BTreeMap::from([(RUNAWAY_ENV.to_string(), tag(r))]),
            },
            output: OutputLimit {
                max_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                on_overflow: r.on_overflow,
            },
        };
        config.roles.insert(r.name.to_string(), role);
    }
    let h = harness_with(db, config).await?;
    let mut rx = h.store.subscribe();
    let idle_rss_mb = rss_mb();
    let mut peak = peak_rss_mb();
    let mut cases = Vec::with_capacity(RUNAWAYS.len());
    let mut wrong = Vec::new();
    for r in &RUNAWAYS {
        // Each case's own peak where Linux lets us start a new one (from what the process
        // holds now: memory freed by earlier cases may not have gone back to the system).
        let rss_before_mb = rss_mb();
        let own_peak = reset_peak_rss();
        let spec = json!({ "name": format!("runaway-{}", r.name), "steps": [
            { "id": "run", "role": r.name, "task": "go", "timeout_s": r.timeout_s,
              "retry": { "max_attempts": 1 } }
        ]});
        let started = Instant::now();
        let id = h.create(&spec).await?;
        finish_times(&mut rx, &h.store, std::slice::from_ref(&id)).await?;
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        let case_peak = peak_rss_mb();
        peak = peak.max(case_peak);
        let (mut outcome, problem) = check_runaway(&h.store, &id, r).await?;
        let left = lingering(&tag(r)).await;
        outcome["case"] = json!(r.name);
        outcome["wall_ms"] = json!(round3(wall_ms));
        outcome["rss_before_mb"] = json!(rss_before_mb);
        outcome["peak_rss_mb"] = json!(case_peak);
        outcome["peak_rss_is_own"] = json!(own_peak);
        outcome["processes_left"] = json!(left.len());
        if let Some(p) = problem {
            wrong.push(format!("{}: {p}", r.name));
        }
        if !left.is_empty() {
            wrong.push(format!("{}: processes left running: {left:?}", r.name));
        }
        cases.push(outcome);
    }
    h.stop().await;
    let r = json!({
        "engine": "cairn",
        "workload": "runaway",
        "store": "sqlite",
        "max_output_bytes": DEFAULT_MAX_OUTPUT_BYTES,
        "idle_rss_mb": idle_rss_mb,
        "peak_rss_mb": peak,
        "peak_over_idle_mb": round3(peak - idle_rss_mb),
        "cases": cases,
    });
    ensure!(wrong.is_empty(), "{}: {r}", wrong.join("; "));
    Ok(r)
}

/// How a runaway's workflow ended, as JSON, and what is wrong with that (if anything).
pub(super) async fn check_runaway(
    store: &Store,
    id: &str,
    r: &Runaway,
) -> anyhow::Result<(Value, Option<String>)> {
    let s = store.load(id).await?.context("workflow vanished")?;
    let step = s.step("run").context("no step run")?;
    let error = step.error.clone().unwrap_or_default();
    let mut outcome = json!({
        "status": s.status.as_str(),
        "step_status": step.status.as_str(),
        "error": &error,
        "output_bytes": step.output_bytes,
    });
    if step.status == cairn::StepStatus::Running {
        return Ok((outcome, Some("the step is still running".into())));
    }
    let problem = match r.end {
        RunawayEnd::Fails(want) => (s.status != WorkflowStatus::Failed || !error.contains(want))
            .then(|| format!("expected to fail with {want:?}")),
        RunawayEnd::Truncated(marker) => {
            let output = store.output(id, "run").await?.unwrap_or_default();
            outcome["output_bytes"] = json!(output.len());
            // The kept head is the limit, less the trailing newline the output loses.
            let head = output.len().saturating_sub(marker.len());
            let fits = (DEFAULT_MAX_OUTPUT_BYTES - 2..=DEFAULT_MAX_OUTPUT_BYTES).contains(&head);
            (s.status != WorkflowStatus::Completed || !output.ends_with(marker) || !fits)
                .then(|| format!("expected to complete with 16 MiB of output and {marker:?}"))
        }
    };
    Ok((outcome, problem))
}

/// Processes whose environment has `CAIRN_BENCH_RUNAWAY=tag`, after giving them up to 3 s to
/// go (a killed process group takes a moment to be reaped).
pub(super) async fn lingering(tag: &str) -> Vec<u32> {
    let entry = format!("{RUNAWAY_ENV}={tag}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let found = processes_with_env(&entry);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes (that we may read) with `entry` (`NAME=value`) in their environment.
pub(super) fn processes_with_env(entry: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == entry.as_bytes()))
        })
        .collect()
}
