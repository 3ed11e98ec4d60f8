//! The workspace frame every page shares: a header, the live "Workflows" sidebar and the
//! main panel.

use leptos::prelude::*;

use crate::components::Sidebar;

/// The sidebar + main panel frame around a page.
#[component]
pub fn Workspace(children: Children) -> impl IntoView {
    // Effects only run in the browser, after hydration: the attribute tells tests (and anyone
    // debugging) that the WASM half has taken over the server-rendered page.
    let (hydrated, set_hydrated) = signal(false);
    Effect::new(move |_| set_hydrated.set(true));

    view! {
        <div class="workspace" data-hydrated=move || hydrated.get().to_string()>
            <header class="topbar">
                <a class="brand" href="/">
                    <span class="brand-mark" aria-hidden="true">"◭"</span>
                    " cairn"
                </a>
                <span class="topbar-note">"durable workflows"</span>
                <a class="topbar-action" href="/">"+ New workflow"</a>
            </header>
            <Sidebar/>
            <main class="main">{children()}</main>
        </div>
    }
}
