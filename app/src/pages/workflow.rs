//! `/workflows/{id}`: one workflow, live — its graph, its steps, the controls, its history.
//!
//! The server renders the committed state; in the browser the page follows
//! `/api/workflows/{id}/events` from that state's `last_event_id` and folds every event with
//! `WorkflowState::apply`. Controls post to the API and show at once that they were sent;
//! their effect arrives through the stream like any other change.

use std::collections::{HashMap, HashSet};

use cairn::{WorkflowState, WorkflowStatus};
use chrono::{DateTime, Utc};
use leptos::{html::Div, prelude::*};

use super::{history::History, step_card};
use crate::{
    components::dag,
    data::{load_once, load_workflow},
    html::{Markup, escape, follow_markup, push_escaped, push_fmt},
    live::Connection,
    time::{clock_time, duration_ms, percent, use_clock},
};

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

/// Everything the page's markup shows besides the workflow: the clock, the connection, the
/// controls' state and what the person opened.
pub(super) struct Shown {
    pub(super) now: DateTime<Utc>,
    /// The event whose state is shown instead of the live one, and that state's time.
    travel: Option<(i64, Option<DateTime<Utc>>)>,
    /// Whether the live state is shown (controls are offered only then).
    pub(super) live: bool,
    connection: Connection,
    /// The control being sent ("Retry design"), if any.
    sending: Option<String>,
    /// How the last control went: sent, or why not.
    notice: Option<(bool, String)>,
    /// Whether a `<details>` section was opened or closed by hand, by its key (`log:build`).
    pub(super) opened: HashMap<String, bool>,
    /// The steps whose skip form is open.
    pub(super) skipping: HashSet<String>,
}

impl Shown {
    /// The live state at `now`, as first drawn: nothing opened or being sent.
    #[cfg(test)]
    pub(super) fn live_at(now: DateTime<Utc>) -> Self {
        Self {
            now,
            travel: None,
            live: true,
            connection: Connection::Live,
            sending: None,
            notice: None,
            opened: HashMap::new(),
            skipping: HashSet::new(),
        }
    }

    /// Whether a control is being sent (every button waits for it).
    pub(super) fn busy(&self) -> bool {
        self.sending.is_some()
    }
}

/// One workflow followed live from `initial`.
///
/// The page is one piece of markup ([`page`]) kept current by parts; its buttons and
/// summaries carry a `data-key`, and one click handler and one submit handler act on them.
#[component]
fn Live(initial: WorkflowState) -> impl IntoView {
    let id = initial.id.clone();
    let state = RwSignal::new(initial.clone());
    let connection = RwSignal::new(Connection::Connecting);
    let viewing = RwSignal::new(None::<(i64, WorkflowState)>);
    let sending = RwSignal::new(None::<String>);
    let notice = RwSignal::new(None::<(bool, String)>);
    let opened = RwSignal::new(HashMap::<String, bool>::new());
    let skipping = RwSignal::new(HashSet::<String>::new());

    #[cfg(feature = "hydrate")]
    {
        let url = format!("/api/workflows/{id}/events");
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

    let now = use_clock();
    let markup = move || {
        let travel = viewing.with(|v| v.as_ref().map(|(id, s)| (*id, s.updated_at)));
        let shown = Shown {
            now: now.get(),
            live: travel.is_none(),
            travel,
            connection: connection.get(),
            sending: sending.get(),
            notice: notice.get(),
            opened: opened.get(),
            skipping: skipping.get(),
        };
        viewing.with(|v| match v {
            Some((_, s)) => page(s, &shown),
            None => state.with(|s| page(s, &shown)),
        })
    };

    // Posts a control; `label` says what it does ("Retry design"), `route` is under the
    // workflow's URL. The button says at once that it was sent; the effect comes by the stream.
    let run = {
        let id = id.clone();
        move |label: String, route: String, body: Option<String>| {
            if sending.get_untracked().is_some() {
                return;
            }
            sending.set(Some(label.clone()));
            notice.set(None);
            let url = format!("/api/workflows/{id}/{route}");
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let result = crate::data::post_json(&url, body, &[]).await;
                sending.set(None);
                notice.set(Some(match result {
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
    };
    let submit_run = run.clone();

    let on_click = move |ev: leptos::ev::MouseEvent| {
        let Some((key, open)) = clicked(&ev) else {
            return;
        };
        let (action, step) = key.split_once(':').unwrap_or((key.as_str(), ""));
        match action {
            "resume" => run("Resume".into(), "resume".into(), None),
            "cancel" => run("Cancel".into(), "cancel".into(), None),
            "retry" => run(format!("Retry {step}"), format!("steps/{step}/retry"), None),
            "retry-now" => run(
                format!("Retry {step} now"),
                format!("steps/{step}/retry-now"),
                None,
            ),
            "skip" => skipping.update(|s| {
                if !s.remove(step) {
                    s.insert(step.to_string());
                }
            }),
            "back" => viewing.set(None),
            // A section's summary: the markup opens or closes it, and keeps it so.
            "out" | "att" | "log" => {
                ev.prevent_default();
                opened.update(|m| {
                    m.insert(key.clone(), !open);
                });
            }
            _ => {}
        }
    };
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some((step, output)) = skip_form(&ev) else {
            return;
        };
        skipping.update(|s| {
            s.remove(&step);
        });
        let body =
            (!output.is_empty()).then(|| serde_json::json!({ "output": output }).to_string());
        submit_run(format!("Skip {step}"), format!("steps/{step}/skip"), body);
    };

    let root = NodeRef::<Div>::new();
    follow_markup(move || root.get().map(Into::into), markup, "data-key");
    view! {
        <div class="wf-page" node_ref=root on:click=on_click on:submit=on_submit
             inner_html=untrack(move || markup().html())></div>
        <History id viewing last=Signal::derive(move || state.with(|s| s.last_event_id))/>
    }
}

/// The `data-key` of the control a click landed on, and whether the `<details>` around it
/// (for a summary) was open.
fn clicked(ev: &leptos::ev::MouseEvent) -> Option<(String, bool)> {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let target = ev.target()?.dyn_into::<web_sys::Element>().ok()?;
        let el = target.closest("[data-key]").ok()??;
        let open = el.parent_element().is_some_and(|p| p.has_attribute("open"));
        Some((el.get_attribute("data-key")?, open))
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = ev;
        None
    }
}

/// The step and the typed output of a submitted skip form.
fn skip_form(ev: &leptos::ev::SubmitEvent) -> Option<(String, String)> {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let form = ev.target()?.dyn_into::<web_sys::Element>().ok()?;
        let step = form.get_attribute("data-step")?;
        let input = form
            .query_selector("input")
            .ok()??
            .dyn_into::<web_sys::HtmlInputElement>()
            .ok()?;
        Some((step, input.value()))
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = ev;
        None
    }
}

/// The page's markup: header, the time-travel banner, the graph and the step cards.
fn page(s: &WorkflowState, v: &Shown) -> Markup {
    let mut m = Markup::new();
    header(&mut m, s, v);
    m.push(r#"<div class="travel" role="status" data-testid="time-travel""#);
    m.flag("hidden", v.travel.is_none());
    m.push("><span");
    m.content(
        v.travel
            .map(|(id, at)| {
                format!(
                    "Viewing the workflow as it was at event #{id}{}",
                    at.map(|t| format!(" ({})", clock_time(t)))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default(),
    );
    m.push(r#"</span><button class="btn btn-ghost" data-key="back">Back to live</button></div><section class="panel" aria-label="Graph"><div class="dag-wrap""#);
    m.content(dag::svg(s));
    m.push(r#"</div></section><section class="steps" aria-label="Steps">"#);
    for step in &s.steps {
        step_card::card(&mut m, &s.id, step, v);
    }
    m.push("</section>");
    m
}

/// Name, id, status, connection, progress, elapsed time, error, and the workflow's controls.
fn header(m: &mut Markup, s: &WorkflowState, v: &Shown) {
    let status = s.status.as_str();
    let p = s.progress();
    m.push(r#"<section class="panel wf-header" tabindex="-1"><div class="wf-title"><div><h1 data-testid="workflow-name""#);
    m.content(escape(&s.name));
    m.push(r#"</h1><p class="muted mono">"#);
    push_escaped(m.text(), &s.id);
    m.push(r#"</p></div><div class="wf-status"><span data-testid="workflow-status""#);
    m.content(format!(
        r#"<span class="badge badge-{status}">{status}</span>"#
    ));
    m.push("</span><span");
    m.attr("class", v.connection.class().into());
    m.push(r#" data-testid="stream-connection""#);
    m.content(format!(
        r#"<span class="conn-dot" aria-hidden="true"></span>{}"#,
        v.connection.label()
    ));
    m.push(r#"</span></div></div><div class="wf-progress wide"><div class="bar" role="progressbar" aria-label="Progress" aria-valuemin="0""#);
    m.attr("aria-valuemax", p.total.to_string());
    m.attr("aria-valuenow", p.done.to_string());
    m.push("><div");
    m.attr("class", format!("bar-fill bar-{status}"));
    m.attr("style", format!("width: {}%", percent(p.done, p.total)));
    m.push(r#"></div></div><span class="wf-count" data-testid="progress""#);
    m.content(format!("{}/{} steps", p.done, p.total));
    m.push(r#"</span><span class="muted""#);
    m.content(elapsed(s, v.now));
    m.push(r#"</span></div><p class="wf-error" data-testid="workflow-error""#);
    m.flag("hidden", s.error.is_none());
    m.content(s.error.as_deref().map(escape).unwrap_or_default());
    let can_resume = matches!(
        s.status,
        WorkflowStatus::Failed
            | WorkflowStatus::Cancelled
            | WorkflowStatus::Stalled
            | WorkflowStatus::Paused
    );
    m.push(r#"</p><div class="actions"><button class="btn btn-primary" data-key="resume" aria-label="Resume workflow""#);
    m.flag("disabled", !(v.live && can_resume) || v.busy());
    m.push(r#">Resume</button><button class="btn btn-danger" data-key="cancel" aria-label="Cancel workflow""#);
    m.flag("disabled", !v.live || s.status.is_terminal() || v.busy());
    m.push(r#">Cancel</button><span class="notice" role="status" data-testid="notice""#);
    let mut notice = String::new();
    if let Some(label) = &v.sending {
        push_escaped(&mut notice, label);
        notice.push('…');
    }
    if let Some((ok, text)) = &v.notice {
        push_fmt(
            &mut notice,
            format_args!(r#"<span class="{}">"#, if *ok { "ok" } else { "bad" }),
        );
        push_escaped(&mut notice, text);
        notice.push_str("</span>");
    }
    m.content(notice);
    m.push("</span></div></section>");
}

/// `took 3m 05s` once finished, `running for 12.0s` before.
fn elapsed(s: &WorkflowState, now: DateTime<Utc>) -> String {
    match (s.started_at.or(s.created_at), s.finished_at) {
        (Some(a), Some(b)) => format!("took {}", duration_ms((b - a).num_milliseconds())),
        (Some(a), None) => format!("running for {}", duration_ms((now - a).num_milliseconds())),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> WorkflowState {
        serde_json::from_value(serde_json::json!({
            "id": "wf_1", "name": "ship <it>", "status": "failed", "error": "step a: <boom>",
            "inputs": {}, "updated_at": null,
            "last_event_id": 9, "created_at": "2026-01-01T12:00:00Z",
            "started_at": "2026-01-01T12:00:00Z", "finished_at": "2026-01-01T12:01:05Z",
            "steps": [
                { "id": "a", "role": "developer", "deps": [], "status": "failed", "attempt": 1,
                  "max_attempts": 1, "error": "<boom>", "attempts": [], "logs": [] },
                { "id": "b", "role": "tester", "deps": ["a"], "status": "pending", "attempt": 0,
                  "max_attempts": 1, "attempts": [], "logs": [] }
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_header_shows_the_state_escaped_and_offers_what_it_allows() {
        let now = "2026-01-01T12:02:00Z".parse().unwrap();
        let html = page(&failed(), &Shown::live_at(now)).html();
        assert!(html.contains(">ship &lt;it&gt;</h1>"), "{html}");
        assert!(html.contains(r#">step a: &lt;boom&gt;</p>"#));
        assert!(html.contains(r#"data-testid="progress" data-p"#));
        assert!(html.contains(">0/2 steps<"));
        assert!(html.contains(">took 1m 05s<"));
        // Failed: it can be resumed, not cancelled.
        let resume = html.split(r#"data-key="resume""#).nth(1).unwrap();
        assert!(!resume.split('>').next().unwrap().contains("disabled"));
        let cancel = html.split(r#"data-key="cancel""#).nth(1).unwrap();
        assert!(cancel.split('>').next().unwrap().contains(" disabled"));
        // Both steps have a card, in order, after the graph.
        let (a, b) = (
            html.find(r#"id="step-a""#).unwrap(),
            html.find(r#"id="step-b""#).unwrap(),
        );
        assert!(html.find("<svg").unwrap() < a && a < b);
    }

    #[test]
    fn an_earlier_state_is_marked_and_offers_no_controls() {
        let now = "2026-01-01T12:02:00Z".parse().unwrap();
        let mut shown = Shown::live_at(now);
        shown.live = false;
        shown.travel = Some((4, Some("2026-01-01T12:00:30Z".parse().unwrap())));
        let html = page(&failed(), &shown).html();
        assert!(html.contains(">Viewing the workflow as it was at event #4 (12:00:30)</span>"));
        let resume = html.split(r#"data-key="resume""#).nth(1).unwrap();
        assert!(resume.split('>').next().unwrap().contains(" disabled"));
        assert!(!html.contains("Retry step a"));

        let live = page(&failed(), &Shown::live_at(now));
        assert!(live.html().contains("Retry step a"));
        // Going back and forth redraws parts, never the whole page.
        assert!(page(&failed(), &shown).changes_from(&live).is_some());
    }

    #[test]
    fn a_control_being_sent_disables_every_button_and_says_so() {
        let now = "2026-01-01T12:02:00Z".parse().unwrap();
        let mut shown = Shown::live_at(now);
        shown.sending = Some("Retry <a>".into());
        let html = page(&failed(), &shown).html();
        assert!(html.contains(">Retry &lt;a&gt;…</span>"), "{html}");
        assert!(html.contains(r#"aria-label="Retry step a" disabled>"#));
        shown.sending = None;
        shown.notice = Some((false, "Retry a: 409 conflict".into()));
        let html = page(&failed(), &shown).html();
        assert!(html.contains(r#"<span class="bad">Retry a: 409 conflict</span>"#));
    }
}
