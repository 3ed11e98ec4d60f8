//! The "Workflows" sidebar: every workflow of the workspace, live.

use cairn::{WorkflowStatus, WorkflowSummary};
use leptos::prelude::*;

use crate::{
    components::Badge,
    data::{load_once, load_workspace},
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

    let rows = move || {
        let f = filter.get();
        let mut list: Vec<WorkflowSummary> = ws
            .entries
            .with(|m| m.values().map(|e| e.summary.clone()).collect());
        list.retain(|s| match f.as_str() {
            "all" => true,
            "active" => is_active(s.status),
            other => s.status.as_str() == other,
        });
        // Running first, then the most recent.
        list.sort_by(|a, b| {
            is_active(b.status)
                .cmp(&is_active(a.status))
                .then(b.created_at.cmp(&a.created_at))
                .then(b.id.cmp(&a.id))
        });
        list
    };

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
                                <ul class="wf-list" data-testid="workflow-list">
                                    <For each=rows key=|s| (s.id.clone(), s.last_event_id, s.status.as_str()) let:s>
                                        <WorkflowRow s/>
                                    </For>
                                </ul>
                                <Show when=move || ws.entries.with(|m| m.is_empty())>
                                    <p class="sidebar-empty" data-testid="sidebar-empty">
                                        "No workflows yet. Start one from the form."
                                    </p>
                                </Show>
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

#[component]
fn WorkflowRow(s: WorkflowSummary) -> impl IntoView {
    let now = use_clock();
    let nav = use_nav();
    let href = format!("/workflows/{}", s.id);
    let page = Page::Workflow(s.id.clone());
    let current = move || nav.is(&page).then_some("page");
    let pct = percent(s.progress.done, s.progress.total);
    let status = s.status.as_str();
    let detail = match s.status {
        WorkflowStatus::Running | WorkflowStatus::Pending => {
            if s.current_steps.is_empty() {
                "starting".to_string()
            } else {
                s.current_steps.join(", ")
            }
        }
        WorkflowStatus::Failed => s.error.clone().unwrap_or_else(|| "failed".into()),
        WorkflowStatus::Paused => "waiting for a decision".into(),
        WorkflowStatus::Stalled => "stalled: taking over".into(),
        WorkflowStatus::Cancelled => "cancelled".into(),
        WorkflowStatus::Completed => "done".into(),
    };
    let (started, finished, next) = (
        s.started_at.or(s.created_at),
        s.finished_at,
        s.next_attempt_at,
    );
    let elapsed = move || match (started, finished) {
        (Some(a), Some(b)) => duration_ms((b - a).num_milliseconds()),
        (Some(a), None) => duration_ms((now.get() - a).num_milliseconds()),
        _ => String::new(),
    };
    let retry = move || next.map(|t| format!("retry {}", until(t, now.get())));
    let stalled = s.status == WorkflowStatus::Stalled;
    view! {
        <li class="wf-item" data-status=status data-testid="workflow-row">
            <a class="wf-link" href=href aria-current=current>
                <div class="wf-line">
                    <span class="wf-name">{s.name.clone()}</span>
                    <Badge status=status/>
                </div>
                <div class="wf-progress" title=format!("{} of {} steps done", s.progress.done, s.progress.total)>
                    <div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax=s.progress.total aria-valuenow=s.progress.done>
                        <div class=format!("bar-fill bar-{status}") style=format!("width: {pct}%")></div>
                    </div>
                    <span class="wf-count">{format!("{}/{}", s.progress.done, s.progress.total)}</span>
                </div>
                <div class="wf-line wf-meta">
                    <span class="wf-detail" title=detail.clone()>{detail.clone()}</span>
                    <span class="wf-time">{elapsed}</span>
                </div>
                <div class="wf-line wf-meta">
                    <span class="wf-retry">{retry}</span>
                    <span class="wf-warn">{stalled.then_some("⚠ engine lost; resuming")}</span>
                </div>
            </a>
        </li>
    }
}
