//! `/workflows/{id}`: one workflow, live — its graph, its steps, the controls, its history.
//!
//! The server renders the committed state; in the browser the page follows
//! `/api/workflows/{id}/events` from that state's `last_event_id` and folds every event with
//! `WorkflowState::apply`. Controls post to the API and show at once that they were sent;
//! their effect arrives through the stream like any other change.

use cairn::{WorkflowState, WorkflowStatus};
use leptos::prelude::*;

use super::{history::History, step_card::StepCard};
use crate::{
    components::{Badge, Dag},
    data::{load_once, load_workflow},
    live::Connection,
    time::{clock_time, duration_ms, percent, use_clock},
};

/// What the controls are doing, shared by every button of the page.
#[derive(Clone, Copy)]
pub(super) struct Actions {
    pub(super) busy: RwSignal<Option<String>>,
    notice: RwSignal<Option<(bool, String)>>,
}

impl Actions {
    /// Posts a control; `label` is what the button does ("Cancel", "Retry design").
    pub(super) fn run(self, label: String, url: String, body: Option<String>) {
        if self.busy.get_untracked().is_some() {
            return;
        }
        self.busy.set(Some(label.clone()));
        self.notice.set(None);
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            let result = crate::data::post_json(&url, body, &[]).await;
            self.busy.set(None);
            self.notice.set(Some(match result {
                Ok(_) => (true, format!("{label}: sent")),
                Err(crate::data::PostError::Other(m)) => (false, format!("{label}: {m}")),
                Err(crate::data::PostError::Invalid(d)) => (
                    false,
                    format!(
                        "{label}: {}",
                        d.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; ")
                    ),
                ),
            }));
        });
        #[cfg(not(feature = "hydrate"))]
        let _ = (url, body);
    }
}

/// The page for workflow `id`, lazily loaded: its views are a WASM chunk of their own (the
/// server names it for preloading when it renders the page).
#[lazy]
pub fn workflow_page_view(id: String) -> AnyView {
    let loaded = load_once(move || load_workflow(id.clone()));
    view! {
        <Suspense fallback=|| view! { <section class="panel"><p>"Loading…"</p></section> }>
            {move || Suspend::new(async move {
                match loaded.await {
                    Ok(Some(state)) => view! { <Live initial=state/> }.into_any(),
                    Ok(None) => view! {
                        <section class="panel">
                            <h1>"No such workflow"</h1>
                            <p>"It may belong to another workspace, or the link is wrong. "
                               <a href="/">"Back to the workspace"</a></p>
                        </section>
                    }.into_any(),
                    Err(e) => view! { <section class="panel"><p class="form-error">{e}</p></section> }.into_any(),
                }
            })}
        </Suspense>
    }
    .into_any()
}

/// One workflow followed live from `initial`.
#[component]
fn Live(initial: WorkflowState) -> impl IntoView {
    let state = RwSignal::new(initial.clone());
    let connection = RwSignal::new(Connection::Connecting);
    let viewing = RwSignal::new(None::<(i64, WorkflowState)>);
    let actions = Actions {
        busy: RwSignal::new(None),
        notice: RwSignal::new(None),
    };

    #[cfg(feature = "hydrate")]
    {
        let url = format!("/api/workflows/{}/events", initial.id);
        let stream = crate::live::LiveStream::open(
            &url,
            initial.last_event_id,
            move |ty, data, _| {
                if ty == "snapshot" {
                    if let Ok(s) = crate::data::decode::<WorkflowState>(data) {
                        state.set(s);
                    }
                } else if let Ok(rec) = crate::data::decode::<cairn::EventRecord>(data) {
                    state.update(|s| {
                        if rec.id > s.last_event_id {
                            let _ = s.apply(&rec);
                        }
                    });
                }
            },
            move |c| connection.set(c),
        );
        let keep = send_wrapper::SendWrapper::new(stream);
        on_cleanup(move || keep.close());
    }

    let shown =
        Signal::derive(move || viewing.get().map(|(_, s)| s).unwrap_or_else(|| state.get()));
    let live = move || viewing.with(Option::is_none);

    view! {
        <Header state=shown connection actions live=Signal::derive(live)/>
        <Show when=move || !live()>
            <div class="travel" role="status" data-testid="time-travel">
                {move || viewing.get().map(|(id, s)| format!(
                    "Viewing the workflow as it was at event #{id}{}",
                    s.updated_at.map(|t| format!(" ({})", clock_time(t))).unwrap_or_default()
                ))}
                <button class="btn btn-ghost" on:click=move |_| viewing.set(None)>"Back to live"</button>
            </div>
        </Show>
        <section class="panel" aria-label="Graph">
            <Dag state=shown/>
        </section>
        <section class="steps" aria-label="Steps">
            <For each=move || shown.with(|s| s.steps.iter().map(|st| st.id.clone()).collect::<Vec<_>>()) key=|id| id.clone() let:step_id>
                <StepCard state=shown step_id actions live=Signal::derive(live)/>
            </For>
        </section>
        <History id=initial.id.clone() viewing last=Signal::derive(move || state.with(|s| s.last_event_id))/>
    }
}

#[component]
fn Header(
    state: Signal<WorkflowState>,
    connection: RwSignal<Connection>,
    actions: Actions,
    live: Signal<bool>,
) -> impl IntoView {
    let now = use_clock();
    let status = Signal::derive(move || state.with(|s| s.status.as_str()));
    let progress = move || state.with(|s| s.progress());
    let pct = move || {
        let p = progress();
        percent(p.done, p.total)
    };
    let elapsed = move || {
        state.with(|s| match (s.started_at.or(s.created_at), s.finished_at) {
            (Some(a), Some(b)) => format!("took {}", duration_ms((b - a).num_milliseconds())),
            (Some(a), None) => format!(
                "running for {}",
                duration_ms((now.get() - a).num_milliseconds())
            ),
            _ => String::new(),
        })
    };
    let id = move || state.with(|s| s.id.clone());
    let can_resume = move || {
        live.get()
            && state.with(|s| {
                matches!(
                    s.status,
                    WorkflowStatus::Failed
                        | WorkflowStatus::Cancelled
                        | WorkflowStatus::Stalled
                        | WorkflowStatus::Paused
                )
            })
    };
    let can_cancel = move || live.get() && state.with(|s| !s.status.is_terminal());
    let resume = move |_| {
        actions.run(
            "Resume".into(),
            format!("/api/workflows/{}/resume", id()),
            None,
        )
    };
    let cancel = move |_| {
        actions.run(
            "Cancel".into(),
            format!("/api/workflows/{}/cancel", id()),
            None,
        )
    };
    view! {
        <section class="panel wf-header">
            <div class="wf-title">
                <div>
                    <h1 data-testid="workflow-name">{move || state.with(|s| s.name.clone())}</h1>
                    <p class="muted mono">{id}</p>
                </div>
                <div class="wf-status">
                    <span data-testid="workflow-status"><Badge status/></span>
                    <span class=move || connection.get().class() data-testid="stream-connection">
                        <span class="conn-dot" aria-hidden="true"></span>
                        {move || connection.get().label()}
                    </span>
                </div>
            </div>
            <div class="wf-progress wide">
                <div class="bar" role="progressbar" aria-label="Progress" aria-valuemin="0"
                     aria-valuemax=move || progress().total aria-valuenow=move || progress().done>
                    <div class=move || format!("bar-fill bar-{}", status.get()) style=move || format!("width: {}%", pct())></div>
                </div>
                <span class="wf-count" data-testid="progress">{move || { let p = progress(); format!("{}/{} steps", p.done, p.total) }}</span>
                <span class="muted">{elapsed}</span>
            </div>
            {move || state.with(|s| s.error.clone()).map(|e| view! { <p class="wf-error" data-testid="workflow-error">{e}</p> })}
            <div class="actions">
                <button class="btn btn-primary" disabled=move || !can_resume() || actions.busy.get().is_some()
                        on:click=resume aria-label="Resume workflow">"Resume"</button>
                <button class="btn btn-danger" disabled=move || !can_cancel() || actions.busy.get().is_some()
                        on:click=cancel aria-label="Cancel workflow">"Cancel"</button>
                <span class="notice" role="status" data-testid="notice">
                    {move || actions.busy.get().map(|b| format!("{b}…"))}
                    {move || actions.notice.get().map(|(ok, m)| view! { <span class=if ok { "ok" } else { "bad" }>{m}</span> })}
                </span>
            </div>
        </section>
    }
}
