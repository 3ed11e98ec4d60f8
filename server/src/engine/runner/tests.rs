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

/// A program whose child leaves a file behind two seconds on, unless it is killed first.
struct Survivor {
    dir: tempfile::TempDir,
}

impl Survivor {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn marker(&self) -> std::path::PathBuf {
        self.dir.path().join("survived")
    }

    /// The program: `sh -c` this script.
    fn script(&self) -> String {
        format!("(sleep 2; touch {}) & sleep 30", self.marker().display())
    }

    /// Fails if the child is still alive to leave its file.
    async fn assert_killed(&self, what: &str) {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !self.marker().exists(),
            "a child of the {what} program kept running"
        );
    }
}

#[tokio::test]
async fn cancelling_kills_the_whole_process_group() {
    let survivor = Survivor::new();
    let script = survivor.script();
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
    survivor.assert_killed("cancelled").await;
}

/// An attempt dropped unfinished (the engine stopping aborts its task) takes its program's
/// children with it, not only the program.
#[tokio::test]
async fn an_attempt_dropped_unfinished_kills_the_whole_process_group() {
    let survivor = Survivor::new();
    let script = survivor.script();
    let (sink, _rx) = LogSink::channel(16);
    let cancel = CancellationToken::new();
    let runner = command("sh", &["-c", &script]);
    let a = attempt("x");
    let run = runner.run(&a, &sink, &cancel);
    let dropped = tokio::time::timeout(Duration::from_millis(200), run).await;
    assert!(dropped.is_err(), "still running when dropped");
    survivor.assert_killed("dropped").await;
}

/// A program that exits while something it started outside its group (`setsid`) still holds
/// its stdout ends with what it printed, a moment later, rather than when that process does
/// (here in ten seconds; a daemon, never).
#[tokio::test]
async fn a_program_whose_pipes_outlive_it_ends_with_what_it_printed() {
    let (sink, _rx) = LogSink::channel(16);
    let runner = command("sh", &["-c", "setsid sleep 10 & sleep 0.5; echo done"]);
    let a = attempt("x");
    let cancel = CancellationToken::new();
    let out = tokio::time::timeout(Duration::from_secs(8), runner.run(&a, &sink, &cancel))
        .await
        .expect("the attempt waited for the process holding its pipes")
        .unwrap();
    assert_eq!(out.output, "done");
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
