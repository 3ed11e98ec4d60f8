//! A spec editor that validates as you type.
//!
//! The validation is `cairn::parse_spec`, compiled to WASM: the browser reports exactly the
//! problems (and JSON paths) the server would, before anything is sent. Roles are not checked
//! here because only the server knows which ones it binds.

use cairn::{ParseOptions, SpecErrors, ValidSpec, parse_spec};
use leptos::prelude::*;

/// The example a newcomer starts from: the design → implement → test chain.
pub const EXAMPLE_SPEC: &str = r#"{
  "name": "ship-login",
  "inputs": { "feature": "login" },
  "steps": [
    { "id": "design",    "role": "architect", "task": "Design {inputs.feature}" },
    { "id": "implement", "role": "developer", "task": "Build {design.output}", "deps": ["design"] },
    { "id": "test",      "role": "tester",    "task": "Test {implement.output}", "deps": ["implement"] }
  ]
}"#;

/// A textarea with the spec, and below it either a summary of the valid workflow or every
/// problem with its path.
#[component]
pub fn SpecChecker() -> impl IntoView {
    let (text, set_text) = signal(EXAMPLE_SPEC.to_string());
    let options = ParseOptions::default();
    let verdict = Memo::new(move |_| text.with(|t| parse_spec(t, &options)));

    view! {
        <section class="panel" aria-labelledby="checker-title">
            <h2 id="checker-title">"Check a workflow spec"</h2>
            <label class="field-label" for="spec-editor">"Spec (JSON or YAML)"</label>
            <textarea
                id="spec-editor"
                class="spec-editor"
                spellcheck="false"
                rows="12"
                prop:value=move || text.get()
                on:input=move |ev| set_text.set(event_target_value(&ev))
            >
                {EXAMPLE_SPEC}
            </textarea>
            <div class="verdict" data-testid="spec-verdict" aria-live="polite">
                {move || verdict.with(|v| match v {
                    Ok(spec) => view! { <ValidSummary spec=spec.clone()/> }.into_any(),
                    Err(errors) => view! { <ErrorList errors=errors.clone()/> }.into_any(),
                })}
            </div>
        </section>
    }
}

#[component]
fn ValidSummary(spec: ValidSpec) -> impl IntoView {
    let count = spec.steps.len();
    let order = spec
        .steps
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(" → ");
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
