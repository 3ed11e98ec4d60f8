//! A workflow's history: its event log as a timeline; clicking an event shows the workflow
//! as it was right after it (the fold stopped there).
//!
//! The timeline only displays, so it is markup text ([`timeline_html`]); its buttons carry
//! the event's id, and one click handler on the list reads it.

use cairn::{EventRecord, WorkflowState};
use leptos::{html::Ol, prelude::*};

use crate::{
    html::{push_escaped, push_fmt},
    time::clock_time,
};

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
    // The fold stopped early: the state as it was right after event `upto`.
    let travel = move |upto: i64| {
        let mut s = WorkflowState::new(id.clone());
        events.with_untracked(|evs| {
            for e in evs.iter().take_while(|e| e.id <= upto) {
                let _ = s.apply(e);
            }
        });
        viewing.set(Some((upto, s)));
    };
    let pick = move |ev: leptos::ev::MouseEvent| {
        if let Some(id) = picked_event(&ev) {
            travel(id);
        }
    };
    let html = move || {
        let selected = viewing.with(|v| v.as_ref().map(|(i, _)| *i));
        events.with(|evs| timeline_html(evs, selected))
    };
    let list = NodeRef::<Ol>::new();
    crate::html::follow(move || list.get().map(Into::into), html, "data-event");

    view! {
        <section class="panel history" aria-label="History">
            <div class="panel-head">
                <h2>"History"</h2>
                <button class="btn btn-ghost" on:click=toggle aria-expanded=move || open.get().to_string()>
                    {move || if open.get() { "Hide events" } else { "Show events" }}
                </button>
            </div>
            <p class="form-error" hidden=move || error.with(Option::is_none)>{move || error.get()}</p>
            <ol class="timeline" data-testid="timeline" node_ref=list on:click=pick
                hidden=move || !open.get() inner_html=untrack(html)></ol>
        </section>
    }
}

/// The id of the event whose button a click landed on.
fn picked_event(ev: &leptos::ev::MouseEvent) -> Option<i64> {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let target = ev.target()?.dyn_into::<web_sys::Element>().ok()?;
        target
            .closest("[data-event]")
            .ok()??
            .get_attribute("data-event")?
            .parse()
            .ok()
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = ev;
        None
    }
}

/// One button per event: its time, type, step and id; `selected` is the event shown.
fn timeline_html(events: &[EventRecord], selected: Option<i64>) -> String {
    let mut out = String::with_capacity(events.len() * 220);
    for e in events {
        let ty = e.event.type_name();
        push_fmt(
            &mut out,
            format_args!(
                r#"<li class="tl-item{}"><button class="tl-button" data-event="{}"><span class="tl-time mono">{}</span><span class="tl-type tl-{}">{ty}</span><span class="tl-step">"#,
                if selected == Some(e.id) {
                    " selected"
                } else {
                    ""
                },
                e.id,
                clock_time(e.at),
                ty.replace('.', "-"),
            ),
        );
        push_escaped(&mut out, e.event.step_id().unwrap_or_default());
        push_fmt(
            &mut out,
            format_args!(
                r##"</span><span class="tl-id muted">#{}</span></button></li>"##,
                e.id
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use cairn::Event;

    use super::*;

    #[test]
    fn each_event_is_a_button_with_its_id_and_the_shown_one_is_marked() {
        let at = "2026-01-01T12:00:05Z".parse().unwrap();
        let events = vec![
            EventRecord::new(3, "wf", at, Event::WorkflowStarted {}),
            EventRecord::new(
                4,
                "wf",
                at,
                Event::StepFailed {
                    step_id: "<ship>".into(),
                    attempt: 1,
                    error: "x".into(),
                    duration_ms: 5,
                },
            ),
        ];
        let html = timeline_html(&events, Some(4));
        assert_eq!(html.matches("<button").count(), 2, "{html}");
        assert!(html.contains(r#"<li class="tl-item"><button class="tl-button" data-event="3"><span class="tl-time mono">12:00:05</span><span class="tl-type tl-workflow-started">workflow.started</span>"#));
        assert!(
            html.contains(
                r#"<li class="tl-item selected"><button class="tl-button" data-event="4">"#
            )
        );
        assert!(html.contains(
            r#"<span class="tl-step">&lt;ship&gt;</span><span class="tl-id muted">#4</span>"#
        ));
    }
}
