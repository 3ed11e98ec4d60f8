//! A workflow's history: its event log as a timeline; clicking an event shows the workflow
//! as it was right after it (the fold stopped there).

use cairn::{EventRecord, WorkflowState};
use leptos::prelude::*;

use crate::time::clock_time;

/// The event log as a timeline; clicking an event shows the workflow as it was then.
#[component]
pub fn History(
    id: String,
    viewing: RwSignal<Option<(i64, WorkflowState)>>,
    last: Signal<i64>,
) -> impl IntoView {
    let (open, set_open) = signal(false);
    let events = RwSignal::new(Vec::<EventRecord>::new());
    let (error, set_error) = signal(None::<String>);
    let load = {
        let id = id.clone();
        move || {
            #[cfg(feature = "hydrate")]
            {
                let id = id.clone();
                leptos::task::spawn_local(async move {
                    match crate::data::load_history(id).await {
                        Ok(e) => events.set(e),
                        Err(e) => set_error.set(Some(e)),
                    }
                });
            }
            #[cfg(not(feature = "hydrate"))]
            let _ = (&id, set_error);
        }
    };
    // Keep the timeline current while it is open.
    let reload = load.clone();
    Effect::new(move |_| {
        let _ = last.get();
        if open.get_untracked() {
            reload();
        }
    });
    let toggle = move |_| {
        let now_open = !open.get_untracked();
        set_open.set(now_open);
        if now_open {
            load();
        }
    };
    let wf = id.clone();
    // The fold stopped early: the state as it was right after event `upto`.
    let travel = Callback::new(move |upto: i64| {
        let mut s = WorkflowState::new(wf.clone());
        events.with_untracked(|evs| {
            for e in evs.iter().take_while(|e| e.id <= upto) {
                let _ = s.apply(e);
            }
        });
        viewing.set(Some((upto, s)));
    });
    view! {
        <section class="panel history" aria-label="History">
            <div class="panel-head">
                <h2>"History"</h2>
                <button class="btn btn-ghost" on:click=toggle aria-expanded=move || open.get().to_string()>
                    {move || if open.get() { "Hide events" } else { "Show events" }}
                </button>
            </div>
            {move || error.get().map(|e| view! { <p class="form-error">{e}</p> })}
            <Show when=move || open.get()>
                <ol class="timeline" data-testid="timeline">
                    <For each=move || events.get() key=|e| e.id let:e>
                        {
                            let id = e.id;
                            let selected = move || viewing.with(|v| v.as_ref().is_some_and(|(i, _)| *i == id));
                            view! {
                                <li class=move || if selected() { "tl-item selected" } else { "tl-item" }>
                                    <button class="tl-button" on:click=move |_| travel.run(id)>
                                        <span class="tl-time mono">{clock_time(e.at)}</span>
                                        <span class=format!("tl-type tl-{}", e.event.type_name().replace('.', "-"))>{e.event.type_name()}</span>
                                        <span class="tl-step">{e.event.step_id().map(str::to_string).unwrap_or_default()}</span>
                                        <span class="tl-id muted">{format!("#{id}")}</span>
                                    </button>
                                </li>
                            }
                        }
                    </For>
                </ol>
            </Show>
        </section>
    }
}
