//! The workspace frame every page shares: a header, the live "Workflows" sidebar and the
//! main panel.

use leptos::prelude::*;

use crate::components::Sidebar;

/// The sidebar + main panel frame around a page.
#[component]
pub fn Workspace(children: Children) -> impl IntoView {
    view! {
        // `true` once the WASM half has taken over the page, set by `pages::after_hydration`.
        <div class="workspace" data-hydrated="false">
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
