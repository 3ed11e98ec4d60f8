//! The `cairn` command line.

pub mod bench;
mod bench_sse;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, ServeArgs},
    startup::Application,
    telemetry,
};

/// cairn: durable, resumable workflows with a live browser monitor.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: API, engine and web monitor.
    Serve(ServeArgs),
    /// Measure the engine on a workload; prints one JSON line.
    Bench(bench::BenchArgs),
}

/// Parses the command line and runs the command; the exit code says how it went.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Bench(args) => {
            telemetry::init("warn");
            bench::run(args).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(&args.log);
    let config = Config::load(&args)?;
    // Register the signal handlers before anything can say the server is up: a SIGTERM
    // that arrives before registration would kill the process ungracefully.
    let signals = Signals::register()?;
    let app = Application::build(config).await?;
    let shutdown = CancellationToken::new();
    let on_signal = tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    let result = app.run_until_stopped(shutdown).await;
    on_signal.abort();
    result
}

/// Ctrl-C (SIGINT) and SIGTERM (what `kill`, systemd and container runtimes send).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn register() -> anyhow::Result<Self> {
        use anyhow::Context;
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    #[cfg(not(unix))]
    fn register() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Cancels `token` when the first signal arrives.
    async fn cancel_on_first(mut self, token: CancellationToken) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down: finishing in-flight requests");
        token.cancel();
    }
}
