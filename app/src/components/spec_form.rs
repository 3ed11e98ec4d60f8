//! Starting a workflow: a spec editor that validates as you type, ready examples, submit.
//!
//! The validation is `cairn::parse_spec` compiled to WASM with the server's roles: the form
//! shows exactly the problems (and JSON paths) the server would, and sends nothing while
//! there are any. Each submit carries a fresh `Idempotency-Key`, so a double click or a
//! retried request starts one workflow.

use std::collections::BTreeSet;

use cairn::{ParseOptions, SpecErrors, SpecText, ValidSpec, parse_spec_value, read_spec_text};
use leptos::{html::Div, prelude::*};

use crate::{
    data::{load_once, load_roles},
    html::{push_escaped, push_fmt},
};

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
    // The verdict only displays: markup, redrawn as the text, the server's answer or the
    // message change.
    let verdict_markup = move || {
        verdict.with(|v| {
            server_errors
                .with(|server| message.with(|m| verdict_html(v.as_ref(), server, m.as_deref())))
        })
    };
    let verdict_el = NodeRef::<Div>::new();
    crate::html::follow(
        move || verdict_el.get().map(Into::into),
        verdict_markup,
        "id",
    );
    // The example buttons are markup too; one handler reads which was clicked.
    let pick_example = move |ev: leptos::ev::MouseEvent| {
        if let Some(spec) = picked_example(&ev) {
            set_text.set(spec.to_string());
            set_server_errors.set(vec![]);
        }
    };

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
                <div class="examples" role="group" aria-label="Examples" on:click=pick_example
                     inner_html=examples_html()></div>
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
                    <div class="verdict" data-testid="spec-verdict" aria-live="polite"
                         node_ref=verdict_el inner_html=untrack(verdict_markup)></div>
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

/// The example buttons, each with its index in [`EXAMPLES`].
fn examples_html() -> String {
    let mut out = String::new();
    for (i, (label, _)) in EXAMPLES.iter().enumerate() {
        push_fmt(
            &mut out,
            format_args!(r#"<button type="button" class="btn btn-ghost" data-example="{i}">"#),
        );
        push_escaped(&mut out, label);
        out.push_str("</button>");
    }
    out
}

/// The spec of the example whose button a click landed on.
fn picked_example(ev: &leptos::ev::MouseEvent) -> Option<&'static str> {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let target = ev.target()?.dyn_into::<web_sys::Element>().ok()?;
        let i: usize = target
            .closest("[data-example]")
            .ok()??
            .get_attribute("data-example")?
            .parse()
            .ok()?;
        EXAMPLES.get(i).map(|(_, spec)| *spec)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = ev;
        None
    }
}

/// The verdict on the text: valid (name, step count, step order), every problem at its path,
/// or waiting for the YAML reader; then what the server refused, and a message.
fn verdict_html(
    verdict: Option<&Result<ValidSpec, SpecErrors>>,
    server: &[(String, String)],
    message: Option<&str>,
) -> String {
    let mut out = String::new();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let errors =
        |out: &mut String, testid: &str, errors: &mut dyn Iterator<Item = (&str, &str)>| {
            push_fmt(
                out,
                format_args!(r#"<ul class="spec-errors" data-testid="{testid}">"#),
            );
            for (path, message) in errors {
                out.push_str(r#"<li><code class="error-path">"#);
                push_escaped(out, if path.is_empty() { "spec" } else { path });
                out.push_str("</code> <span>");
                push_escaped(out, message);
                out.push_str("</span></li>");
            }
            out.push_str("</ul>");
        };
    match verdict {
        Some(Ok(spec)) => {
            let count = spec.steps.len();
            out.push_str(r#"<p class="verdict-ok" data-testid="spec-ok"><span class="badge badge-completed">valid</span> "#);
            push_escaped(&mut out, &spec.name);
            push_fmt(
                &mut out,
                format_args!(" · {count} step{} · ", plural(count)),
            );
            let order = spec.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>();
            push_escaped(&mut out, &order.join(" · "));
            out.push_str("</p>");
        }
        Some(Err(e)) => {
            let n = e.errors.len();
            push_fmt(
                &mut out,
                format_args!(
                    r#"<p class="verdict-bad"><span class="badge badge-failed">invalid</span> {n} problem{}</p>"#,
                    plural(n)
                ),
            );
            errors(
                &mut out,
                "spec-errors",
                &mut e
                    .errors
                    .iter()
                    .map(|e| (e.path.as_str(), e.message.as_str())),
            );
        }
        None => out.push_str(r#"<p class="verdict-wait">Reading the YAML…</p>"#),
    }
    if !server.is_empty() {
        errors(
            &mut out,
            "server-errors",
            &mut server.iter().map(|(p, m)| (p.as_str(), m.as_str())),
        );
    }
    if let Some(m) = message {
        out.push_str(r#"<p class="form-error" role="alert">"#);
        push_escaped(&mut out, m);
        out.push_str("</p>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_a_valid_spec_or_lists_every_problem_escaped() {
        let spec = cairn::parse_spec(EXAMPLES[0].1, &ParseOptions::default()).unwrap();
        let ok = verdict_html(Some(&Ok(spec)), &[], None);
        assert!(
            ok.contains("valid</span> ship-login · 3 steps · design · implement · test</p>"),
            "{ok}"
        );

        let bad = cairn::parse_spec(
            r#"{"steps": [{"id": "a", "role": "<wizard>", "task": "x"}], "name": 3}"#,
            &ParseOptions {
                known_roles: Some(["developer".to_string()].into()),
                ..ParseOptions::default()
            },
        )
        .unwrap_err();
        let n = bad.errors.len();
        let html = verdict_html(
            Some(&Err(bad)),
            &[("".into(), "<refused>".into())],
            Some("down & out"),
        );
        assert!(
            html.contains(&format!("invalid</span> {n} problem")),
            "{html}"
        );
        assert_eq!(
            html.matches(r#"<li><code class="error-path">"#).count(),
            n + 1
        );
        assert!(html.contains("&lt;wizard&gt;"), "{html}");
        assert!(!html.contains("<wizard>"));
        assert!(html.contains(r#"data-testid="server-errors"><li><code class="error-path">spec</code> <span>&lt;refused&gt;</span>"#));
        assert!(html.contains(r#"role="alert">down &amp; out</p>"#));

        assert!(verdict_html(None, &[], None).contains("Reading the YAML…"));
    }

    #[test]
    fn each_example_is_a_button_with_its_index() {
        let html = examples_html();
        assert_eq!(html.matches("<button").count(), EXAMPLES.len());
        assert!(html.contains(r#"data-example="2">A flaky step that retries</button>"#));
    }
}
