//! The workspace frame every page shares: a header, the "Workflows" sidebar and the main panel.

use leptos::prelude::*;

/// The sidebar + main panel frame around a page.
///
/// The sidebar is the workspace monitor. It lists nothing until the engine and its live feed
/// exist; it says so plainly rather than showing fake entries.
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
            </header>
            <aside class="sidebar" aria-label="Workflows">
                <h2 class="sidebar-title">"Workflows"</h2>
                <p class="sidebar-empty" data-testid="sidebar-empty">
                    "No workflows yet."
                </p>
            </aside>
            <main class="main">{children()}</main>
        </div>
    }
}
