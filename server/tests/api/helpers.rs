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
    let dir = tempfile::tempdir().expect("temp dir");
    let db_path = dir.path().join("cairn.db");
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", db_path.display()),
        site_root: dir.path().join("site"),
        engine: EngineConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap(),
    };
    let app = Application::build(config).await.expect("building the app");
    let address = format!("http://{}", app.addr());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        db_path,
        client: reqwest::Client::new(),
        shutdown,
        handle: Some(handle),
        _dir: dir,
    }
}
