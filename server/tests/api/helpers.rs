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
