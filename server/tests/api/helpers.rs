//! `spawn_app()`: one fresh server per test, its own port and its own database file.

use server::{
    config::{Config, DEFAULT_CONFIG_TOML, EngineConfig},
    startup::Application,
};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    /// The SQLite file this server uses.
    pub db_path: std::path::PathBuf,
    /// An HTTP client.
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    toml: String,
    _dir: TempDir,
}

impl TestApp {
    /// `GET {address}{path}`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request failed")
    }

    /// `POST {address}{path}` with a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    /// Starts a workflow (expecting a 202) and returns its id.
    pub async fn start(&self, spec: serde_json::Value) -> String {
        let resp = self.post("/api/workflows", &spec).await;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// A workflow's event log, as `GET .../history` lists it.
    pub async fn history(&self, id: &str) -> Vec<serde_json::Value> {
        let h: serde_json::Value = self
            .get(&format!("/api/workflows/{id}/history"))
            .await
            .json()
            .await
            .unwrap();
        h["events"].as_array().unwrap().clone()
    }

    /// Stops the server and starts a new one on the same database (a new port, a new
    /// instance id), as after a restart.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("server task panicked").expect("clean stop");
        }
        let (address, shutdown, handle) = start(&self._dir, &self.toml).await;
        self.address = address;
        self.shutdown = shutdown;
        self.handle = Some(handle);
    }

    /// Stops the server gracefully and returns what `run_until_stopped` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle
            .take()
            .expect("running")
            .await
            .expect("server task panicked")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a server on a free port with a new SQLite file in a temporary folder.
pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Like [`spawn_app`], with extra `cairn.toml` text (e.g. an `[sse]` table) added to the
/// shipped configuration.
pub async fn spawn_app_with(extra_toml: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!("{DEFAULT_CONFIG_TOML}\n{extra_toml}");
    let (address, shutdown, handle) = start(&dir, &toml).await;
    TestApp {
        address,
        db_path: dir.path().join("cairn.db"),
        client: reqwest::Client::new(),
        shutdown,
        handle: Some(handle),
        toml,
        _dir: dir,
    }
}

async fn start(
    dir: &TempDir,
    toml: &str,
) -> (String, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("cairn.db").display()),
        site_root: dir.path().join("site"),
        engine: EngineConfig::from_toml(toml).unwrap(),
    };
    let app = Application::build(config).await.expect("building the app");
    let address = format!("http://{}", app.addr());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (address, shutdown, handle)
}

/// Writes `cairn.toml` in `dir`: the shipped configuration with `extra` added (e.g. an
/// `[engine]` table), for [`serve_binary_on`].
pub fn config_file(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("cairn.toml");
    std::fs::write(&path, format!("{DEFAULT_CONFIG_TOML}\n{extra}")).expect("writing cairn.toml");
    path
}

/// Starts the real `cairn` binary on a free port with the SQLite file `db`; returns the
/// child (kill it to stop) and its `http://127.0.0.1:PORT`, read from its start-up log line
/// with a deadline rather than a sleep.
pub fn serve_binary(db: &std::path::Path) -> (std::process::Child, String) {
    serve_binary_on(&format!("sqlite://{}", db.display()), None)
}

/// Like [`serve_binary`], on any database URL and optionally with a `cairn.toml` of its own.
pub fn serve_binary_on(
    database_url: &str,
    config: Option<&std::path::Path>,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--database-url",
        database_url,
    ]);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting cairn");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on ".len()..];
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("cairn never said where it listens");
    (child, url)
}

/// `GET {base}{path}` on a server started with [`serve_binary`], as JSON.
pub async fn get_json(client: &reqwest::Client, base: &str, path: &str) -> serde_json::Value {
    client
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Starts a workflow on the server at `base` (expecting a 202) and returns its id.
pub async fn start_on(client: &reqwest::Client, base: &str, spec: &serde_json::Value) -> String {
    let resp = client
        .post(format!("{base}/api/workflows"))
        .json(spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// Waits until the workflow `id` on the server at `base` has completed, or panics at
/// `deadline` with its last state.
pub async fn wait_completed(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    deadline: std::time::Instant,
) {
    loop {
        let s = get_json(client, base, &format!("/api/workflows/{id}")).await;
        if s["status"] == "completed" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never completed: {s:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What a run of the `cairn` binary printed, and how it exited.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `cairn` binary with `args` and the environment `env` (no `CAIRN_TOKEN` from the
/// test's own environment), and waits for it.
pub async fn cairn(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("CAIRN_TOKEN")
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("running cairn");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
