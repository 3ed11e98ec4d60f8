//! One step of the workflow page: what it is and how it went, and its controls.
//!
//! The card is markup (see `crate::html::Markup`), the same on the server and in the
//! browser. Its parts change on their own: the head (with the running timer and the retry
//! countdown), each `<details>` section and whether it is open, the buttons, and whether the
//! skip form shows. The form's input is in the shell, so what someone types in it stays
//! while the step and its neighbours change. The buttons and summaries carry a `data-key`
//! (`retry:ID`, `log:ID`, ...) that the page's one click handler reads.

use cairn::{StepState, StepStatus};
use chrono::{DateTime, Utc};

use super::workflow::Shown;
use crate::{
    html::{Markup, escape, push_escaped, push_fmt},
    time::{ago, clock_time, duration_ms, until},
};

/// How many lines of a running step's log the card shows (a finished step shows all kept).
const LIVE_LOG_LINES: usize = 12;

/// Appends the card of step `s` of workflow `workflow_id` to `m`.
pub(super) fn card(m: &mut Markup, workflow_id: &str, s: &StepState, v: &Shown) {
    let id = escape(&s.id);
    push_fmt(
        m.text(),
        format_args!(
            r#"<article class="step" id="step-{id}" data-testid="step-{id}" tabindex="-1""#
        ),
    );
    m.attr("data-status", s.status.as_str().into());
    m.push(r#"><div class="step-main""#);
    m.content(main_html(s, v.now));
    m.push("</div>");
    let attempts = if s.attempts.is_empty() {
        Default::default()
    } else {
        (format!("Attempts ({})", s.attempts.len()), attempts_html(s))
    };
    // Each section: key prefix, class, (summary, body), and whether it is open until someone
    // opens or closes it. An empty body hides the section.
    let sections = [
        ("out", "output", output_html(workflow_id, s), false),
        (
            "att",
            "attempts",
            attempts,
            s.attempts.iter().any(|a| a.error.is_some()),
        ),
        ("log", "logs", logs_html(s), s.status == StepStatus::Running),
    ];
    for (key, class, (summary, body), open) in sections {
        let key = format!("{key}:{}", s.id);
        push_fmt(m.text(), format_args!(r#"<details class="{class}""#));
        m.flag("hidden", body.is_empty());
        m.flag("open", v.opened.get(&key).copied().unwrap_or(open));
        m.content(if body.is_empty() {
            body
        } else {
            format!(
                r#"<summary data-key="{}">{summary}</summary>{body}"#,
                escape(&key)
            )
        });
        m.push("</details>");
    }
    m.push(r#"<div class="actions step-actions""#);
    m.content(buttons_html(s, v));
    push_fmt(
        m.text(),
        format_args!(r#"</div><form class="skip-form" data-step="{id}""#),
    );
    m.flag("hidden", !(v.skipping.contains(&s.id) && can_skip(s, v)));
    push_fmt(
        m.text(),
        format_args!(
            r#"><label class="field-label" for="skip-{id}">Output to use instead (optional)</label><input id="skip-{id}" class="input" type="text" name="output" data-key="skip-input:{id}"><button class="btn btn-primary" type="submit" data-key="skip-it:{id}">Skip it</button></form></article>"#
        ),
    );
}

/// Whether the step can be skipped now (it has not finished and is not running).
fn can_skip(s: &StepState, v: &Shown) -> bool {
    v.live
        && !matches!(
            s.status,
            StepStatus::Completed | StepStatus::Skipped | StepStatus::Running
        )
}

/// The buttons the step's state allows, disabled while a control is being sent.
fn buttons_html(s: &StepState, v: &Shown) -> String {
    let mut out = String::new();
    let id = escape(&s.id);
    let disabled = if v.busy() { " disabled" } else { "" };
    let mut button = |class: &str, key: &str, label: &str, text: &str, extra: &str| {
        push_fmt(
            &mut out,
            format_args!(
                r#"<button class="btn {class}" data-key="{key}:{id}" aria-label="{label}"{extra}{disabled}>{text}</button>"#
            ),
        );
    };
    if v.live && s.status == StepStatus::Retrying {
        button(
            "btn-primary",
            "retry-now",
            &format!("Retry {id} now"),
            "Retry now",
            "",
        );
    }
    if v.live
        && matches!(
            s.status,
            StepStatus::Failed
                | StepStatus::Completed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    {
        button("", "retry", &format!("Retry step {id}"), "Retry step", "");
    }
    if can_skip(s, v) {
        let expanded = if v.skipping.contains(&s.id) {
            r#" aria-expanded="true""#
        } else {
            r#" aria-expanded="false""#
        };
        button(
            "btn-ghost",
            "skip",
            &format!("Skip step {id}"),
            "Skip step…",
            expanded,
        );
    }
    out
}

/// The output's summary and text; nothing without an output. A long output is shown by its
/// first KB (what the state carries) with a link that loads the whole only when followed.
fn output_html(workflow_id: &str, s: &StepState) -> (String, String) {
    let Some(output) = &s.output else {
        return Default::default();
    };
    let bytes = s.output_bytes.unwrap_or(output.len() as u64);
    let mut body = String::with_capacity(output.len() + 256);
    body.push_str(r#"<pre class="mono" data-testid="output">"#);
    push_escaped(&mut body, output);
    body.push_str("</pre>");
    if s.output_is_cut() {
        push_fmt(
            &mut body,
            format_args!(
                r#"<p class="muted output-more">The first {} of {}. <a href="/api/workflows/{}/steps/{}/output" target="_blank" rel="noopener" data-testid="output-link">Open the whole output</a></p>"#,
                size(output.len() as u64),
                size(bytes),
                escape(workflow_id),
                escape(&s.id)
            ),
        );
    }
    let summary = format!(r#"Output <span class="muted">({})</span>"#, size(bytes));
    (summary, body)
}

/// A size for people: bytes, KB or MB (decimal).
fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} KB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

/// The log's summary and its tail; nothing without log lines.
fn logs_html(s: &StepState) -> (String, String) {
    if s.logs.is_empty() {
        return Default::default();
    }
    let mut body = String::from(r#"<pre class="mono log-tail" data-testid="log-tail">"#);
    push_escaped(&mut body, &log_text(s));
    body.push_str("</pre>");
    let summary = format!(
        r#"{}<span class="muted"> ({} lines kept)</span>"#,
        if s.status == StepStatus::Running {
            "Live log"
        } else {
            "Log"
        },
        s.logs.len()
    );
    (summary, body)
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
    use crate::html::Markup;

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

    fn card_html(s: &StepState, v: &Shown) -> Markup {
        let mut m = Markup::new();
        card(&mut m, "wf_1", s, v);
        m
    }

    #[test]
    fn a_long_output_shows_its_preview_its_size_and_a_link_to_the_whole() {
        let mut s = step();
        s.id = "design".into();
        s.status = StepStatus::Completed;
        s.output = Some("x".repeat(4096));
        s.output_bytes = Some(5_000_000);
        let html = card_html(&s, &Shown::live_at(at("2026-01-01T12:00:18Z"))).html();
        assert!(
            html.contains("Output <span class=\"muted\">(5.0 MB)</span>"),
            "{html}"
        );
        assert!(html.contains("The first 4.1 KB of 5.0 MB."));
        assert!(
            html.contains(r#"<a href="/api/workflows/wf_1/steps/design/output" target="_blank""#)
        );
        s.output = Some("short".into());
        s.output_bytes = Some(5);
        let html = card_html(&s, &Shown::live_at(at("2026-01-01T12:00:18Z"))).html();
        assert!(html.contains("Output <span class=\"muted\">(5 bytes)</span>"));
        assert!(!html.contains("output-link"));
    }

    /// The open tag of the first element whose markup contains `marker`.
    fn tag_with<'a>(html: &'a str, marker: &str) -> &'a str {
        let at = html
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker} in {html}"));
        let start = html[..at].rfind('<').unwrap();
        &html[start..at + html[at..].find('>').unwrap()]
    }

    #[test]
    fn a_retrying_step_offers_retry_now_and_skip_and_opens_its_failed_attempts() {
        let mut s = step();
        s.attempts = vec![AttemptRecord {
            attempt: 1,
            started_at: at("2026-01-01T11:59:00Z"),
            finished_at: Some(at("2026-01-01T11:59:01Z")),
            error: Some("503".into()),
            duration_ms: Some(1_000),
        }];
        let v = Shown::live_at(at("2026-01-01T12:00:18Z"));
        let html = card_html(&s, &v).html();
        assert!(
            html.contains(
                r#"data-key="retry-now:deploy" aria-label="Retry deploy now">Retry now</button>"#
            ),
            "{html}"
        );
        assert!(html.contains(
            r#"aria-label="Skip step deploy" aria-expanded="false">Skip step…</button>"#
        ));
        assert!(!html.contains("Retry step deploy"));
        assert!(tag_with(&html, r#"class="attempts""#).contains(" open"));
        assert!(html.contains(r#"<summary data-key="att:deploy">Attempts (1)</summary>"#));
        // No output and no log yet: those sections are there, hidden and empty.
        assert!(tag_with(&html, r#"class="output""#).contains(" hidden"));
        assert!(tag_with(&html, r#"class="logs""#).contains(" hidden"));
        assert!(tag_with(&html, r#"class="skip-form""#).contains(" hidden"));
    }

    #[test]
    fn what_someone_opened_or_closed_stays_so_and_the_skip_form_shows_when_asked() {
        let mut s = step();
        s.status = StepStatus::Running;
        s.logs = vec![LogLine {
            attempt: 2,
            stream: LogStream::Stdout,
            line: "<compiling>".into(),
            at: at("2026-01-01T12:00:05Z"),
        }];
        let mut v = Shown::live_at(at("2026-01-01T12:00:18Z"));
        let running = card_html(&s, &v);
        let html = running.html();
        // A running step's log is open by default, and offers no controls.
        assert!(
            tag_with(&html, r#"class="logs""#).contains(" open"),
            "{html}"
        );
        assert!(html.contains("12:00:05  &lt;compiling&gt;</pre>"));
        let actions = html
            .split(r#"class="actions step-actions""#)
            .nth(1)
            .unwrap();
        assert!(!actions.split("</div>").next().unwrap().contains("<button"));
        // Closed by hand, it stays closed while the step runs.
        v.opened.insert("log:deploy".into(), false);
        let closed = card_html(&s, &v);
        assert!(!tag_with(&closed.html(), r#"class="logs""#).contains(" open"));
        // The step failing, then someone asking to skip it, changes parts, not the shell.
        s.status = StepStatus::Failed;
        v.skipping.insert("deploy".into());
        let failed = card_html(&s, &v);
        assert!(failed.changes_from(&running).is_some_and(|c| !c.is_empty()));
        let html = failed.html();
        assert!(!tag_with(&html, r#"class="skip-form""#).contains(" hidden"));
        assert!(html.contains(r#"aria-expanded="true">Skip step…"#));
        assert!(html.contains(r#"<input id="skip-deploy" class="input" type="text" name="output" data-key="skip-input:deploy">"#));
        assert!(html.contains("Retry step deploy"));
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
