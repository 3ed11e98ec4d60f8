//! The workspace's landing page: start a workflow.

use leptos::prelude::*;
use leptos_router::{LazyRoute, lazy_route};

use crate::components::StartForm;

/// What a person sees first: what cairn is, and the form to start a workflow.
///
/// A lazily loaded route: the form and its spec validator are a WASM chunk of their own, which
/// only this page needs (the server preloads it when it renders the page).
pub struct Home;

#[lazy_route]
impl LazyRoute for Home {
    fn data() -> Self {
        Home
    }

    fn view(_this: Self) -> AnyView {
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
}
