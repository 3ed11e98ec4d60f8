//! The workspace's landing page.

use leptos::prelude::*;

use crate::components::SpecChecker;

/// What a person sees first: what cairn is, and a spec checker to try a workflow spec.
#[component]
pub fn Home() -> impl IntoView {
    view! {
        <section class="panel">
            <h1>"Workspace"</h1>
            <p class="lede">
                "cairn runs multi-step workflows in the background, checkpoints every change and "
                "picks up where it stopped after a crash. Write a spec below: it is checked as "
                "you type, by the same code the server uses."
            </p>
        </section>
        <SpecChecker/>
    }
}
