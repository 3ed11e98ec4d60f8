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

// ---- output limits ----------------------------------------------------------------------

/// The final error of an attempt whose output went past `max_output_bytes` with
/// `on_output_overflow = "fail"`: producing as much again on a retry cannot help.
fn overflow_error(limit: &OutputLimit) -> RunError {
    RunError::final_(format!(
        "output exceeded {} (max_output_bytes)",
        human(limit.max_bytes as u64)
    ))
}

/// The line appended to an output cut at `max_output_bytes`: `kept` bytes of `total`.
fn truncation_marker(kept: usize, total: u64) -> String {
    format!(
        "\n[cairn] output truncated: kept {} of {}",
        human(kept as u64),
        human(total)
    )
}

/// Applies `limit` to an output already in memory (simulate, http): within the limit it is
/// kept as it is; past it, the attempt fails for good or the output is cut at a character
/// boundary and marked.
fn bound_output(mut output: String, limit: &OutputLimit) -> Result<String, RunError> {
    if output.len() <= limit.max_bytes {
        return Ok(output);
    }
    match limit.on_overflow {
        OnOverflow::Fail => Err(overflow_error(limit)),
        OnOverflow::Truncate => {
            let total = output.len() as u64;
            output.truncate(output.floor_char_boundary(limit.max_bytes));
            let marker = truncation_marker(output.len(), total);
            output.push_str(&marker);
            Ok(output)
        }
    }
}

/// `bytes` without a character cut in two at its end (when they are the head of a longer
/// text), so that decoding does not turn the half character into U+FFFD.
fn without_partial_char(bytes: &[u8]) -> &[u8] {
    let from = bytes.len().saturating_sub(4);
    let Some(start) = bytes[from..].iter().rposition(|b| b & 0xC0 != 0x80) else {
        return bytes;
    };
    let start = from + start;
    match std::str::from_utf8(&bytes[start..]) {
        Err(e) if e.error_len().is_none() => &bytes[..start],
        _ => bytes,
    }
}

/// Decodes what a program printed, lossily, without copying it when it is valid UTF-8.
fn decode(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Decodes the first bytes of a longer text (lossily, as everything a program prints), at most
/// `max` bytes of it, ending at a character boundary.
fn decode_head(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(without_partial_char(bytes)).into_owned();
    text.truncate(text.floor_char_boundary(max));
    text
}

/// A byte count for people: "512 bytes", "64 KiB", "16 MiB", "286.1 MiB".
fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    match bytes {
        1 => "1 byte".to_string(),
        n => format!("{n} bytes"),
    }
}

// ---- simulate ---------------------------------------------------------------------------

async fn simulate(
    limit: &OutputLimit,
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
    let output = match param_u64("output_bytes") {
        None => bound_output(a.task.clone(), limit)?,
        Some(n) => match usize::try_from(n).ok().filter(|&n| n <= limit.max_bytes) {
            Some(n) => repeat_to(&a.task, n),
            // Never built in full: only what the limit keeps.
            None => match limit.on_overflow {
                OnOverflow::Fail => return Err(overflow_error(limit)),
                OnOverflow::Truncate => {
                    let mut output = repeat_to(&a.task, limit.max_bytes);
                    output.push_str(&truncation_marker(limit.max_bytes, n));
                    output
                }
            },
        },
    };
    Ok(RunOutput {
        output,
        session_id: Some(session_id),
    })
}

/// Exactly `len` bytes of `task` repeated (`x` when the task is empty); the last copy is cut
/// at a character boundary and padded with `x` if a character would be split.
fn repeat_to(task: &str, len: usize) -> String {
    let unit = if task.is_empty() { "x" } else { task };
    let mut out = String::with_capacity(len);
    out.push_str(&unit.repeat(len / unit.len()));
    let rest = len - out.len();
    out.push_str(&unit[..unit.floor_char_boundary(rest)]);
    let padding = len - out.len();
    out.extend(std::iter::repeat_n('x', padding));
    out
}

// ---- command ------------------------------------------------------------------------------

/// How much of stderr a failure message keeps.
const STDERR_TAIL_BYTES: usize = 2000;

/// The most a program's stdout or stderr is read at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Log lines sent per stream and attempt: the engine records `MAX_LOG_LINES_PER_ATTEMPT` and
/// turns the next one into its notice that the rest was not recorded.
const LOG_LINES_SENT: u32 = MAX_LOG_LINES_PER_ATTEMPT + 1;

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
    // Fired by the stdout reader when the output goes past the limit and the policy is to fail.
    let overflow = CancellationToken::new();
    let out_task = tokio::spawn(read_stdout(
        stdout,
        LineLog::new(a, logs, LogStream::Stdout),
        spec.limit,
        overflow.clone(),
    ));
    let err_task = tokio::spawn(read_stderr(
        stderr,
        LineLog::new(a, logs, LogStream::Stderr),
    ));

    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| RunError::retryable(format!("waiting for the program: {e}")))?,
        _ = overflow.cancelled() => {
            kill_group(pgid);
            let _ = child.wait().await;
            return Err(overflow_error(&spec.limit));
        }
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

    let over = stdout.total > stdout.kept.len() as u64;
    if over && spec.limit.on_overflow == OnOverflow::Fail {
        return Err(overflow_error(&spec.limit));
    }
    if !status.success() {
        let tail = stderr.text();
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
    if !over {
        return Ok(parse_output(decode(stdout.kept)));
    }
    let mut kept = stdout.kept;
    let cut = without_partial_char(&kept).len();
    kept.truncate(cut);
    let mut text = decode(kept);
    text.truncate(text.floor_char_boundary(spec.limit.max_bytes));
    let kept_bytes = text.len();
    let mut out = parse_output(text);
    out.output
        .push_str(&truncation_marker(kept_bytes, stdout.total));
    Ok(out)
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Turns what a program prints into log lines while holding at most one line, cut: a line is
/// split at `\n` (a `\r` before it dropped), cut at [`LOG_LINE_MAX_BYTES`] at a character
/// boundary (the rest of it skipped, not buffered), and after [`LOG_LINES_SENT`] lines
/// nothing more is sent.
struct LineLog {
    attempt: Attempt,
    logs: LogSink,
    stream: LogStream,
    /// The line being read, at most [`LOG_LINE_MAX_BYTES`].
    line: Vec<u8>,
    /// The line being read was longer than what `line` holds.
    cut: bool,
    sent: u32,
}

impl LineLog {
    fn new(a: &Attempt, logs: &LogSink, stream: LogStream) -> Self {
        Self {
            attempt: a.clone(),
            logs: logs.clone(),
            stream,
            line: Vec::new(),
            cut: false,
            sent: 0,
        }
    }

    /// Takes the next bytes the stream produced.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.sent < LOG_LINES_SENT {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..newline.unwrap_or(bytes.len())];
            let room = LOG_LINE_MAX_BYTES - self.line.len();
            if part.len() > room {
                self.cut = true;
            }
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let Some(i) = newline else { break };
            self.send_line();
            bytes = &bytes[i + 1..];
        }
    }

    /// The stream ended: a last line without its newline is a line too.
    fn finish(mut self) {
        if !self.line.is_empty() && self.sent < LOG_LINES_SENT {
            self.send_line();
        }
    }

    fn send_line(&mut self) {
        let bytes = if self.cut {
            without_partial_char(&self.line)
        } else {
            self.line.strip_suffix(b"\r").unwrap_or(&self.line)
        };
        let mut line = String::from_utf8_lossy(bytes).into_owned();
        line.truncate(line.floor_char_boundary(LOG_LINE_MAX_BYTES));
        self.logs.send(&self.attempt, self.stream, line);
        self.sent += 1;
        self.line.clear();
        self.cut = false;
    }
}

/// What a program printed on stdout: the first `max_output_bytes` bytes at most, and how many
/// there were in all.
#[derive(Debug, Default)]
struct Collected {
    kept: Vec<u8>,
    total: u64,
}

/// Reads stdout to its end, logging its lines and keeping at most `limit.max_bytes` of it.
/// Past the limit it fires `overflow` and stops reading when the attempt is to fail; when it
/// is to be truncated, it reads on (counting, dropping) so the program can finish.
async fn read_stdout(
    mut reader: impl AsyncRead + Unpin,
    mut log: LineLog,
    limit: OutputLimit,
    overflow: CancellationToken,
) -> Collected {
    let mut out = Collected::default();
    let mut buf = vec![0; READ_CHUNK_BYTES];
    loop {
        let chunk = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => &buf[..n],
        };
        log.feed(chunk);
        out.total += chunk.len() as u64;
        let room = limit.max_bytes - out.kept.len();
        if chunk.len() > room && limit.on_overflow == OnOverflow::Fail {
            overflow.cancel();
            return out;
        }
        let take = chunk.len().min(room);
        if take > 0 {
            // Grow by doubling as usual, but never past the limit.
            let want = (out.kept.len() + take)
                .max(out.kept.capacity() * 2)
                .min(limit.max_bytes);
            out.kept.reserve_exact(want - out.kept.len());
            out.kept.extend_from_slice(&chunk[..take]);
        }
    }
    log.finish();
    out
}

/// The last bytes of a stream, for a failure message.
#[derive(Debug, Default)]
struct Tail {
    /// At most twice [`STDERR_TAIL_BYTES`], so trailing blank lines do not crowd out the text.
    bytes: Vec<u8>,
    /// Earlier bytes were dropped (the first may be the middle of a character).
    cut: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        let keep = 2 * STDERR_TAIL_BYTES;
        if chunk.len() >= keep {
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[chunk.len() - keep..]);
            self.cut = true;
            return;
        }
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > keep {
            self.bytes.drain(..self.bytes.len() - keep);
            self.cut = true;
        }
    }

    /// The last [`STDERR_TAIL_BYTES`] of the text, trailing white space trimmed.
    fn text(&self) -> String {
        let skip = if self.cut {
            self.bytes
                .iter()
                .take(3)
                .take_while(|b| *b & 0xC0 == 0x80)
                .count()
        } else {
            0
        };
        let text = String::from_utf8_lossy(&self.bytes[skip..]).replace("\r\n", "\n");
        tail(&text, STDERR_TAIL_BYTES).to_string()
    }
}

/// Reads stderr to its end, logging its lines and keeping only its tail.
async fn read_stderr(mut reader: impl AsyncRead + Unpin, mut log: LineLog) -> Tail {
    let mut tail = Tail::default();
    let mut buf = vec![0; READ_CHUNK_BYTES];
    loop {
        let chunk = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => &buf[..n],
        };
        log.feed(chunk);
        tail.push(chunk);
    }
    log.finish();
    tail
}

fn tail(s: &str, max: usize) -> &str {
    let s = s.trim_end();
    if s.len() <= max {
        return s;
    }
    &s[s.ceil_char_boundary(s.len() - max)..]
}

/// What `claude -p --output-format json` prints: `result` is the answer, `session_id` the
/// conversation to resume. Anything else on stdout is the output as it is.
fn parse_output(mut stdout: String) -> RunOutput {
    #[derive(Deserialize)]
    struct AgentJson {
        result: Option<serde_json::Value>,
        session_id: Option<String>,
    }
    // Trimmed in place: the output may be megabytes.
    stdout.truncate(stdout.trim_end().len());
    let lead = stdout.len() - stdout.trim_start().len();
    stdout.drain(..lead);
    let trimmed = stdout.as_str();
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
        output: stdout,
        session_id: None,
    }
}

// ---- http ---------------------------------------------------------------------------------

/// How much of an error answer (not 2xx) is read for the message.
const ERROR_BODY_BYTES: usize = 4 * 1024;

/// The largest 2xx answer body read for a role with `max_bytes`: room for an output of that
/// size JSON-escaped (twice over) and the rest of the answer. A cut body is not JSON, so a
/// larger one fails the attempt whatever `on_output_overflow` says.
fn answer_body_limit(max_bytes: usize) -> usize {
    max_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

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
    if !status.is_success() {
        let body = tokio::select! {
            b = read_error_body(resp) => b,
            _ = cancel.cancelled() => return Err(RunError::retryable("cancelled")),
        };
        let message = format!("{} answered {status}: {body}", spec.url);
        return Err(if status.is_client_error() {
            RunError::final_(message)
        } else {
            RunError::retryable(message)
        });
    }
    let body_limit = answer_body_limit(spec.limit.max_bytes);
    let too_large = || {
        RunError::final_(format!(
            "output exceeded {} (max_output_bytes): the answer body of {} was over {}",
            human(spec.limit.max_bytes as u64),
            spec.url,
            human(body_limit as u64)
        ))
    };
    if resp.content_length().is_some_and(|n| n > body_limit as u64) {
        return Err(too_large());
    }
    let body = tokio::select! {
        b = read_answer_body(resp, body_limit) => b.map_err(|e| {
            RunError::retryable(format!("reading the answer of {}: {e}", spec.url))
        })?,
        _ = cancel.cancelled() => return Err(RunError::retryable("cancelled")),
    };
    let Some(body) = body else {
        return Err(too_large());
    };
    let answer: Answer = serde_json::from_str(&String::from_utf8_lossy(&body)).map_err(|e| {
        RunError::retryable(format!("{} answered with unexpected JSON: {e}", spec.url))
    })?;
    drop(body);
    let output = match answer.output {
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    };
    Ok(RunOutput {
        output: bound_output(output, &spec.limit)?,
        session_id: answer.session_id,
    })
}

/// Reads a 2xx answer body, `None` when it is longer than `limit`.
async fn read_answer_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> reqwest::Result<Option<Vec<u8>>> {
    let expected = resp.content_length().unwrap_or(0).min(limit as u64);
    let mut body = Vec::with_capacity(expected as usize);
    while let Some(chunk) = resp.chunk().await? {
        if chunk.len() > limit - body.len() {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// What an error answer says, for the message: its last 500 bytes, or when it is longer than
/// [`ERROR_BODY_BYTES`] (the rest is not read) its first 500 and an ellipsis.
async fn read_error_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    // A body that cannot be read says nothing more; the status speaks.
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            let mut head = decode_head(&body, 500);
            head.push('…');
            return head;
        }
    }
    tail(&String::from_utf8_lossy(&body), 500).to_string()
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
        limited_command(program, args, OutputLimit::default())
    }

    fn limited_command(program: &str, args: &[&str], output: OutputLimit) -> Runner {
        Runner::from_config(&RoleConfig {
            runner: RunnerConfig::Command {
                program: program.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                resume_args: vec!["--resume".into(), "{session_id}".into()],
                task_via: TaskVia::Stdin,
                env: BTreeMap::new(),
            },
            output,
        })
    }

    fn limit(max_bytes: usize, on_overflow: OnOverflow) -> OutputLimit {
        OutputLimit {
            max_bytes,
            on_overflow,
        }
    }

    const MIB: usize = 1024 * 1024;

    /// Everything the sink received so far.
    fn drain(rx: &mut mpsc::Receiver<LogLine>) -> Vec<(LogStream, String)> {
        let mut lines = vec![];
        while let Ok(l) = rx.try_recv() {
            lines.push((l.stream, l.line));
        }
        lines
    }

    #[test]
    fn agent_json_gives_the_result_and_the_session_id() {
        let out = parse_output(r#"{"type":"result","result":"done","session_id":"abc"}"#.into());
        assert_eq!(out.output, "done");
        assert_eq!(out.session_id.as_deref(), Some("abc"));
        assert_eq!(parse_output("plain text\n".into()).output, "plain text");
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
        let simulate = Runner::Simulate(OutputLimit::default());
        let err = simulate.run(&a, &sink, &c).await.unwrap_err();
        assert_eq!(err.message, "flaky");
        a.attempt = 2;
        a.lifetime_attempt = 2;
        let out = simulate.run(&a, &sink, &c).await.unwrap();
        assert_eq!(out.output, "Design login");
        assert_eq!(out.session_id.as_deref(), Some("sim-wf-s"));
    }

    // ---- bounded output ----

    #[test]
    fn byte_counts_read_like_people_write_them() {
        assert_eq!(human(1), "1 byte");
        assert_eq!(human(1000), "1000 bytes");
        assert_eq!(human(64 * 1024), "64 KiB");
        assert_eq!(human(16 * MIB as u64), "16 MiB");
        assert_eq!(human(300_000_000), "286.1 MiB");
        assert_eq!(human(256 * MIB as u64), "256 MiB");
    }

    #[tokio::test]
    async fn a_runaway_line_without_a_newline_fails_at_the_default_limit() {
        let (sink, mut rx) = LogSink::channel(2000);
        let err = command("head", &["-c", "300000000", "/dev/zero"])
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.message, "output exceeded 16 MiB (max_output_bytes)");
        assert!(err.is_final, "{err:?}");
        // The one line never ended: nothing is logged before the program is killed.
        assert!(drain(&mut rx).is_empty());
    }

    #[tokio::test]
    async fn a_truncated_output_keeps_the_limit_and_says_how_much_there_was() {
        let (sink, mut rx) = LogSink::channel(2000);
        let out = limited_command(
            "head",
            &["-c", "300000000", "/dev/zero"],
            limit(64 * 1024, OnOverflow::Truncate),
        )
        .run(&attempt("x"), &sink, &CancellationToken::new())
        .await
        .unwrap();
        let marker = "\n[cairn] output truncated: kept 64 KiB of 286.1 MiB";
        assert_eq!(out.output.len(), 64 * 1024 + marker.len());
        assert!(
            out.output.ends_with(marker),
            "{:?}",
            &out.output[64 * 1024..]
        );
        assert!(out.output[..64 * 1024].bytes().all(|b| b == 0));
        // The program ran to its end: its one line is logged, cut.
        let lines = drain(&mut rx);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1.len(), LOG_LINE_MAX_BYTES);
    }

    #[tokio::test]
    async fn endless_short_lines_fail_at_the_limit_and_log_a_bounded_number_of_lines() {
        let (sink, mut rx) = LogSink::channel(4000);
        let err = limited_command("yes", &[], limit(MIB, OnOverflow::Fail))
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.message, "output exceeded 1 MiB (max_output_bytes)");
        assert!(err.is_final);
        let lines = drain(&mut rx);
        assert_eq!(lines.len(), MAX_LOG_LINES_PER_ATTEMPT as usize + 1);
        assert!(lines.iter().all(|l| l == &(LogStream::Stdout, "y".into())));
    }

    #[tokio::test]
    async fn many_short_lines_are_truncated_at_the_limit() {
        let (sink, mut rx) = LogSink::channel(4000);
        let out = limited_command(
            "sh",
            &["-c", "yes | head -c 5000000"],
            limit(MIB, OnOverflow::Truncate),
        )
        .run(&attempt("x"), &sink, &CancellationToken::new())
        .await
        .unwrap();
        let (kept, marker) = out.output.split_once("\n[cairn]").unwrap();
        assert_eq!(marker, " output truncated: kept 1 MiB of 4.8 MiB");
        // The first MiB, "y\n" after "y\n", its last newline trimmed as any output's.
        assert_eq!(kept.len(), MIB - 1);
        assert!(kept.split('\n').all(|l| l == "y"));
        assert_eq!(drain(&mut rx).len(), MAX_LOG_LINES_PER_ATTEMPT as usize + 1);
    }

    #[tokio::test]
    async fn a_long_line_is_logged_cut_at_a_character_boundary() {
        let (sink, mut rx) = LogSink::channel(16);
        // 20 001 bytes: the cut at LOG_LINE_MAX_BYTES falls inside an "é".
        let task = format!("a{}", "é".repeat(10_000));
        let out = command("sh", &["-c", "cat; echo; echo after"])
            .run(&attempt(&task), &sink, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.output, format!("{task}\nafter"));
        let lines = drain(&mut rx);
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(|l| l.1.len()).collect::<Vec<_>>()
        );
        let expected = format!("a{}", "é".repeat((LOG_LINE_MAX_BYTES - 1) / 2));
        assert_eq!(lines[0], (LogStream::Stdout, expected));
        assert_eq!(lines[1], (LogStream::Stdout, "after".into()));
    }

    #[tokio::test]
    async fn a_failure_reports_the_tail_of_a_long_stderr() {
        let (sink, mut rx) = LogSink::channel(16);
        let err = command(
            "sh",
            &[
                "-c",
                "head -c 300000 /dev/zero | tr '\\0' e >&2; printf '\\r\\nlast words\\r\\n\\n' >&2; exit 2",
            ],
        )
        .run(&attempt("x"), &sink, &CancellationToken::new())
        .await
        .unwrap_err();
        assert!(!err.is_final);
        let tail = err
            .message
            .strip_prefix("exit status 2: ")
            .expect(&err.message);
        assert_eq!(tail.len(), STDERR_TAIL_BYTES);
        assert!(tail.ends_with("eee\nlast words"), "{tail:?}");
        let lines = drain(&mut rx);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].1, "e".repeat(LOG_LINE_MAX_BYTES));
        assert_eq!(lines[1], (LogStream::Stderr, "last words".into()));
        assert_eq!(lines[2], (LogStream::Stderr, String::new()));
    }

    #[tokio::test]
    async fn simulate_produces_output_bytes_within_the_limit() {
        let (sink, _rx) = LogSink::channel(1);
        let c = CancellationToken::new();
        let mut a = attempt("abc");
        a.params.insert("duration_ms".into(), 0.into());
        a.params.insert("output_bytes".into(), (5_000_000).into());
        let out = Runner::Simulate(OutputLimit::default())
            .run(&a, &sink, &c)
            .await
            .unwrap();
        assert_eq!(out.output.len(), 5_000_000);
        assert!(out.output.starts_with("abcabca"));

        let err = Runner::Simulate(limit(MIB, OnOverflow::Fail))
            .run(&a, &sink, &c)
            .await
            .unwrap_err();
        assert_eq!(err.message, "output exceeded 1 MiB (max_output_bytes)");
        assert!(err.is_final);

        let out = Runner::Simulate(limit(MIB, OnOverflow::Truncate))
            .run(&a, &sink, &c)
            .await
            .unwrap();
        let marker = "\n[cairn] output truncated: kept 1 MiB of 4.8 MiB";
        assert_eq!(out.output.len(), MIB + marker.len());
        assert!(out.output.ends_with(marker));

        // An empty task repeats "x"; a character is never split, the rest padded.
        a.task = String::new();
        a.params.insert("output_bytes".into(), 3.into());
        let out = Runner::Simulate(OutputLimit::default())
            .run(&a, &sink, &c)
            .await
            .unwrap();
        assert_eq!(out.output, "xxx");
        assert_eq!(repeat_to("aé", 5), "aéax");
        assert_eq!(repeat_to("aé", 0), "");
    }

    /// A local HTTP server answering every POST with `answer`; its URL.
    async fn serve(answer: axum::routing::MethodRouter) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/step", answer);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/step")
    }

    fn hook(url: &str, output: OutputLimit) -> Runner {
        Runner::from_config(&RoleConfig {
            runner: RunnerConfig::Http {
                url: url.into(),
                headers: BTreeMap::new(),
            },
            output,
        })
    }

    #[tokio::test]
    async fn an_answer_body_over_the_limit_is_a_final_error_in_both_modes() {
        let big = || async { format!(r#"{{"output":"{}"}}"#, "a".repeat(3 * MIB)) };
        // Chunked, without a Content-Length to check first.
        let streamed = || async {
            let chunks = (0..48).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
            axum::body::Body::from_stream(futures::stream::iter(chunks))
        };
        for url in [
            serve(axum::routing::post(big)).await,
            serve(axum::routing::post(streamed)).await,
        ] {
            for on_overflow in [OnOverflow::Fail, OnOverflow::Truncate] {
                let (sink, _rx) = LogSink::channel(1);
                let err = hook(&url, limit(MIB, on_overflow))
                    .run(&attempt("x"), &sink, &CancellationToken::new())
                    .await
                    .unwrap_err();
                assert_eq!(
                    err.message,
                    format!(
                        "output exceeded 1 MiB (max_output_bytes): the answer body of {url} was over 2.1 MiB"
                    )
                );
                assert!(err.is_final);
            }
        }
    }

    #[tokio::test]
    async fn an_answer_output_over_the_limit_fails_or_is_truncated() {
        let url = serve(axum::routing::post(|| async {
            axum::Json(serde_json::json!({"output": "é".repeat(MIB), "session_id": "h-1"}))
        }))
        .await;
        let (sink, _rx) = LogSink::channel(1);
        let out = hook(&url, limit(MIB + 1, OnOverflow::Truncate))
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap();
        let marker = "\n[cairn] output truncated: kept 1 MiB of 2 MiB";
        assert_eq!(out.output, format!("{}{marker}", "é".repeat(MIB / 2)));
        assert_eq!(out.session_id.as_deref(), Some("h-1"));

        let err = hook(&url, limit(MIB, OnOverflow::Fail))
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.message, "output exceeded 1 MiB (max_output_bytes)");
        assert!(err.is_final);

        let out = hook(&url, OutputLimit::default())
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.output, "é".repeat(MIB));
    }

    #[tokio::test]
    async fn an_error_answer_is_read_only_in_part() {
        let url = serve(axum::routing::post(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("overloaded{}", "!".repeat(10 * MIB)),
            )
        }))
        .await;
        let (sink, _rx) = LogSink::channel(1);
        let err = hook(&url, OutputLimit::default())
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(!err.is_final);
        let prefix = format!("{url} answered 500 Internal Server Error: overloaded!!!");
        assert!(err.message.starts_with(&prefix), "{}", &err.message[..200]);
        assert!(err.message.ends_with("!…"));
        assert!(err.message.len() < prefix.len() + 500);

        let url = serve(axum::routing::post(|| async {
            (axum::http::StatusCode::BAD_REQUEST, "no such step\n")
        }))
        .await;
        let err = hook(&url, OutputLimit::default())
            .run(&attempt("x"), &sink, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            format!("{url} answered 400 Bad Request: no such step")
        );
        assert!(err.is_final);
    }
}
