//! The `cairn` command line.

pub mod bench;
mod bench_reads;
mod bench_sse;
pub mod remote;
mod token;

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
    /// Start a workflow from a JSON or YAML spec; --follow shows it live until it ends.
    Run(remote::RunArgs),
    /// List workflows, newest first.
    Ls {
        /// Only this status: pending, running, paused, stalled, completed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// How many (1 to 200).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// A workflow's state: its steps, attempts, durations and errors.
    Status {
        /// The workflow's id.
        id: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// A workflow's events and log lines (one step's with STEP); --follow goes on live.
    Logs {
        /// The workflow's id.
        id: String,
        /// Only this step.
        step: Option<String>,
        /// Keep following until the workflow ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Run a workflow again after a failure, a cancel, a stall or a pause.
    Resume {
        /// The workflow's id.
        id: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Cancel a workflow: running steps stop, completed ones are kept.
    Cancel {
        /// The workflow's id.
        id: String,
        /// Why, recorded in its history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Run a step again (a failed one, with a fresh retry budget); --now skips a backoff wait.
    Retry {
        /// The workflow's id.
        id: String,
        /// The step.
        step: String,
        /// Start a step that waits for its backoff now.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Mark a step done without running it; later steps read --output as its output.
    Skip {
        /// The workflow's id.
        id: String,
        /// The step.
        step: String,
        /// What later steps read as its output.
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Delete finished workflows older than an age (their events, steps and outputs too).
    Prune {
        /// The age: 7d, 12h, 90m.
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Workflows per transaction.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
        batch: u32,
        #[command(flatten)]
        database: Database,
    },
    /// An MCP server on stdin/stdout for agents that spawn one, over a cairn server's API.
    Mcp {
        /// The cairn server's URL.
        #[arg(long, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:3000")]
        server: String,
        /// The token the tools call the server with.
        #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Make, list and revoke the tokens requests need (on the server's database).
    Token {
        #[command(subcommand)]
        action: token::TokenCommand,
    },
}

/// Parses the command line and runs the command; the exit code says how it went.
pub async fn main() -> ExitCode {
    use crate::client::ControlRequest as C;
    let cli = Cli::parse();
    let client = match cli.command {
        Command::Serve(args) => return done(serve(args).await),
        Command::Bench(args) => {
            // stdout is the result's JSON line alone, whatever is logged meanwhile.
            telemetry::init_stderr("warn");
            return done(bench::run(args).await);
        }
        Command::Mcp { server, token } => {
            // Only the protocol goes to stdout.
            telemetry::init_stderr("warn");
            return done(crate::mcp::serve_stdio(&server, token.as_deref()).await);
        }
        Command::Token { action } => {
            telemetry::init_stderr("warn");
            return done(token::run(action).await);
        }
        Command::Prune {
            older_than,
            dry_run,
            batch,
            database,
        } => {
            telemetry::init_stderr("warn");
            return done(prune(&database.url, older_than, batch, dry_run).await);
        }
        Command::Run(args) => remote::run(args).await,
        Command::Ls {
            status,
            limit,
            remote,
        } => remote::ls(status, limit, remote).await,
        Command::Status { id, remote } => remote::status(id, remote).await,
        Command::Logs {
            id,
            step,
            follow,
            remote,
        } => remote::logs(id, step, follow, remote).await,
        Command::Resume { id, remote } => remote::control(id, C::Resume, remote).await,
        Command::Cancel { id, reason, remote } => {
            remote::control(id, C::Cancel { reason }, remote).await
        }
        Command::Retry {
            id,
            step,
            now,
            remote,
        } => {
            let control = if now {
                C::RetryNow { step }
            } else {
                C::Retry { step }
            };
            remote::control(id, control, remote).await
        }
        Command::Skip {
            id,
            step,
            output,
            remote,
        } => remote::control(id, C::Skip { step, output }, remote).await,
    };
    match client {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("cairn: {}", failure.message);
            ExitCode::from(failure.exit)
        }
    }
}

/// The server's database, for the commands that work on it directly (no server needed).
#[derive(Debug, clap::Args)]
pub struct Database {
    /// The database, as for `serve`.
    #[arg(
        long = "database-url",
        env = "CAIRN_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://cairn.db"
    )]
    pub url: String,
}

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    crate::retention::parse_age(text).map_err(|e| format!("{e:#}"))
}

/// `cairn prune`: on the database directly, like `serve` (also while servers run on it).
async fn prune(
    database_url: &str,
    older_than: std::time::Duration,
    batch: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    let store = crate::store::Store::connect(database_url).await?;
    let pruned = crate::retention::prune_all(&store, older_than, batch, dry_run).await?;
    let n = pruned.workflows.len();
    let what = format!(
        "{n} finished workflow{} ({} event{})",
        if n == 1 { "" } else { "s" },
        pruned.events,
        if pruned.events == 1 { "" } else { "s" }
    );
    if dry_run {
        println!("would delete {what}");
        for id in &pruned.workflows {
            println!("  {id}");
        }
    } else {
        println!("deleted {what}");
    }
    Ok(())
}

fn done(result: anyhow::Result<()>) -> ExitCode {
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
