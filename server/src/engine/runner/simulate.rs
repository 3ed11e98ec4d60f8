//! The built-in stand-in agent.

use super::*;

pub(super) async fn simulate(
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
pub(super) fn repeat_to(task: &str, len: usize) -> String {
    let unit = if task.is_empty() { "x" } else { task };
    let mut out = String::with_capacity(len);
    out.push_str(&unit.repeat(len / unit.len()));
    let rest = len - out.len();
    out.push_str(&unit[..unit.floor_char_boundary(rest)]);
    let padding = len - out.len();
    out.extend(std::iter::repeat_n('x', padding));
    out
}
