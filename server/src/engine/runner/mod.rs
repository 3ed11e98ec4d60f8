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
    /// Values masked in every line (see [`Secrets`]).
    secrets: Secrets,
}

impl LogSink {
    /// A sink and the receiver the engine drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx,
                secrets: Secrets::default(),
            },
            rx,
        )
    }

    /// The same sink, masking `secrets` in every line.
    fn masking(&self, secrets: &Secrets) -> Self {
        Self {
            tx: self.tx.clone(),
            secrets: secrets.clone(),
        }
    }

    fn send(&self, a: &Attempt, stream: LogStream, line: String) {
        let _ = self.tx.try_send(LogLine {
            workflow_id: a.workflow_id.clone(),
            step_id: a.step_id.clone(),
            attempt: a.attempt,
            stream,
            line: self.secrets.mask(line),
        });
    }
}

/// What a role's runner takes from the server's environment (`${NAME}` in its `env` or
/// `headers`): never shown. Each value is replaced by [`Secrets::MASK`] in the attempt's log
/// lines, output, session id and error before anything is stored, sent or logged, and the
/// runner's `Debug` prints only the names.
#[derive(Clone, Default)]
pub struct Secrets(Arc<Vec<String>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} masked)", self.0.len())
    }
}

impl Secrets {
    /// What a secret's value becomes.
    pub const MASK: &'static str = "[masked]";
    /// Values shorter than this are not masked: masking every `1` or `on` in an output would
    /// garble it without hiding anything worth hiding.
    pub const MIN_LEN: usize = 4;

    /// `text` with every secret value masked.
    pub fn mask(&self, text: String) -> String {
        let mut text = text;
        for secret in self.0.iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), Self::MASK);
            }
        }
        text
    }

    fn mask_result(&self, r: Result<RunOutput, RunError>) -> Result<RunOutput, RunError> {
        if self.0.is_empty() {
            return r;
        }
        match r {
            Ok(out) => Ok(RunOutput {
                output: self.mask(out.output),
                session_id: out.session_id.map(|s| self.mask(s)),
            }),
            Err(e) => Err(RunError {
                message: self.mask(e.message),
                is_final: e.is_final,
            }),
        }
    }
}

/// Replaces each `${NAME}` in `value` with the server's environment variable `NAME`, adding
/// what it put in to `secrets`. The configuration was checked at start-up (every named
/// variable is set), so a variable that vanished since becomes empty.
fn expand(value: &str, secrets: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = &rest[start + 2..start + 2 + len];
        let v = std::env::var(name).unwrap_or_default();
        if v.len() >= Secrets::MIN_LEN {
            secrets.push(v.clone());
        }
        out.push_str(&v);
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
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
pub struct CommandSpec {
    program: String,
    args: Vec<String>,
    resume_args: Vec<String>,
    task_via: TaskVia,
    env: BTreeMap<String, String>,
    secrets: Secrets,
    limit: OutputLimit,
}

impl std::fmt::Debug for CommandSpec {
    // The environment's values may be secrets: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A configured HTTP runner.
pub struct HttpSpec {
    url: String,
    headers: BTreeMap<String, String>,
    secrets: Secrets,
    client: reqwest::Client,
    limit: OutputLimit,
}

impl std::fmt::Debug for HttpSpec {
    // Header values may be secrets: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSpec")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
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
            } => {
                let mut secrets = Vec::new();
                let env = env
                    .iter()
                    .map(|(k, v)| (k.clone(), expand(v, &mut secrets)))
                    .collect();
                Self::Command(Arc::new(CommandSpec {
                    program: program.clone(),
                    args: args.clone(),
                    resume_args: resume_args.clone(),
                    task_via: *task_via,
                    env,
                    secrets: Secrets(Arc::new(secrets)),
                    limit,
                }))
            }
            RunnerConfig::Http { url, headers } => {
                let mut secrets = Vec::new();
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.clone(), expand(v, &mut secrets)))
                    .collect();
                Self::Http(Arc::new(HttpSpec {
                    url: url.clone(),
                    headers,
                    secrets: Secrets(Arc::new(secrets)),
                    client: reqwest::Client::new(),
                    limit,
                }))
            }
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
            Self::Command(spec) => {
                let logs = logs.masking(&spec.secrets);
                let result = run_command(spec, attempt, &logs, cancel).await;
                spec.secrets.mask_result(result)
            }
            Self::Http(spec) => spec
                .secrets
                .mask_result(run_http(spec, attempt, cancel).await),
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
