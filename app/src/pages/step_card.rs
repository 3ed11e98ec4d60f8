//! One step of the workflow page: what it is and how it went, and its controls.
//!
//! What the card only displays (its head, the countdown, error, task, session and the
//! attempts table) is markup text from the functions below (see `crate::html`), the same on
//! the server and in the browser. What a person uses stays elements: the buttons, the skip
//! form, and the `<details>` sections, which keep whether someone opened them.

use cairn::{StepState, StepStatus, WorkflowState};
use chrono::{DateTime, Utc};
use leptos::prelude::*;

use super::workflow::Actions;
use crate::{
    html::{push_escaped, push_fmt},
    time::{ago, clock_time, duration_ms, until, use_clock},
};

/// How many lines of a running step's log the card shows (a finished step shows all kept).
const LIVE_LOG_LINES: usize = 12;

/// The card of step `step_id` of `state`. `live` is false while an earlier state is shown.
#[component]
pub fn StepCard(
    state: Signal<WorkflowState>,
    step_id: String,
    actions: Actions,
    live: Signal<bool>,
) -> impl IntoView {
    let now = use_clock();
    let step = {
        let id = step_id.clone();
        Signal::derive(move || state.with(|s| s.step(&id).cloned()))
    };
    // Reads of the step, empty before it is known.
    let read =
        move |f: fn(&StepState) -> String| step.with(|s| s.as_ref().map(f).unwrap_or_default());
    let has = move |f: fn(&StepState) -> bool| step.with(|s| s.as_ref().is_some_and(f));
    let st = move || step.with(|s| s.as_ref().map_or(StepStatus::Pending, |s| s.status));
    let wf_id = move || state.with(|s| s.id.clone());

    let (skip_output, set_skip_output) = signal(String::new());
    let (skipping, set_skipping) = signal(false);
    // A step control: what the button says it did, the route under the step, the body.
    let control = {
        let step_id = step_id.clone();
        move |label: String, route: &'static str, body: Option<String>| {
            actions.run(
                label,
                format!("/api/workflows/{}/steps/{step_id}/{route}", wf_id()),
                body,
            )
        }
    };
    let (retry_ctl, now_ctl, skip_ctl) = (control.clone(), control.clone(), control);
    let (retry_id, now_id, skip_id) = (step_id.clone(), step_id.clone(), step_id.clone());
    let retry = move |_| retry_ctl(format!("Retry {retry_id}"), "retry", None);
    let retry_now = move |_| now_ctl(format!("Retry {now_id} now"), "retry-now", None);
    let skip = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let out = skip_output.get_untracked();
        let body = (!out.is_empty()).then(|| serde_json::json!({ "output": out }).to_string());
        set_skipping.set(false);
        skip_ctl(format!("Skip {skip_id}"), "skip", body);
    };
    let can_retry = move || {
        live.get()
            && matches!(
                st(),
                StepStatus::Failed
                    | StepStatus::Completed
                    | StepStatus::Skipped
                    | StepStatus::Cancelled
            )
    };
    let can_retry_now = move || live.get() && st() == StepStatus::Retrying;
    let can_skip = move || {
        live.get()
            && !matches!(
                st(),
                StepStatus::Completed | StepStatus::Skipped | StepStatus::Running
            )
    };
    let busy = move || actions.busy.get().is_some();
    let html_id = format!("step-{step_id}");
    let input_id = format!("skip-{step_id}");
    let label_now = format!("Retry {step_id} now");
    let label_retry = format!("Retry step {step_id}");
    let label_skip = format!("Skip step {step_id}");

    view! {
        <article class="step" id=html_id.clone() data-testid=html_id
                 data-status=move || st().as_str()>
            <div class="step-main" inner_html=move || {
                let now = now.get();
                step.with(|s| s.as_ref().map(|s| main_html(s, now)).unwrap_or_default())
            }></div>
            <details class="output" hidden=move || !has(|s| s.output.is_some())>
                <summary>"Output " <span class="muted">{move || read(|s| {
                    format!("({} chars)", s.output.as_deref().unwrap_or("").chars().count())
                })}</span></summary>
                <pre class="mono" data-testid="output">{move || read(|s| s.output.clone().unwrap_or_default())}</pre>
            </details>
            <details class="attempts" hidden=move || !has(|s| !s.attempts.is_empty())
                     open=move || has(|s| s.attempts.iter().any(|a| a.error.is_some()))>
                <summary>{move || read(|s| format!("Attempts ({})", s.attempts.len()))}</summary>
                <div inner_html=move || read(attempts_html)></div>
            </details>
            <details class="logs" hidden=move || !has(|s| !s.logs.is_empty())
                     open=move || st() == StepStatus::Running>
                <summary>
                    {move || if st() == StepStatus::Running { "Live log" } else { "Log" }}
                    <span class="muted">{move || read(|s| format!(" ({} lines kept)", s.logs.len()))}</span>
                </summary>
                <pre class="mono log-tail" data-testid="log-tail">{move || read(log_text)}</pre>
            </details>
            <div class="actions step-actions">
                <Show when=can_retry_now>
                    <button class="btn btn-primary" disabled=busy on:click=retry_now.clone()
                            aria-label=label_now.clone()>"Retry now"</button>
                </Show>
                <Show when=can_retry>
                    <button class="btn" disabled=busy on:click=retry.clone()
                            aria-label=label_retry.clone()>"Retry step"</button>
                </Show>
                <Show when=can_skip>
                    <button class="btn btn-ghost" disabled=busy on:click=move |_| set_skipping.update(|v| *v = !*v)
                            aria-expanded=move || skipping.get().to_string()
                            aria-label=label_skip.clone()>"Skip step…"</button>
                </Show>
            </div>
            <Show when=move || skipping.get() && can_skip()>
                <form class="skip-form" on:submit=skip.clone()>
                    <label class="field-label" for=input_id.clone()>"Output to use instead (optional)"</label>
                    <input id=input_id.clone() class="input" type="text"
                           prop:value=move || skip_output.get() on:input=move |ev| set_skip_output.set(event_target_value(&ev))/>
                    <button class="btn btn-primary" type="submit">"Skip it"</button>
                </form>
            </Show>
        </article>
    }
}

/// The card's head and facts: id, role, attempt, timing and status; the retry countdown;
/// the error; the rendered task and the session.
fn main_html(s: &StepState, now: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(512);
    let status = s.status.as_str();
    out.push_str(r#"<header class="step-head"><div class="step-name"><h3>"#);
    push_escaped(&mut out, &s.id);
    out.push_str(r#"</h3><span class="muted">"#);
    push_escaped(&mut out, &s.role);
    out.push_str(
        r#"</span></div><div class="step-facts"><span class="muted" data-testid="attempt">"#,
    );
    if s.attempt > 0 {
        push_fmt(
            &mut out,
            format_args!("attempt {} of {}", s.attempt, s.max_attempts),
        );
    }
    out.push_str(r#"</span><span class="muted">"#);
    out.push_str(&timing(s, now));
    push_fmt(
        &mut out,
        format_args!(
            r#"</span><span class="badge badge-{status}">{status}</span></div></header><p class="countdown" data-testid="countdown">"#
        ),
    );
    if let (StepStatus::Retrying, Some(t)) = (s.status, s.next_attempt_at) {
        push_fmt(&mut out, format_args!("next attempt {}", until(t, now)));
    }
    out.push_str("</p>");
    if let Some(e) = &s.error {
        out.push_str(r#"<p class="step-error" data-testid="step-error">"#);
        push_escaped(&mut out, e);
        out.push_str("</p>");
    }
    if let Some(t) = &s.task {
        out.push_str(r#"<div class="kv"><span class="k">Task</span><span class="v mono">"#);
        push_escaped(&mut out, t);
        out.push_str("</span></div>");
    }
    if let Some(t) = &s.session_id {
        out.push_str(r#"<div class="kv"><span class="k">Session</span><span class="v mono" data-testid="session-id">"#);
        push_escaped(&mut out, t);
        out.push_str("</span></div>");
    }
    out
}

/// `took 1.2s`, `running 3.0s` or `started 5m ago`.
fn timing(s: &StepState, now: DateTime<Utc>) -> String {
    match (s.started_at, s.finished_at, s.duration_ms) {
        (_, Some(_), Some(d)) => format!("took {}", duration_ms(d as i64)),
        (Some(a), None, _) if s.status == StepStatus::Running => {
            format!("running {}", duration_ms((now - a).num_milliseconds()))
        }
        (Some(a), _, _) => format!("started {}", ago(a, now)),
        _ => String::new(),
    }
}

/// Every attempt with its start, duration and result (its error, or `ok`).
fn attempts_html(s: &StepState) -> String {
    let mut out = String::from(
        r#"<table class="table" data-testid="attempts"><thead><tr><th>#</th><th>Started</th><th>Took</th><th>Result</th></tr></thead><tbody>"#,
    );
    for a in &s.attempts {
        let took = a
            .duration_ms
            .map_or_else(|| "…".to_string(), |d| duration_ms(d as i64));
        push_fmt(
            &mut out,
            format_args!(
                r#"<tr><td>{}</td><td class="mono">{}</td><td>{took}</td><td class="attempt-error">"#,
                a.attempt,
                clock_time(a.started_at)
            ),
        );
        match (&a.error, a.finished_at) {
            (Some(e), _) => push_escaped(&mut out, e),
            (None, Some(_)) => out.push_str("ok"),
            (None, None) => {}
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// The log tail as text: a running step's newest lines, a finished step's every kept line.
fn log_text(s: &StepState) -> String {
    let keep = if s.status == StepStatus::Running {
        LIVE_LOG_LINES
    } else {
        s.logs.len()
    };
    let skip = s.logs.len().saturating_sub(keep);
    s.logs[skip..]
        .iter()
        .map(|l| format!("{}  {}", clock_time(l.at), l.line))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use cairn::{AttemptRecord, LogLine, LogStream};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn step() -> StepState {
        serde_json::from_value(serde_json::json!({
            "id": "deploy", "role": "developer", "deps": [], "status": "retrying",
            "attempt": 2, "max_attempts": 4, "task": "Deploy <b>it</b>", "session_id": "s-1",
            "output": null, "error": "503 upstream busy & down",
            "started_at": "2026-01-01T12:00:00Z", "finished_at": null, "duration_ms": null,
            "next_attempt_at": "2026-01-01T12:00:30Z", "attempts": [], "logs": []
        }))
        .unwrap()
    }

    #[test]
    fn the_head_shows_attempt_countdown_error_task_and_session_escaped() {
        let html = main_html(&step(), at("2026-01-01T12:00:18Z"));
        assert!(
            html.contains(r#"data-testid="attempt">attempt 2 of 4<"#),
            "{html}"
        );
        assert!(html.contains(r#"class="badge badge-retrying">retrying<"#));
        assert!(html.contains(r#"data-testid="countdown">next attempt in 12.0s<"#));
        assert!(html.contains("503 upstream busy &amp; down"));
        assert!(html.contains("Deploy &lt;b&gt;it&lt;/b&gt;"));
        assert!(html.contains(r#"data-testid="session-id">s-1<"#));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn a_step_not_yet_started_shows_no_attempt_and_no_countdown() {
        let mut s = step();
        s.status = StepStatus::Pending;
        s.attempt = 0;
        s.started_at = None;
        s.error = None;
        let html = main_html(&s, at("2026-01-01T12:00:18Z"));
        assert!(html.contains(r#"data-testid="attempt"></span>"#), "{html}");
        assert!(html.contains(r#"data-testid="countdown"></p>"#));
        assert!(!html.contains("step-error"));
    }

    #[test]
    fn attempts_list_each_result_and_logs_keep_the_newest_lines_while_running() {
        let mut s = step();
        s.attempts = vec![
            AttemptRecord {
                attempt: 1,
                started_at: at("2026-01-01T11:59:00Z"),
                finished_at: Some(at("2026-01-01T11:59:01Z")),
                error: Some("<boom>".into()),
                duration_ms: Some(1_200),
            },
            AttemptRecord {
                attempt: 2,
                started_at: at("2026-01-01T12:00:00Z"),
                finished_at: None,
                error: None,
                duration_ms: None,
            },
        ];
        let table = attempts_html(&s);
        assert_eq!(table.matches("<tr><td>").count(), 2);
        assert!(table.contains("<td>1.2s</td><td class=\"attempt-error\">&lt;boom&gt;</td>"));
        assert!(table.contains("<td>…</td><td class=\"attempt-error\"></td>"));

        s.status = StepStatus::Running;
        s.logs = (0..20)
            .map(|i| LogLine {
                attempt: 2,
                stream: LogStream::Stdout,
                line: format!("line {i}"),
                at: at("2026-01-01T12:00:05Z"),
            })
            .collect();
        let text = log_text(&s);
        assert_eq!(text.lines().count(), LIVE_LOG_LINES);
        assert!(text.ends_with("12:00:05  line 19"));
        s.status = StepStatus::Completed;
        assert_eq!(log_text(&s).lines().count(), 20);
    }
}
