//! The "Workflows" sidebar: every workflow of the workspace, live.
//!
//! The list only displays, so it is markup text ([`list_html`], see `crate::html`): one
//! function of the summaries, the page shown and the clock, rendered by the server into the
//! first paint and redrawn in the browser when one of them changes. The rows are plain links;
//! the workspace's click handler turns them into page changes without a reload.

use cairn::{WorkflowStatus, WorkflowSummary};
use chrono::{DateTime, Utc};
use leptos::{html::Ul, prelude::*};

use crate::{
    data::{load_once, load_workspace},
    html::{push_escaped, push_fmt},
    nav::{Page, use_nav},
    time::{duration_ms, percent, until, use_clock},
    workspace::use_workspace,
};

fn is_active(s: WorkflowStatus) -> bool {
    matches!(
        s,
        WorkflowStatus::Pending
            | WorkflowStatus::Running
            | WorkflowStatus::Stalled
            | WorkflowStatus::Paused
    )
}

/// The sidebar: a connection indicator, a status filter and the list.
#[component]
pub fn Sidebar() -> impl IntoView {
    let ws = use_workspace();
    let nav = use_nav();
    let now = use_clock();
    let snapshot = load_once(load_workspace);
    let (filter, set_filter) = signal("all".to_string());

    // Follow the live feed once the snapshot is in (browser only: effects do not run on
    // the server).
    Effect::new(move |done: Option<bool>| {
        if done == Some(true) {
            return true;
        }
        if ws.loaded.get() {
            ws.follow(ws.after.get_untracked());
            return true;
        }
        false
    });

    // The list as it should look now.
    let html = move || {
        let list = filter.with(|f| {
            ws.entries.with(|m| {
                m.values()
                    .map(|e| &e.summary)
                    .filter(|s| shown_by(f, s.status))
                    .cloned()
                    .collect::<Vec<_>>()
            })
        });
        let current = match nav.page() {
            Page::Workflow(id) => Some(id),
            _ => None,
        };
        list_html(list, current.as_deref(), now.get())
    };
    let list = NodeRef::<Ul>::new();
    crate::html::follow(move || list.get().map(Into::into), html, "href");

    view! {
        <aside class="sidebar" aria-label="Workflows">
            <div class="sidebar-head">
                <h2 class="sidebar-title">"Workflows"</h2>
                <span
                    class=move || ws.connection.get().class()
                    data-testid="connection"
                    role="status"
                    title="Live connection to the server"
                >
                    <span class="conn-dot" aria-hidden="true"></span>
                    {move || ws.connection.get().label()}
                </span>
            </div>
            <label class="sr-only" for="status-filter">"Filter by status"</label>
            <select
                id="status-filter"
                class="status-filter"
                on:change=move |ev| set_filter.set(event_target_value(&ev))
                prop:value=move || filter.get()
            >
                <option value="all">"All workflows"</option>
                <option value="active">"Active"</option>
                <option value="running">"Running"</option>
                <option value="paused">"Paused"</option>
                <option value="failed">"Failed"</option>
                <option value="completed">"Completed"</option>
                <option value="cancelled">"Cancelled"</option>
            </select>
            <Suspense fallback=|| view! { <p class="sidebar-empty">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match snapshot.await {
                        Ok(snap) => {
                            ws.load(&snap);
                            view! {
                                <ul class="wf-list" data-testid="workflow-list" node_ref=list
                                    inner_html=untrack(html)></ul>
                                <p class="sidebar-empty" data-testid="sidebar-empty"
                                   hidden=move || ws.entries.with(|m| !m.is_empty())>
                                    "No workflows yet. Start one from the form."
                                </p>
                            }
                                .into_any()
                        }
                        Err(e) => view! { <p class="sidebar-empty">"Cannot load: " {e}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </aside>
    }
}

/// Whether the status filter `filter` (an option's value) shows a workflow in `status`.
fn shown_by(filter: &str, status: WorkflowStatus) -> bool {
    match filter {
        "all" => true,
        "active" => is_active(status),
        other => status.as_str() == other,
    }
}

/// The rows of the list: running first, then the most recent. `current` is the id of the
/// workflow the page shows.
fn list_html(mut list: Vec<WorkflowSummary>, current: Option<&str>, now: DateTime<Utc>) -> String {
    list.sort_by(|a, b| {
        is_active(b.status)
            .cmp(&is_active(a.status))
            .then(b.created_at.cmp(&a.created_at))
            .then(b.id.cmp(&a.id))
    });
    let mut out = String::with_capacity(list.len() * 700);
    for s in &list {
        row_html(&mut out, s, current == Some(s.id.as_str()), now);
    }
    out
}

/// One workflow: name, status, progress bar, current step or outcome, elapsed time, and
/// (until it has finished) a line for a retry countdown or a stall warning.
fn row_html(out: &mut String, s: &WorkflowSummary, current: bool, now: DateTime<Utc>) {
    let status = s.status.as_str();
    let (done, total) = (s.progress.done, s.progress.total);
    let detail = match s.status {
        WorkflowStatus::Running | WorkflowStatus::Pending if s.current_steps.is_empty() => {
            "starting".to_string()
        }
        WorkflowStatus::Running | WorkflowStatus::Pending => s.current_steps.join(", "),
        WorkflowStatus::Failed => s.error.clone().unwrap_or_else(|| "failed".into()),
        WorkflowStatus::Paused => "waiting for a decision".into(),
        WorkflowStatus::Stalled => "stalled: taking over".into(),
        WorkflowStatus::Cancelled => "cancelled".into(),
        WorkflowStatus::Completed => "done".into(),
    };
    let elapsed = match (s.started_at.or(s.created_at), s.finished_at) {
        (Some(a), Some(b)) => duration_ms((b - a).num_milliseconds()),
        (Some(a), None) => duration_ms((now - a).num_milliseconds()),
        _ => String::new(),
    };

    push_fmt(
        out,
        format_args!(
            r#"<li class="wf-item" data-status="{status}" data-testid="workflow-row"><a class="wf-link" href="/workflows/"#
        ),
    );
    push_escaped(out, &s.id);
    out.push('"');
    if current {
        out.push_str(r#" aria-current="page""#);
    }
    out.push_str(r#"><div class="wf-line"><span class="wf-name">"#);
    push_escaped(out, &s.name);
    push_fmt(
        out,
        format_args!(
            r#"</span><span class="badge badge-{status}">{status}</span></div><div class="wf-progress" title="{done} of {total} steps done"><div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{total}" aria-valuenow="{done}"><div class="bar-fill bar-{status}" style="width: {}%"></div></div><span class="wf-count">{done}/{total}</span></div><div class="wf-line wf-meta"><span class="wf-detail" title=""#,
            percent(done, total)
        ),
    );
    push_escaped(out, &detail);
    out.push_str(r#"">"#);
    push_escaped(out, &detail);
    push_fmt(
        out,
        format_args!(r#"</span><span class="wf-time">{elapsed}</span></div>"#),
    );
    // While it may still retry or stall, a line is kept for the countdown or the warning, so
    // that the list does not jump when one appears; a finished workflow needs none.
    if !s.status.is_terminal() {
        out.push_str(r#"<div class="wf-line wf-meta"><span class="wf-retry">"#);
        if let Some(t) = s.next_attempt_at {
            push_fmt(out, format_args!("retry {}", until(t, now)));
        }
        out.push_str(r#"</span><span class="wf-warn">"#);
        if s.status == WorkflowStatus::Stalled {
            out.push_str("⚠ engine lost; resuming");
        }
        out.push_str("</span></div>");
    }
    out.push_str("</a></li>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn summary(id: &str, status: &str, created: &str) -> WorkflowSummary {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("<{id}> & co"), "status": status,
            "progress": {"done": 1, "total": 3, "running": 1, "failed": 0},
            "current_steps": ["build", "lint"], "error": null,
            "created_at": created, "started_at": created, "finished_at": null,
            "updated_at": created, "next_attempt_at": null, "last_event_id": 7
        }))
        .unwrap()
    }

    #[test]
    fn active_workflows_come_first_then_the_newest() {
        let list = vec![
            summary("old-done", "completed", "2026-01-01T10:00:00Z"),
            summary("running", "running", "2026-01-01T09:00:00Z"),
            summary("new-done", "completed", "2026-01-01T11:00:00Z"),
        ];
        let html = list_html(list, None, at("2026-01-01T12:00:00Z"));
        let pos = |id: &str| html.find(&format!("/workflows/{id}\"")).unwrap();
        assert!(pos("running") < pos("new-done"), "{html}");
        assert!(pos("new-done") < pos("old-done"));
        assert_eq!(html.matches(r#"data-testid="workflow-row""#).count(), 3);
        assert!(!html.contains("aria-current"));
    }

    #[test]
    fn a_row_shows_progress_steps_time_and_marks_the_page_shown() {
        let s = summary("wf-1", "running", "2026-01-01T12:00:00Z");
        let html = list_html(vec![s], Some("wf-1"), at("2026-01-01T12:01:05Z"));
        assert!(
            html.contains(r#"href="/workflows/wf-1" aria-current="page""#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="wf-name">&lt;wf-1&gt; &amp; co</span>"#));
        assert!(html.contains(r#"<span class="badge badge-running">running</span>"#));
        assert!(html.contains(r#"style="width: 33%""#));
        assert!(html.contains(r#"<span class="wf-count">1/3</span>"#));
        assert!(html.contains(">build, lint</span>"));
        assert!(html.contains(r#"<span class="wf-time">1m 05s</span>"#));
    }

    #[test]
    fn a_row_counts_down_to_the_retry_and_warns_when_stalled() {
        let mut s = summary("wf-2", "stalled", "2026-01-01T12:00:00Z");
        s.next_attempt_at = Some(at("2026-01-01T12:00:30Z"));
        let html = list_html(vec![s], None, at("2026-01-01T12:00:20Z"));
        assert!(
            html.contains(r#"<span class="wf-retry">retry in 10.0s</span>"#),
            "{html}"
        );
        assert!(html.contains("⚠ engine lost; resuming"));
        assert!(html.contains("stalled: taking over"));
    }

    #[test]
    fn a_finished_row_keeps_no_empty_line_for_a_countdown() {
        let running = list_html(
            vec![summary("wf-3", "running", "2026-01-01T12:00:00Z")],
            None,
            at("2026-01-01T12:00:20Z"),
        );
        assert!(
            running.contains(r#"<span class="wf-retry"></span>"#),
            "{running}"
        );
        for status in ["completed", "failed", "cancelled"] {
            let html = list_html(
                vec![summary("wf-3", status, "2026-01-01T12:00:00Z")],
                None,
                at("2026-01-01T12:00:20Z"),
            );
            assert!(!html.contains("wf-retry"), "{status}: {html}");
            assert!(html.ends_with("</div></a></li>"), "{html}");
        }
    }

    #[test]
    fn the_filter_shows_active_or_one_status() {
        assert!(shown_by("all", WorkflowStatus::Cancelled));
        assert!(shown_by("active", WorkflowStatus::Stalled));
        assert!(!shown_by("active", WorkflowStatus::Failed));
        assert!(shown_by("failed", WorkflowStatus::Failed));
        assert!(!shown_by("failed", WorkflowStatus::Completed));
    }
}
