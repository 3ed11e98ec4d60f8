//! `/workflows/{id}`: one workflow, live — its graph, its steps, the controls, its history.
//!
//! The server renders the committed state; in the browser the page follows
//! `/api/workflows/{id}/events` from that state's `last_event_id` and folds every event with
//! `WorkflowState::apply`. Controls post to the API and show at once that they were sent;
//! their effect arrives through the stream like any other change.

use cairn::{StepState, StepStatus, WorkflowState, WorkflowStatus};
use leptos::prelude::*;

use super::history::History;
use crate::{
    components::{Badge, Dag},
    data::{load_once, load_workflow},
    live::Connection,
    time::{ago, clock_time, duration_ms, percent, until, use_clock},
};

/// What the controls are doing, shared by every button of the page.
#[derive(Clone, Copy)]
struct Actions {
    busy: RwSignal<Option<String>>,
    notice: RwSignal<Option<(bool, String)>>,
}

impl Actions {
    /// Posts a control; `label` is what the button does ("Cancel", "Retry design").
    fn run(self, label: String, url: String, body: Option<String>) {
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

#[component]
fn StepCard(
    state: Signal<WorkflowState>,
    step_id: String,
    actions: Actions,
    live: Signal<bool>,
) -> impl IntoView {
    let now = use_clock();
    let sid = step_id.clone();
    let step = Signal::derive(move || state.with(|s| s.step(&sid).cloned()));
    let wf_id = move || state.with(|s| s.id.clone());
    let (skip_output, set_skip_output) = signal(String::new());
    let (skipping, set_skipping) = signal(false);
    let status = Signal::derive(move || {
        step.with(|s| s.as_ref().map(|s| s.status.as_str()).unwrap_or("pending"))
    });
    let st = move || step.with(|s| s.as_ref().map(|s| s.status).unwrap_or(StepStatus::Pending));
    // A step control: what the button says it did, the route under the step, the body.
    let control = {
        let step_id = step_id.clone();
        move |label: String, route: &str, body: Option<String>| {
            actions.run(
                label,
                format!("/api/workflows/{}/steps/{step_id}/{route}", wf_id()),
                body,
            )
        }
    };
    let (retry_ctl, now_ctl, skip_ctl) = (control.clone(), control.clone(), control);
    let retry_id = step_id.clone();
    let retry = move |_| retry_ctl(format!("Retry {retry_id}"), "retry", None);
    let now_id = step_id.clone();
    let retry_now = move |_| now_ctl(format!("Retry {now_id} now"), "retry-now", None);
    let skip_id = step_id.clone();
    let skip = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let out = skip_output.get_untracked();
        let body = if out.is_empty() {
            None
        } else {
            Some(serde_json::json!({ "output": out }).to_string())
        };
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
    let label_now = format!("Retry {step_id} now");
    let label_retry = format!("Retry step {step_id}");
    let label_skip = format!("Skip step {step_id}");
    let input_id = format!("skip-{step_id}");
    let input_id2 = input_id.clone();

    let attempt_line = move || {
        step.with(|s| {
            s.as_ref()
                .map(|s| {
                    if s.attempt == 0 {
                        String::new()
                    } else {
                        format!("attempt {} of {}", s.attempt, s.max_attempts)
                    }
                })
                .unwrap_or_default()
        })
    };
    let timing = move || {
        step.with(|s| {
            s.as_ref()
                .map(|s| timing_text(s, now.get()))
                .unwrap_or_default()
        })
    };
    let countdown = move || {
        step.with(|s| {
            s.as_ref().and_then(|s| {
                (s.status == StepStatus::Retrying)
                    .then(|| {
                        s.next_attempt_at
                            .map(|t| format!("next attempt {}", until(t, now.get())))
                    })
                    .flatten()
            })
        })
    };
    view! {
        <article class="step" id=html_id.clone() data-testid=html_id data-status=move || status.get()>
            <header class="step-head">
                <div class="step-name">
                    <h3>{step_id.clone()}</h3>
                    <span class="muted">{move || step.with(|s| s.as_ref().map(|s| s.role.clone()).unwrap_or_default())}</span>
                </div>
                <div class="step-facts">
                    <span class="muted" data-testid="attempt">{attempt_line}</span>
                    <span class="muted">{timing}</span>
                    <Badge status/>
                </div>
            </header>
            <p class="countdown" data-testid="countdown">{countdown}</p>
            {move || step.with(|s| s.as_ref().and_then(|s| s.error.clone())).map(|e| view! { <p class="step-error" data-testid="step-error">{e}</p> })}
            {move || step.with(|s| s.as_ref().and_then(|s| s.task.clone())).map(|t| view! {
                <div class="kv"><span class="k">"Task"</span><span class="v mono">{t}</span></div>
            })}
            {move || step.with(|s| s.as_ref().and_then(|s| s.session_id.clone())).map(|t| view! {
                <div class="kv"><span class="k">"Session"</span><span class="v mono" data-testid="session-id">{t}</span></div>
            })}
            {move || step.with(|s| s.as_ref().and_then(|s| s.output.clone())).map(|o| view! {
                <details class="output">
                    <summary>"Output " <span class="muted">{format!("({} chars)", o.chars().count())}</span></summary>
                    <pre class="mono" data-testid="output">{o}</pre>
                </details>
            })}
            {move || step.with(|s| s.as_ref().filter(|s| !s.attempts.is_empty()).map(attempts_table))}
            {move || step.with(|s| s.as_ref().filter(|s| !s.logs.is_empty()).map(|s| {
                let running = s.status == StepStatus::Running;
                let lines = s.logs.iter().rev().take(if running { 12 } else { 200 }).rev()
                    .map(|l| format!("{}  {}", clock_time(l.at), l.line)).collect::<Vec<_>>().join("\n");
                view! {
                    <details class="logs" open=running>
                        <summary>{if running { "Live log" } else { "Log" }} <span class="muted">{format!(" ({} lines kept)", s.logs.len())}</span></summary>
                        <pre class="mono log-tail" data-testid="log-tail">{lines}</pre>
                    </details>
                }
            }))}
            <div class="actions step-actions">
                <Show when=can_retry_now>
                    <button class="btn btn-primary" disabled=busy on:click=retry_now.clone() aria-label=label_now.clone()>"Retry now"</button>
                </Show>
                <Show when=can_retry>
                    <button class="btn" disabled=busy on:click=retry.clone() aria-label=label_retry.clone()>"Retry step"</button>
                </Show>
                <Show when=can_skip>
                    <button class="btn btn-ghost" disabled=busy on:click=move |_| set_skipping.update(|v| *v = !*v)
                            aria-expanded=move || skipping.get().to_string() aria-label=label_skip.clone()>"Skip step…"</button>
                </Show>
            </div>
            <Show when=move || skipping.get() && can_skip()>
                <form class="skip-form" on:submit=skip.clone()>
                    <label class="field-label" for=input_id.clone()>"Output to use instead (optional)"</label>
                    <input id=input_id2.clone() class="input" type="text"
                           prop:value=move || skip_output.get() on:input=move |ev| set_skip_output.set(event_target_value(&ev))/>
                    <button class="btn btn-primary" type="submit">"Skip it"</button>
                </form>
            </Show>
        </article>
    }
}

fn timing_text(s: &StepState, now: chrono::DateTime<chrono::Utc>) -> String {
    match (s.started_at, s.finished_at, s.duration_ms) {
        (_, Some(_), Some(d)) => format!("took {}", duration_ms(d as i64)),
        (Some(a), None, _) if s.status == StepStatus::Running => {
            format!("running {}", duration_ms((now - a).num_milliseconds()))
        }
        (Some(a), _, _) => format!("started {}", ago(a, now)),
        _ => String::new(),
    }
}

fn attempts_table(s: &StepState) -> impl IntoView + use<> {
    let rows = s
        .attempts
        .iter()
        .map(|a| {
            view! {
                <tr>
                    <td>{a.attempt}</td>
                    <td class="mono">{clock_time(a.started_at)}</td>
                    <td>{a.duration_ms.map(|d| duration_ms(d as i64)).unwrap_or_else(|| "…".into())}</td>
                    <td class="attempt-error">{a.error.clone().unwrap_or_else(|| if a.finished_at.is_some() { "ok".into() } else { String::new() })}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <details class="attempts" open=s.attempts.iter().any(|a| a.error.is_some())>
            <summary>{format!("Attempts ({})", s.attempts.len())}</summary>
            <table class="table" data-testid="attempts">
                <thead><tr><th>"#"</th><th>"Started"</th><th>"Took"</th><th>"Result"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </details>
    }
}
