//! The workspace's landing page: start a workflow.

use leptos::prelude::*;

use crate::components::StartForm;

/// What a person sees first: what cairn is, and the form to start a workflow.
///
/// Lazily loaded: the form and its spec validator are a WASM chunk of their own, which only
/// this page needs (the server names it for preloading when it renders the page).
#[lazy]
pub fn home_view() -> AnyView {
    view! {
            <section class="panel intro">
                <h1>"Workspace"</h1>
                <p class="lede">
                    "Workflows run in the background, every change is checkpointed, and a crash or "
                    "a restart picks up where it stopped. Pick one on the left to watch it live, or "
                    "start a new one: the spec is checked as you type, by the same code the server uses."
                </p>
            </section>
            <StartForm/>
    }
    .into_any()
}
