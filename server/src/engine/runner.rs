//! Runners: what executes one attempt of a step (DESIGN §3).
//!
//! The operator binds roles to runners in `cairn.toml`; a spec only names a role. Each runner
//! turns an [`Attempt`] into an output or an error, streams log lines as it goes, and stops
//! promptly when its cancellation token fires (a cancelled workflow, a timeout, shutdown).

use std::{collections::BTreeMap, process::Stdio, sync::Arc, time::Duration};

use cairn::LogStream;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    process::Command,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::config::{RunnerConfig, TaskVia};

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
    /// The built-in stand-in agent.
    Simulate,
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
}

/// A configured HTTP runner.
#[derive(Debug)]
pub struct HttpSpec {
    url: String,
    headers: BTreeMap<String, String>,
    client: reqwest::Client,
}

impl Runner {
    /// Builds the runner a role's configuration describes.
    pub fn from_config(config: &RunnerConfig) -> Self {
        match config {
            RunnerConfig::Simulate => Self::Simulate,
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
            })),
            RunnerConfig::Http { url, headers } => Self::Http(Arc::new(HttpSpec {
                url: url.clone(),
                headers: headers.clone(),
                client: reqwest::Client::new(),
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
            Self::Simulate => simulate(attempt, logs, cancel).await,
            Self::Command(spec) => run_command(spec, attempt, logs, cancel).await,
            Self::Http(spec) => run_http(spec, attempt, cancel).await,
        }
    }
}

// ---- simulate ---------------------------------------------------------------------------

async fn simulate(
    a: &Attempt,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<RunOutput, RunError> {
    let param_u64 = |k: &str| a.params.get(k).and_then(|v| v.as_u64());
    let duration = Duration::from_millis(param_u64("duration_ms").unwrap_or(300));
    let fail_attempts = param_u64("fail_attempts").unwrap_or(0);
    let session_id = a
        .session_id
        .clone()
        .unwrap_or_else(|| format!("sim-{}-{}", a.workflow_id, a.step_id));
    if param_u64("log_lines").is_some_and(|n| n > 0) {
        for i in 1..=param_u64("log_lines").unwrap_or(0).min(2000) {
            logs.send(a, LogStream::Stdout, format!("{} line {i}", a.step_id));
        }
    }
    if !duration.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = cancel.cancelled() => return Err(RunError::retryable("cancelled")),
        }
    }
    // "Fails its first N attempts" counts every attempt the step ever had, so a manual
    // retry of a step that failed for good can succeed.
    if u64::from(a.lifetime_attempt.max(a.attempt)) <= fail_attempts {
        let error = a
            .params
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("simulated failure");
        return Err(RunError::retryable(error));
    }
    Ok(RunOutput {
        output: a.task.clone(),
        session_id: Some(session_id),
    })
}

// ---- command ------------------------------------------------------------------------------

/// How much of stderr a failure message keeps.
const STDERR_TAIL_BYTES: usize = 2000;

fn fill(template: &str, a: &Attempt) -> String {
    template
        .replace("{task}", &a.task)
        .replace("{session_id}", a.session_id.as_deref().unwrap_or(""))
        .replace("{workflow_id}", &a.workflow_id)
        .replace("{step_id}", &a.step_id)
}

async fn run_command(
    spec: &CommandSpec,
    a: &Attempt,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<RunOutput, RunError> {
    let mut args: Vec<String> = spec.args.iter().map(|t| fill(t, a)).collect();
    if a.session_id.is_some() {
        args.extend(spec.resume_args.iter().map(|t| fill(t, a)));
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&args)
        .envs(&spec.env)
        .env("CAIRN_WORKFLOW_ID", &a.workflow_id)
        .env("CAIRN_STEP_ID", &a.step_id)
        .env("CAIRN_ATTEMPT", a.attempt.to_string())
        .stdin(if spec.task_via == TaskVia::Stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so cancelling kills the program's children too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| RunError::final_(format!("cannot start {:?}: {e}", spec.program)))?;
    let pgid = child.id();

    if let Some(mut stdin) = child.stdin.take() {
        let task = a.task.clone();
        // A program that does not read stdin must not block us: write in the background.
        tokio::spawn(async move {
            let _ = stdin.write_all(task.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_task = tokio::spawn(collect_lines(
        stdout,
        a.clone(),
        logs.clone(),
        LogStream::Stdout,
    ));
    let err_task = tokio::spawn(collect_lines(
        stderr,
        a.clone(),
        logs.clone(),
        LogStream::Stderr,
    ));

    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| RunError::retryable(format!("waiting for the program: {e}")))?,
        _ = cancel.cancelled() => {
            kill_group(pgid);
            let _ = child.wait().await;
            return Err(RunError::retryable("cancelled"));
        }
    };
    // The group may have children still holding the pipes; they go with the parent.
    kill_group(pgid);
    let stdout = out_task.await.unwrap_or_default();
    let stderr = err_task.await.unwrap_or_default();

    if !status.success() {
        let tail = tail(&stderr, STDERR_TAIL_BYTES);
        let what = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        return Err(RunError::retryable(if tail.is_empty() {
            what
        } else {
            format!("{what}: {tail}")
        }));
    }
    Ok(parse_output(&stdout))
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn collect_lines(
    reader: impl AsyncRead + Unpin,
    a: Attempt,
    logs: LogSink,
    stream: LogStream,
) -> String {
    let mut all = String::new();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.send(&a, stream, line.clone());
        all.push_str(&line);
        all.push('\n');
    }
    all
}

fn tail(s: &str, max: usize) -> &str {
    let s = s.trim_end();
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// What `claude -p --output-format json` prints: `result` is the answer, `session_id` the
/// conversation to resume. Anything else on stdout is the output as it is.
fn parse_output(stdout: &str) -> RunOutput {
    #[derive(Deserialize)]
    struct AgentJson {
        result: Option<serde_json::Value>,
        session_id: Option<String>,
    }
    let trimmed = stdout.trim();
    if trimmed.starts_with('{')
        && let Ok(j) = serde_json::from_str::<AgentJson>(trimmed)
        && (j.result.is_some() || j.session_id.is_some())
    {
        let output = match j.result {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => trimmed.to_string(),
        };
        return RunOutput {
            output,
            session_id: j.session_id,
        };
    }
    RunOutput {
        output: trimmed.to_string(),
        session_id: None,
    }
}

// ---- http ---------------------------------------------------------------------------------

async fn run_http(
    spec: &HttpSpec,
    a: &Attempt,
    cancel: &CancellationToken,
) -> Result<RunOutput, RunError> {
    #[derive(Deserialize)]
    struct Answer {
        output: serde_json::Value,
        session_id: Option<String>,
    }
    let mut req = spec.client.post(&spec.url).json(a);
    for (k, v) in &spec.headers {
        req = req.header(k, v);
    }
    let resp = tokio::select! {
        r = req.send() => r.map_err(|e| RunError::retryable(format!("calling {}: {e}", spec.url)))?,
        _ = cancel.cancelled() => return Err(RunError::retryable("cancelled")),
    };
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_client_error() {
        return Err(RunError::final_(format!(
            "{} answered {status}: {}",
            spec.url,
            tail(&body, 500)
        )));
    }
    if !status.is_success() {
        return Err(RunError::retryable(format!(
            "{} answered {status}: {}",
            spec.url,
            tail(&body, 500)
        )));
    }
    let answer: Answer = serde_json::from_str(&body).map_err(|e| {
        RunError::retryable(format!("{} answered with unexpected JSON: {e}", spec.url))
    })?;
    let output = match answer.output {
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    };
    Ok(RunOutput {
        output,
        session_id: answer.session_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(task: &str) -> Attempt {
        Attempt {
            workflow_id: "wf".into(),
            step_id: "s".into(),
            attempt: 1,
            lifetime_attempt: 1,
            role: "r".into(),
            task: task.into(),
            inputs: BTreeMap::new(),
            session_id: None,
            params: serde_json::Map::new(),
        }
    }

    fn command(program: &str, args: &[&str]) -> Runner {
        Runner::from_config(&RunnerConfig::Command {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            resume_args: vec!["--resume".into(), "{session_id}".into()],
            task_via: TaskVia::Stdin,
            env: BTreeMap::new(),
        })
    }

    #[test]
    fn agent_json_gives_the_result_and_the_session_id() {
        let out = parse_output(r#"{"type":"result","result":"done","session_id":"abc"}"#);
        assert_eq!(out.output, "done");
        assert_eq!(out.session_id.as_deref(), Some("abc"));
        assert_eq!(parse_output("plain text\n").output, "plain text");
    }

    #[tokio::test]
    async fn a_command_reads_the_task_on_stdin_and_streams_its_lines() {
        let (sink, mut rx) = LogSink::channel(16);
        let out = command("sh", &["-c", "cat; echo; echo warn >&2"])
            .run(&attempt("hello"), &sink, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.output, "hello");
        let mut lines = vec![];
        while let Ok(l) = rx.try_recv() {
            lines.push((l.stream, l.line));
        }
        assert!(
            lines.contains(&(LogStream::Stderr, "warn".into())),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_exit_status_and_stderr_tail() {
        let (sink, _rx) = LogSink::channel(16);
        let err = command("sh", &["-c", "echo boom >&2; exit 3"])
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.message, "exit status 3: boom");
        assert!(!err.is_final);
    }

    #[tokio::test]
    async fn cancelling_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let (sink, _rx) = LogSink::channel(16);
        let cancel = CancellationToken::new();
        let runner = command("sh", &["-c", &script]);
        let a = attempt("x");
        let run = runner.run(&a, &sink, &cancel);
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let err = run.await.unwrap_err();
        assert_eq!(err.message, "cancelled");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "a child of the cancelled program kept running"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_final_error() {
        let (sink, _rx) = LogSink::channel(1);
        let err = command("/nonexistent/agent", &[])
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.is_final, "{err:?}");
    }

    #[tokio::test]
    async fn resume_args_are_added_when_there_is_a_session_id() {
        let (sink, _rx) = LogSink::channel(16);
        let mut a = attempt("x");
        a.session_id = Some("s-1".into());
        let out = command("sh", &["-c", "echo \"$@\"", "sh"])
            .run(&a, &sink, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.output, "--resume s-1");
    }

    #[tokio::test]
    async fn simulate_fails_its_first_attempts_then_answers_with_the_task() {
        let (sink, _rx) = LogSink::channel(1);
        let mut a = attempt("Design login");
        a.params.insert("duration_ms".into(), 0.into());
        a.params.insert("fail_attempts".into(), 1.into());
        a.params.insert("error".into(), "flaky".into());
        let c = CancellationToken::new();
        let err = Runner::Simulate.run(&a, &sink, &c).await.unwrap_err();
        assert_eq!(err.message, "flaky");
        a.attempt = 2;
        a.lifetime_attempt = 2;
        let out = Runner::Simulate.run(&a, &sink, &c).await.unwrap();
        assert_eq!(out.output, "Design login");
        assert_eq!(out.session_id.as_deref(), Some("sim-wf-s"));
    }
}
