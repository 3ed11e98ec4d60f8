//! `cairn bench --workload sse`: many EventSource-style clients on one busy workspace.
//!
//! A real `cairn serve` child runs with its stream caps raised; C clients connect to
//! `/api/events` (each its own TCP connection), then N three-step chains run. For every
//! frame a client receives, latency is the time from the event's commit timestamp to the
//! frame's arrival. Server memory per client is the child's RSS growth divided by C.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

use super::bench::{chain_spec, percentile, post_workflow, round3, spawn_server};
use crate::config::DEFAULT_CONFIG_TOML;

/// Clients connecting at once while the crowd is built.
const CONNECT_BATCH: usize = 200;

fn rss_kb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// The `at` of an event frame's JSON, without parsing the rest.
fn event_at(data: &str) -> Option<DateTime<Utc>> {
    let i = data.find("\"at\":\"")? + 6;
    let end = data[i..].find('"')? + i;
    DateTime::parse_from_rfc3339(&data[i..end])
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

struct Shared {
    latencies: Mutex<Vec<f64>>,
    frames: std::sync::atomic::AtomicU64,
}

/// One client: reads frames until `stop`, recording latencies of workflow events.
async fn client(
    resp: reqwest::Response,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut chunks = resp.bytes_stream();
    let mut buf = String::new();
    let mut local = Vec::new();
    loop {
        let chunk = tokio::select! {
            c = chunks.next() => c,
            _ = stop.cancelled() => break,
        };
        let Some(Ok(chunk)) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.starts_with(':') || block.contains("event: snapshot") {
                continue;
            }
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
                && let Some(at) = event_at(data)
            {
                let ms = (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                local.push(ms);
            }
        }
    }
    shared
        .frames
        .fetch_add(local.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut l) = shared.latencies.lock() {
        l.extend(local);
    }
}

/// Runs the workload and returns its report.
pub async fn run(dir: &Path, clients: usize, workflows: usize) -> anyhow::Result<Value> {
    crate::startup::raise_open_files_limit();
    let config = dir.join("cairn.toml");
    std::fs::write(
        &config,
        format!(
            // One client address starts every workflow: no write limit.
            "{DEFAULT_CONFIG_TOML}\n[sse]\nmax_streams = {}\nmax_streams_per_client = {}\n\
             [http]\nwrites_per_second = 0\n",
            clients + 100,
            clients + 100
        ),
    )?;
    let (child, url) = spawn_server(&dir.join("sse.db"), Some(&config)).await?;
    let pid = child.id().context("no pid")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kb(pid);

    let shared = Arc::new(Shared {
        latencies: Mutex::new(Vec::new()),
        frames: Default::default(),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let connect_started = Instant::now();
    let mut connected = 0;
    while connected < clients {
        let batch = CONNECT_BATCH.min(clients - connected);
        let opens = (0..batch).map(|_| http.get(format!("{url}/api/events")).send());
        for resp in futures::future::join_all(opens).await {
            let resp = resp.context("a client could not connect")?;
            ensure!(
                resp.status() == 200,
                "a client was refused: {}",
                resp.status()
            );
            tasks.spawn(client(resp, shared.clone(), stop.clone()));
        }
        connected += batch;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kb(pid);

    // The work: N chains of three 10 ms steps, all at once.
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..workflows {
        ids.push(post_workflow(&http, &url, &chain_spec(i, 10)).await?);
    }
    // Done when every workflow is, and the clients have had every frame.
    let page: Value = loop {
        let page: Value = http
            .get(format!("{url}/api/workflows?status=completed&limit=200"))
            .send()
            .await?
            .json()
            .await?;
        if page["workflows"].as_array().map_or(0, Vec::len) >= workflows.min(200) {
            break page;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "workflows did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let last_event: i64 = page["workflows"]
        .as_array()
        .and_then(|w| w.iter().filter_map(|w| w["last_event_id"].as_i64()).max())
        .unwrap_or(0);
    let expected_per_client = last_event as u64; // every event of the log is delivered
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait until the clients' counts settle (they record locally; give them time to drain).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = started.elapsed().as_secs_f64();
    let rss_after = rss_kb(pid);
    stop.cancel();
    while tasks.join_next().await.is_some() {
        ensure!(Instant::now() < deadline, "clients did not stop");
    }
    drop(child);

    let mut lat = shared
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let frames = lat.len() as u64;
    let expected = expected_per_client * clients as u64;
    ensure!(
        frames == expected,
        "clients received {frames} event frames, expected {expected} ({clients} x {expected_per_client})"
    );
    Ok(json!({
        "engine": "cairn",
        "workload": "sse",
        "store": "sqlite",
        "clients": clients,
        "workflows": workflows,
        "events": expected_per_client,
        "frames_delivered": frames,
        "wall_s": round3(wall),
        "frames_per_s": round3(frames as f64 / wall),
        "latency_p50_ms": round3(percentile(&lat, 0.5)),
        "latency_p99_ms": round3(percentile(&lat, 0.99)),
        "connect_s": round3(connect_s),
        "server_rss_mb_idle": round3(rss_before / 1024.0),
        "server_rss_mb_connected": round3(rss_connected / 1024.0),
        "server_rss_mb_after": round3(rss_after / 1024.0),
        "rss_per_client_kb": round3((rss_connected - rss_before) / clients as f64),
        "peak_rss_per_client_kb": round3((rss_after - rss_before) / clients as f64),
    }))
}
