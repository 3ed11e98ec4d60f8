//! Runners: what executes one attempt of a step (DESIGN §3).
//!
//! The operator binds roles to runners in `cairn.toml`; a spec only names a role. Each runner
//! turns an [`Attempt`] into an output or an error, streams log lines as it goes, and stops
//! promptly when its cancellation token fires (a cancelled workflow, a timeout, shutdown).
//!
//! Whatever a step produces is read into bounded memory: an output holds at most the role's
//! `max_output_bytes` (then fails or is truncated, as `on_output_overflow` says), a log line
//! at most [`cairn::LOG_LINE_MAX_BYTES`], an attempt sends at most
//! `MAX_LOG_LINES_PER_ATTEMPT` + 1 log lines per stream, and a program's stderr is kept only
//! as a tail for the failure message.

use std::{collections::BTreeMap, process::Stdio, sync::Arc, time::Duration};

use cairn::{LOG_LINE_MAX_BYTES, LogStream};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::tick::MAX_LOG_LINES_PER_ATTEMPT;
use crate::config::{OnOverflow, OutputLimit, RoleConfig, RunnerConfig, TaskVia};

/// Everything a runner knows about the attempt it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// The workflow.
    pub workflow_id: String,
    /// The step.
    pub step_id: String,
    /// 1 for the first attempt (restarts at 1 after a manual "retry step").
    pub attempt: u32,
    /// Attempts the step has had in all, this one included (never restarts).
    #[serde(skip)]
    pub lifetime_attempt: u32,
    /// The step's role.
    pub role: String,
    /// The rendered task.
    pub task: String,
    /// The workflow's inputs.
    pub inputs: BTreeMap<String, String>,
    /// The session id of an earlier attempt, to resume an agent's conversation.
    pub session_id: Option<String>,
    /// The step's `params`.
    #[serde(skip)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A successful attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// The step's output, what `{STEP.output}` renders to.
    pub output: String,
    /// The agent's session id, if it reported one.
    pub session_id: Option<String>,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RunError {
    /// What went wrong, for people and for `non_retryable` matching.
    pub message: String,
    /// The runner knows that retrying cannot help (an HTTP 4xx, a refused configuration).
    pub is_final: bool,
}

impl RunError {
    fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            is_final: false,
        }
    }
    fn final_(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            is_final: true,
        }
    }
}

/// A line of output from a running attempt.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The workflow.
    pub workflow_id: String,
    /// The step.
    pub step_id: String,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// stdout or stderr.
    pub stream: LogStream,
    /// The line, without its newline.
    pub line: String,
}

/// Where runners send log lines. Bounded: when the engine cannot keep up, lines are dropped
/// (and counted) rather than stalling the step or growing memory without limit.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
}

impl LogSink {
    /// A sink and the receiver the engine drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    fn send(&self, a: &Attempt, stream: LogStream, line: String) {
        let _ = self.tx.try_send(LogLine {
            workflow_id: a.workflow_id.clone(),
            step_id: a.step_id.clone(),
            attempt: a.attempt,
            stream,
            line,
        });
    }
}

/// A runner, built once from the configuration.
#[derive(Debug, Clone)]
pub enum Runner {
    /// The built-in stand-in agent, with its role's output limit.
    Simulate(OutputLimit),
    /// A program.
    Command(Arc<CommandSpec>),
    /// A web hook.
    Http(Arc<HttpSpec>),
}

/// A configured command runner.
#[derive(Debug)]
pub struct CommandSpec {
    program: String,
    args: Vec<String>,
    resume_args: Vec<String>,
    task_via: TaskVia,
    env: BTreeMap<String, String>,
    limit: OutputLimit,
}

/// A configured HTTP runner.
#[derive(Debug)]
pub struct HttpSpec {
    url: String,
    headers: BTreeMap<String, String>,
    client: reqwest::Client,
    limit: OutputLimit,
}

impl Runner {
    /// Builds the runner a role's configuration describes.
    pub fn from_config(config: &RoleConfig) -> Self {
        let limit = config.output;
        match &config.runner {
            RunnerConfig::Simulate => Self::Simulate(limit),
            RunnerConfig::Command {
                program,
                args,
                resume_args,
                task_via,
                env,
            } => Self::Command(Arc::new(CommandSpec {
                program: program.clone(),
                args: args.clone(),
                resume_args: resume_args.clone(),
                task_via: *task_via,
                env: env.clone(),
                limit,
            })),
            RunnerConfig::Http { url, headers } => Self::Http(Arc::new(HttpSpec {
                url: url.clone(),
                headers: headers.clone(),
                client: reqwest::Client::new(),
                limit,
            })),
        }
    }

    /// Runs one attempt until it ends or `cancel` fires (then the error says so).
    pub async fn run(
        &self,
        attempt: &Attempt,
        logs: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, RunError> {
        match self {
            Self::Simulate(limit) => simulate(limit, attempt, logs, cancel).await,
            Self::Command(spec) => run_command(spec, attempt, logs, cancel).await,
            Self::Http(spec) => run_http(spec, attempt, cancel).await,
        }
    }
}

mod command;
mod http;
mod limits;
mod simulate;
#[cfg(test)]
mod tests;

use command::*;
use http::*;
use limits::*;
use simulate::*;
