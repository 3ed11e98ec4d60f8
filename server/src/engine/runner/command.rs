//! The `command` runner: a program, its output read into bounded memory.

use std::ops::ControlFlow;

use super::*;

/// How much of stderr a failure message keeps.
pub(super) const STDERR_TAIL_BYTES: usize = 2000;

/// How long the output is still read after the program has exited and its group was killed.
/// The pipes close with the group; a process that left the group (`setsid`, a daemon) may
/// hold them open for as long as it lives, and what was read by then is the output.
pub(super) const PIPES_GRACE: Duration = Duration::from_secs(2);

/// The most a program's stdout or stderr is read at once.
pub(super) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Log lines sent per stream and attempt: the engine records `MAX_LOG_LINES_PER_ATTEMPT` and
/// turns the next one into its notice that the rest was not recorded.
pub(super) const LOG_LINES_SENT: u32 = MAX_LOG_LINES_PER_ATTEMPT + 1;

pub(super) fn fill(template: &str, a: &Attempt) -> String {
    template
        .replace("{task}", &a.task)
        .replace("{session_id}", a.session_id.as_deref().unwrap_or(""))
        .replace("{workflow_id}", &a.workflow_id)
        .replace("{step_id}", &a.step_id)
}

pub(super) async fn run_command(
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
    // However the attempt ends, even dropped unfinished (its task aborted as the engine stops,
    // with no chance to take the cancel branch below), nothing the program started outlives
    // it: `kill_on_drop` reaches the program alone.
    let mut group = GroupGuard(child.id());
    // And the readers stop with it, whoever holds the pipes.
    let reading = CancellationToken::new();
    let _stop_reading = reading.clone().drop_guard();

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
        reading.clone(),
    ));
    let err_task = tokio::spawn(read_stderr(
        stderr,
        LineLog::new(a, logs, LogStream::Stderr),
        reading.clone(),
    ));

    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| RunError::retryable(format!("waiting for the program: {e}")))?,
        _ = overflow.cancelled() => {
            group.kill();
            let _ = child.wait().await;
            return Err(overflow_error(&spec.limit));
        }
        _ = cancel.cancelled() => {
            group.kill();
            let _ = child.wait().await;
            return Err(RunError::retryable("cancelled"));
        }
    };
    // The group may have children still holding the pipes; they go with the parent.
    group.kill();
    let stop = reading.clone();
    let grace = tokio::spawn(async move {
        tokio::time::sleep(PIPES_GRACE).await;
        stop.cancel();
    });
    let stdout = out_task.await.unwrap_or_default();
    let stderr = err_task.await.unwrap_or_default();
    grace.abort();

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

/// Kills a program's process group, once: when told to, or when dropped before that. Once
/// the program is reaped its id may be reused, so a group is never signalled twice.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&mut self) {
        kill_group(self.0.take());
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) fn kill_group(pgid: Option<u32>) {
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
pub(super) struct LineLog {
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
pub(super) struct Collected {
    kept: Vec<u8>,
    total: u64,
}

/// Reads stdout to its end, logging its lines and keeping at most `limit.max_bytes` of it.
/// Past the limit it fires `overflow` and stops reading when the attempt is to fail; when it
/// is to be truncated, it reads on (counting, dropping) so the program can finish.
pub(super) async fn read_stdout(
    reader: impl AsyncRead + Unpin,
    log: LineLog,
    limit: OutputLimit,
    overflow: CancellationToken,
    stop: CancellationToken,
) -> Collected {
    let mut out = Collected::default();
    read_logged(reader, log, stop, |chunk| {
        out.total += chunk.len() as u64;
        let room = limit.max_bytes - out.kept.len();
        if chunk.len() > room && limit.on_overflow == OnOverflow::Fail {
            overflow.cancel();
            return ControlFlow::Break(());
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
        ControlFlow::Continue(())
    })
    .await;
    out
}

/// Reads `reader` to its end in chunks, logging its lines and handing each chunk to `keep`,
/// until `keep` says to stop or `stop` is cancelled.
async fn read_logged(
    mut reader: impl AsyncRead + Unpin,
    mut log: LineLog,
    stop: CancellationToken,
    mut keep: impl FnMut(&[u8]) -> ControlFlow<()>,
) {
    let mut buf = vec![0; READ_CHUNK_BYTES];
    loop {
        let read = tokio::select! {
            read = reader.read(&mut buf) => read,
            _ = stop.cancelled() => break,
        };
        let chunk = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => &buf[..n],
        };
        log.feed(chunk);
        if keep(chunk).is_break() {
            return;
        }
    }
    log.finish();
}

/// The last bytes of a stream, for a failure message.
#[derive(Debug, Default)]
pub(super) struct Tail {
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
pub(super) async fn read_stderr(
    reader: impl AsyncRead + Unpin,
    log: LineLog,
    stop: CancellationToken,
) -> Tail {
    let mut tail = Tail::default();
    read_logged(reader, log, stop, |chunk| {
        tail.push(chunk);
        ControlFlow::Continue(())
    })
    .await;
    tail
}

pub(super) fn tail(s: &str, max: usize) -> &str {
    let s = s.trim_end();
    if s.len() <= max {
        return s;
    }
    &s[s.ceil_char_boundary(s.len() - max)..]
}

/// What `claude -p --output-format json` prints: `result` is the answer, `session_id` the
/// conversation to resume. Anything else on stdout is the output as it is.
pub(super) fn parse_output(mut stdout: String) -> RunOutput {
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
