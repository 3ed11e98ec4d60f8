//! Starting a workflow: a spec editor that validates as you type, ready examples, submit.
//!
//! The validation is `cairn::parse_spec` compiled to WASM with the server's roles: the form
//! shows exactly the problems (and JSON paths) the server would, and sends nothing while
//! there are any. Each submit carries a fresh `Idempotency-Key`, so a double click or a
//! retried request starts one workflow.

use std::collections::BTreeSet;

use cairn::{ParseOptions, SpecErrors, SpecText, ValidSpec, parse_spec_value, read_spec_text};
use leptos::prelude::*;

use crate::data::{load_once, load_roles};

/// The ready examples: (label, spec).
pub const EXAMPLES: [(&str, &str); 3] = [
    (
        "Design → implement → test",
        r#"{
  "name": "ship-login",
  "inputs": { "feature": "login" },
  "steps": [
    { "id": "design",    "role": "architect", "task": "Design {inputs.feature}",
      "params": { "duration_ms": 1500 } },
    { "id": "implement", "role": "developer", "task": "Build {design.output}", "deps": ["design"],
      "params": { "duration_ms": 2000, "log_lines": 5 } },
    { "id": "test",      "role": "tester",    "task": "Test {implement.output}", "deps": ["implement"],
      "params": { "duration_ms": 1500 } }
  ]
}"#,
    ),
    (
        "Fan-out and join",
        r#"{
  "name": "review-fanout",
  "steps": [
    { "id": "plan",     "role": "architect", "task": "Split the review", "params": { "duration_ms": 800 } },
    { "id": "api",      "role": "reviewer",  "task": "Review the API after {plan.output}", "deps": ["plan"], "params": { "duration_ms": 1800 } },
    { "id": "ui",       "role": "reviewer",  "task": "Review the UI after {plan.output}", "deps": ["plan"], "params": { "duration_ms": 2400 } },
    { "id": "storage",  "role": "reviewer",  "task": "Review storage after {plan.output}", "deps": ["plan"], "params": { "duration_ms": 1200 } },
    { "id": "summary",  "role": "architect", "task": "Summarise {api.output}; {ui.output}; {storage.output}",
      "deps": ["api", "ui", "storage"], "params": { "duration_ms": 800 } }
  ]
}"#,
    ),
    (
        "A flaky step that retries",
        r#"name: flaky-deploy
steps:
  - id: build
    role: developer
    task: Build the release
    params: { duration_ms: 800 }
  - id: deploy
    role: developer
    task: Deploy {build.output}
    deps: [build]
    retry: { max_attempts: 4, initial_interval_ms: 2000, jitter: false }
    params: { duration_ms: 600, fail_attempts: 2, error: "503 upstream busy" }
  - id: smoke
    role: tester
    task: Smoke-test {deploy.output}
    deps: [deploy]
    params: { duration_ms: 700 }
"#,
    ),
];

/// The form.
#[component]
pub fn StartForm() -> impl IntoView {
    let nav = crate::nav::use_nav();
    let roles = load_once(load_roles);
    let (text, set_text) = signal(EXAMPLES[0].1.to_string());
    let (server_errors, set_server_errors) = signal(Vec::<(String, String)>::new());
    let (message, set_message) = signal(None::<String>);
    let (busy, set_busy) = signal(false);

    let known = move || {
        roles
            .get()
            .and_then(Result::ok)
            .map(|r| r.into_iter().collect::<BTreeSet<String>>())
    };
    // The text read as YAML, for the text it was read from. The YAML reader is a WASM chunk
    // of its own, fetched in the background once the page is live, or when the text is first
    // YAML, whichever comes first.
    let yaml = RwSignal::new(None::<(String, Result<serde_json::Value, SpecErrors>)>);
    // `None` while the YAML reader is on its way.
    let verdict = Memo::new(move |_| {
        let opts = ParseOptions {
            known_roles: known(),
            ..ParseOptions::default()
        };
        text.with(|t| match read_spec_text(t, &opts) {
            Err(e) => Some(Err(e)),
            Ok(SpecText::Json(v)) => Some(parse_spec_value(&v, &opts)),
            Ok(SpecText::Yaml { json_error }) => {
                if cfg!(feature = "hydrate") {
                    yaml.with(|y| match y {
                        Some((read, v)) if read == t => {
                            Some(v.clone().and_then(|v| parse_spec_value(&v, &opts)))
                        }
                        _ => None,
                    })
                } else {
                    Some(
                        cairn::read_spec_yaml(t, json_error)
                            .and_then(|v| parse_spec_value(&v, &opts)),
                    )
                }
            }
        })
    });
    // Reads the text as YAML when the verdict waits for it (each edit of YAML text). A reading
    // that lands after the text changed again is dropped: the newer text has its own.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let t = text.get();
        if verdict.with(Option::is_some) {
            return;
        }
        let Ok(SpecText::Yaml { json_error }) = read_spec_text(&t, &ParseOptions::default()) else {
            return;
        };
        leptos::task::spawn_local(async move {
            let v = read_yaml(t.clone(), json_error).await;
            if text.with_untracked(|now| *now == t) {
                yaml.set(Some((t, v)));
            }
        });
    });
    let invalid = move || verdict.with(|v| !matches!(v, Some(Ok(_))));

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if busy.get_untracked() || untrack(invalid) {
            return;
        }
        set_server_errors.set(vec![]);
        set_message.set(None);
        #[cfg(not(feature = "hydrate"))]
        let _ = (set_busy, nav);
        #[cfg(feature = "hydrate")]
        {
            set_busy.set(true);
            let body = text.get_untracked();
            leptos::task::spawn_local(async move {
                let key = format!(
                    "ui-{:x}{:x}",
                    (js_sys::Math::random() * 1e15) as u64,
                    js_sys::Date::now() as u64
                );
                let yaml = !body.trim_start().starts_with(['{', '[']);
                let result = post_spec(&body, &key, yaml).await;
                set_busy.set(false);
                match result {
                    Ok(id) => nav.go(&format!("/workflows/{id}")),
                    Err(crate::data::PostError::Invalid(d)) => set_server_errors.set(d),
                    Err(crate::data::PostError::Other(m)) => set_message.set(Some(m)),
                }
            });
        }
    };

    view! {
        <section class="panel" aria-labelledby="start-title">
            <div class="panel-head">
                <h2 id="start-title">"Start a workflow"</h2>
                <div class="examples" role="group" aria-label="Examples">
                    {EXAMPLES
                        .iter()
                        .map(|(label, spec)| {
                            view! {
                                <button
                                    type="button"
                                    class="btn btn-ghost"
                                    on:click=move |_| {
                                        set_text.set(spec.to_string());
                                        set_server_errors.set(vec![]);
                                    }
                                >
                                    {*label}
                                </button>
                            }
                        })
                        .collect_view()}
                </div>
            </div>
            <form on:submit=submit>
                <label class="field-label" for="spec-editor">"Spec (JSON or YAML)"</label>
                <textarea
                    id="spec-editor"
                    class="spec-editor"
                    spellcheck="false"
                    rows="14"
                    prop:value=move || text.get()
                    on:input=move |ev| {
                        set_text.set(event_target_value(&ev));
                        set_server_errors.set(vec![]);
                    }
                >
                    {EXAMPLES[0].1}
                </textarea>
                <div class="form-foot">
                    <div class="verdict" data-testid="spec-verdict" aria-live="polite">
                        {move || verdict.with(|v| match v {
                            Some(Ok(spec)) => view! { <ValidSummary spec=spec.clone()/> }.into_any(),
                            Some(Err(errors)) => view! { <ErrorList errors=errors.clone()/> }.into_any(),
                            None => view! { <p class="verdict-wait">"Reading the YAML…"</p> }.into_any(),
                        })}
                        <Show when=move || !server_errors.with(Vec::is_empty)>
                            <ul class="spec-errors" data-testid="server-errors">
                                {move || server_errors.get().into_iter().map(|(p, m)| view! {
                                    <li><code class="error-path">{p}</code>" "<span>{m}</span></li>
                                }).collect_view()}
                            </ul>
                        </Show>
                        {move || message.get().map(|m| view! { <p class="form-error" role="alert">{m}</p> })}
                    </div>
                    <button
                        type="submit"
                        class="btn btn-primary"
                        disabled=move || busy.get() || invalid()
                    >
                        {move || if busy.get() { "Starting…" } else { "Start workflow" }}
                    </button>
                </div>
            </form>
        </section>
    }
}

/// The YAML half of the spec check, in a WASM chunk of its own: no page needs the YAML parser
/// to become interactive.
#[cfg(feature = "hydrate")]
#[lazy]
fn read_yaml(text: String, json_error: Option<String>) -> Result<serde_json::Value, SpecErrors> {
    cairn::read_spec_yaml(&text, json_error)
}

/// Fetches the YAML reader's chunk in the background (browser only, once a page is live), so
/// that it is at hand when someone types YAML, even in a page left open across an upgrade of
/// the server (chunk names change between builds).
#[cfg(feature = "hydrate")]
pub fn preload_yaml_reader() {
    let _ = lazy_preload!(read_yaml);
}

#[cfg(feature = "hydrate")]
async fn post_spec(body: &str, key: &str, yaml: bool) -> Result<String, crate::data::PostError> {
    let resp = if yaml {
        let req = gloo_net::http::Request::post("/api/workflows")
            .header("idempotency-key", key)
            .header("content-type", "application/yaml")
            .body(body.to_string())
            .map_err(|e| crate::data::PostError::Other(e.to_string()))?;
        let resp = req
            .send()
            .await
            .map_err(|e| crate::data::PostError::Other(e.to_string()))?;
        let v: serde_json::Value = match resp.text().await {
            Ok(text) => crate::data::decode(&text).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if resp.ok() {
            v
        } else {
            return Err(crate::data::PostError::Other(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("refused")
                    .to_string(),
            ));
        }
    } else {
        crate::data::post_json(
            "/api/workflows",
            Some(body.to_string()),
            &[("idempotency-key", key)],
        )
        .await?
    };
    resp["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| crate::data::PostError::Other("the server answered without an id".into()))
}

#[component]
fn ValidSummary(spec: ValidSpec) -> impl IntoView {
    let count = spec.steps.len();
    let order = spec
        .steps
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(" · ");
    view! {
        <p class="verdict-ok" data-testid="spec-ok">
            <span class="badge badge-completed">"valid"</span>
            {format!(" {} · {count} step{} · {order}", spec.name, if count == 1 { "" } else { "s" })}
        </p>
    }
}

#[component]
fn ErrorList(errors: SpecErrors) -> impl IntoView {
    let n = errors.errors.len();
    view! {
        <p class="verdict-bad">
            <span class="badge badge-failed">"invalid"</span>
            {format!(" {n} problem{}", if n == 1 { "" } else { "s" })}
        </p>
        <ul class="spec-errors" data-testid="spec-errors">
            {errors
                .errors
                .into_iter()
                .map(|e| {
                    let path = if e.path.is_empty() { "spec".to_string() } else { e.path };
                    view! {
                        <li>
                            <code class="error-path">{path}</code>
                            " "
                            <span>{e.message}</span>
                        </li>
                    }
                })
                .collect_view()}
        </ul>
    }
}
