//! The cairn web monitor.
//!
//! One set of views serves both halves of the page: with the `ssr` feature the server renders
//! them to HTML, with `hydrate` the same components are compiled to WASM and take over that
//! HTML in the browser. Anything the browser computes about a workflow comes from the `cairn`
//! crate, so the browser and the server can never disagree on what a spec or an event means.
//!
//! # Layout
//! - [`shell`]: the HTML document around the app (server only).
//! - [`App`]: router and the workspace layout every page shares.
//! - `layout`: the sidebar + main panel frame.
//! - `pages`: one module per page.
//! - `components`: reusable pieces (sidebar, start form, graph, badges).
//! - `data`: where views read from: the store during SSR, the JSON API in the browser.
//! - `live`: the browser's EventSource wrapper; `workspace`: the live sidebar state.
//! - `time`: the ticking clock and human-friendly times.

#![recursion_limit = "512"]

mod components;
pub mod data;
mod layout;
mod live;
mod pages;
mod time;
mod workspace;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::{
    Lazy, ParamSegment, StaticSegment,
    components::{Route, Router, Routes},
};

/// The HTML document the server wraps around [`App`]: head, hydration scripts, body.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <link rel="icon" href="/favicon.ico"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The whole application: the workspace layout around the routed page.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    time::provide_clock();
    workspace::Workspace::provide();

    view! {
        <Stylesheet id="leptos" href="/pkg/cairn.css"/>
        <Title text="cairn"/>
        <Router>
            <layout::Workspace>
                <Routes fallback=pages::NotFound>
                    <Route path=StaticSegment("") view={Lazy::<pages::Home>::new()}/>
                    <Route path=(StaticSegment("workflows"), ParamSegment("id")) view={Lazy::<pages::WorkflowPage>::new()}/>
                </Routes>
            </layout::Workspace>
        </Router>
    }
}

/// Browser entry point: take over the server-rendered HTML.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    // Asynchronous hydration: the page being hydrated may live in a WASM chunk still on its way.
    wasm_bindgen_futures::spawn_local(async {
        let Some(body) = leptos::prelude::document().body() else {
            return;
        };
        let owner = leptos::mount::hydrate_from_async(body, App).await;
        owner.forget();
        pages::after_hydration();
    });
}
