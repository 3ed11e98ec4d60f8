//! Building the application from a [`Config`] and running it until told to stop.
//!
//! Split in two so tests can bind port 0, read the real address, then run:
//! `Application::build(config).await?` → `app.addr()` → `app.run_until_stopped(token)`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use leptos::prelude::LeptosOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    engine::Engine,
    http::{self, AppState},
    live::StreamLimits,
    store::Store,
};

/// The output name cargo-leptos gives the browser bundle (`/pkg/cairn.js`, `.wasm`, `.css`).
const BUNDLE_NAME: &str = "cairn";

/// A bound, ready-to-serve cairn server.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    engine: Engine,
}

impl Application {
    /// Opens and migrates the store, binds the address; does not serve yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        raise_open_files_limit();
        crate::metrics::install();
        let store = Store::connect(&config.database_url).await?;
        // Without tokens, anyone who reaches the port may do anything: only this machine.
        if !config.addr.ip().is_loopback() && !store.has_tokens().await? {
            anyhow::bail!(
                "refusing to serve on {} without tokens: anyone who can reach it could start, \
                 read and cancel every workflow. Create a token first \
                 (`cairn token create --workspace NAME`, with the same --database-url), \
                 or serve on a loopback address such as 127.0.0.1",
                config.addr
            );
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;

        if !config.site_root.join("pkg").is_dir() {
            tracing::warn!(
                site_root = %config.site_root.display(),
                "web assets not found: the page will render but not hydrate; \
                 build them with `cargo leptos build --release` or set CAIRN_SITE_ROOT"
            );
        }
        let leptos_options = LeptosOptions::builder()
            .output_name(BUNDLE_NAME)
            .site_root(config.site_root.to_string_lossy().as_ref())
            .site_pkg_dir("pkg")
            .site_addr(addr)
            .build();

        let instance: Arc<str> = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
        .into();
        let (engine, engine_handle) = Engine::new(
            store.clone(),
            &config.engine,
            instance.clone(),
            config.engine.settings.clone(),
        );
        let sse = &config.engine.sse;
        let streams = StreamLimits::new(sse.max_streams, sse.max_streams_per_client);
        let state = AppState {
            leptos_options,
            auth: crate::http::auth::Auth::new(store.clone(), config.engine.sse.heartbeat),
            store,
            engine: engine_handle,
            streams,
            closing: CancellationToken::new(),
            instance,
            config: Arc::new(config),
        };
        Ok(Self {
            listener,
            addr,
            state,
            engine,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs the engine and serves HTTP until `shutdown` is cancelled, then lets in-flight
    /// requests finish and stops the engine (attempts in flight are left to be resumed).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Every engine log line names the instance: with several sharing a database, which
        // one took over what is in the logs.
        let span = tracing::info_span!("engine", instance = %self.state.instance);
        let engine = tokio::spawn(tracing::Instrument::instrument(
            self.engine.run(shutdown.clone()),
            span,
        ));
        tracing::info!(
            addr = %self.addr,
            store = self.state.store.kind(),
            instance = %self.state.instance,
            "cairn is listening on http://{}",
            self.addr
        );
        if let Some(retention) = self.state.config.engine.retention.clone() {
            tokio::spawn(crate::retention::run(
                self.state.store.clone(),
                retention,
                shutdown.clone(),
            ));
        }
        let closing = self.state.closing.clone();
        let router = http::router(self.state);
        // Connect info: stream caps are per client address.
        axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                // End live streams so in-flight requests can finish; clients reconnect
                // (to this server's successor) with their Last-Event-ID.
                closing.cancel();
            }
        })
        .await
        .context("serving HTTP")?;
        // HTTP can also end on its own (an accept error): stop the engine with it.
        shutdown.cancel();
        engine.await.context("the engine task panicked")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Every SSE client holds a socket: lift the soft limit on open files to the hard one, as
/// servers that hold many connections do, so thousands of streams do not fail at 1024.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open-files limit from {soft}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}
