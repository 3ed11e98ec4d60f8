//! The `http` runner: POST the step, read the answer into bounded memory.

use super::*;

/// How much of an error answer (not 2xx) is read for the message.
pub(super) const ERROR_BODY_BYTES: usize = 4 * 1024;

/// The largest 2xx answer body read for a role with `max_bytes`: room for an output of that
/// size JSON-escaped (twice over) and the rest of the answer. A cut body is not JSON, so a
/// larger one fails the attempt whatever `on_output_overflow` says.
pub(super) fn answer_body_limit(max_bytes: usize) -> usize {
    max_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

pub(super) async fn run_http(
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
pub(super) async fn read_answer_body(
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
pub(super) async fn read_error_body(mut resp: reqwest::Response) -> String {
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
