//! `cairn bench --workload reads`: what the token check costs a request.
//!
//! A real `cairn serve` child on a fresh SQLite file runs N short workflows; then C clients
//! read their snapshots (`GET /api/workflows/{id}`) for a fixed number of requests, first on
//! the open server, then again once a token exists (each request carrying it, so each pays the
//! token lookup, the constant-time comparison and the workspace check of the id).

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use super::bench::{chain_spec, percentile, post_workflow, round3, spawn_server};
use crate::{
    auth::{self, Scope, TokenInfo},
    config::DEFAULT_CONFIG_TOML,
    store::Store,
};

/// Reads per round.
const READS: usize = 20_000;

/// One round of reads: requests per second and latency percentiles.
async fn round(
    url: &str,
    ids: &[String],
    clients: usize,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(READS)));
    let per_client = READS / clients;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (http, latencies) = (http.clone(), latencies.clone());
        let urls: Vec<String> = (0..per_client)
            .map(|i| format!("{url}/api/workflows/{}", ids[(c + i) % ids.len()]))
            .collect();
        let token = token.map(str::to_string);
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(urls.len());
            for u in urls {
                let mut req = http.get(&u);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let t0 = Instant::now();
                let resp = req.send().await?;
                ensure!(resp.status() == 200, "a read answered {}", resp.status());
                resp.bytes().await?;
                mine.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            latencies.lock().expect("not poisoned").extend(mine);
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().expect("not poisoned").clone();
    lat.sort_by(f64::total_cmp);
    Ok(json!({
        "reads": lat.len(),
        "reads_per_s": round3(lat.len() as f64 / wall),
        "latency_p50_ms": round3(percentile(&lat, 0.5)),
        "latency_p99_ms": round3(percentile(&lat, 0.99)),
    }))
}

/// Runs the workload: N workflows, C clients.
pub async fn run(dir: &Path, clients: usize, workflows: usize) -> anyhow::Result<Value> {
    ensure!(
        (1..=256).contains(&clients),
        "--clients must be between 1 and 256"
    );
    let db = dir.join("reads.db");
    let config = dir.join("cairn.toml");
    std::fs::write(
        &config,
        format!("{DEFAULT_CONFIG_TOML}\n[http]\nwrites_per_second = 0\n"),
    )?;
    let (child, url) = spawn_server(&db, Some(&config)).await?;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..workflows.max(1) {
        ids.push(post_workflow(&http, &url, &chain_spec(i, 1)).await?);
    }
    let open = round(&url, &ids, clients, None).await?;

    // A token in the server's database, as `cairn token create` makes one; the server
    // requires it within a second.
    let new = auth::mint()?;
    let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
    store
        .create_token(
            &TokenInfo {
                id: new.id.clone(),
                workspace: cairn::DEFAULT_WORKSPACE.into(),
                label: "bench".into(),
                scope: Scope::Read,
                created_at: chrono::Utc::now(),
                expires_at: None,
                revoked_at: None,
            },
            &new.hash,
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("{url}/api/workflows"))
        .send()
        .await?
        .status()
        != 401
    {
        ensure!(
            Instant::now() < deadline,
            "the server never asked for the token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let with_token = round(&url, &ids, clients, Some(&new.token))
        .await
        .context("reading with a token")?;
    drop(child);
    let p50 = |v: &Value| v["latency_p50_ms"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "engine": "cairn",
        "workload": "reads",
        "store": "sqlite",
        "clients": clients,
        "workflows": ids.len(),
        "open": open,
        "with_token": with_token,
        "token_check_p50_ms": round3(p50(&with_token) - p50(&open)),
    }))
}
