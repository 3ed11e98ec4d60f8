//! Events told as sentences: what `cairn run --follow` prints without a terminal and what MCP
//! progress notifications say.

use cairn::{Event, EventRecord};

/// A duration for people: `850 ms`, `2.4 s`, `3 min 5 s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The first line of `text`, at most `max` characters, with `…` when cut.
pub fn line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// One sentence for an event, or `None` for a log line (it is its own text).
pub fn describe(rec: &EventRecord) -> Option<String> {
    let by = |b: &Option<String>| b.as_ref().map(|b| format!(" by {b}")).unwrap_or_default();
    Some(match &rec.event {
        Event::WorkflowCreated { spec, .. } => format!(
            "workflow {} created with {} step{}",
            spec.name,
            spec.steps.len(),
            if spec.steps.len() == 1 { "" } else { "s" }
        ),
        Event::WorkflowStarted {} => "workflow started".into(),
        Event::StepStarted {
            step_id, attempt, ..
        } => match attempt {
            1 => format!("{step_id} started"),
            n => format!("{step_id} started (attempt {n})"),
        },
        Event::StepLog { .. } => return None,
        Event::StepRetrying {
            step_id,
            attempt,
            error,
            delay_ms,
            by: asked,
            ..
        } => match asked {
            Some(who) => format!("{step_id} will run again (asked by {who})"),
            None => format!(
                "{step_id} attempt {attempt} failed: {}; retrying in {}",
                line(error.as_deref().unwrap_or("no error given"), 200),
                duration(*delay_ms)
            ),
        },
        Event::StepCompleted {
            step_id,
            duration_ms,
            ..
        } => format!("{step_id} completed in {}", duration(*duration_ms)),
        Event::StepFailed {
            step_id,
            attempt,
            error,
            ..
        } => format!(
            "{step_id} failed after {attempt} attempt{}: {}",
            if *attempt == 1 { "" } else { "s" },
            line(error, 200)
        ),
        Event::StepSkipped { step_id, by: b, .. } => format!("{step_id} skipped{}", by(b)),
        Event::WorkflowCompleted {} => "workflow completed".into(),
        Event::WorkflowFailed { step_id, error } => match step_id {
            Some(s) => format!("workflow failed at {s}: {}", line(error, 200)),
            None => format!("workflow failed: {}", line(error, 200)),
        },
        Event::WorkflowCancelled { by: b, reason } => match reason {
            Some(r) => format!("workflow cancelled{}: {r}", by(b)),
            None => format!("workflow cancelled{}", by(b)),
        },
        Event::WorkflowStalled { reason, .. } => format!("workflow stalled: {reason}"),
        Event::WorkflowResumed { by: b } => match b {
            Some(_) => format!("workflow resumed{}", by(b)),
            None => "workflow resumed by another engine".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_400), "2.4 s");
        assert_eq!(duration(185_000), "3 min 5 s");
    }

    #[test]
    fn a_line_is_the_first_one_cut_with_an_ellipsis() {
        assert_eq!(line("short", 10), "short");
        assert_eq!(line("first\nsecond", 10), "first…");
        assert_eq!(line("ééééé", 3), "ééé…");
    }
}
