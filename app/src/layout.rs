//! The workspace frame every page shares: a header, the live "Workflows" sidebar and the
//! main panel.

use leptos::prelude::*;

use crate::{components::Sidebar, nav::use_nav};

/// The sidebar + main panel frame around a page.
#[component]
pub fn Workspace(children: Children) -> impl IntoView {
    let nav = use_nav();
    // Links to the monitor's pages change the page in place (see `nav`).
    let on_click = move |ev: leptos::ev::MouseEvent| {
        #[cfg(feature = "hydrate")]
        nav.follow_link(&ev);
        #[cfg(not(feature = "hydrate"))]
        let _ = (ev, nav);
    };
    view! {
        // `true` once the WASM half has taken over the page, set by `pages::after_hydration`.
        <div class="workspace" data-hydrated="false" on:click=on_click>
            <header class="topbar">
                <a class="brand" href="/">
                    <span class="brand-mark" aria-hidden="true">"◭"</span>
                    " cairn"
                </a>
                <span class="topbar-note">"durable workflows"</span>
                <a class="topbar-action" href="/">"+ New workflow"</a>
                <crate::viewer::ViewerBadge/>
            </header>
            <Sidebar/>
            <main class="main">{children()}</main>
        </div>
    }
}
