//! The cairn web monitor.
//!
//! One set of views serves both halves of the page: with the `ssr` feature the server renders
//! them to HTML, with `hydrate` the same components are compiled to WASM and take over that
//! HTML in the browser. Anything the browser computes about a workflow comes from the `cairn`
//! crate, so the browser and the server can never disagree on what a spec or an event means.
//!
//! # Layout
//! - [`shell`]: the HTML document around the app (server only).
//! - [`App`]: the workspace layout every page shares, around the page shown.
//! - `layout`: the sidebar + main panel frame.
//! - `nav`: which page is shown, and moving between pages without a reload.
//! - `pages`: one module per page, and the switch between them.
//! - `components`: reusable pieces (sidebar, start form, graph, badges).
//! - `data`: where views read from: the store during SSR, the JSON API in the browser.
//! - `live`: the browser's EventSource wrapper; `workspace`: the live sidebar state.
//! - `time`: the ticking clock and human-friendly times.

#![recursion_limit = "512"]

mod components;
pub mod data;
mod html;
mod layout;
mod live;
pub mod nav;
mod pages;
#[cfg(feature = "ssr")]
pub mod sign_in;
mod time;
pub mod viewer;
mod workspace;

use leptos::prelude::*;

/// The HTML document the server wraps around [`App`]: head, hydration scripts, body.
///
/// The title and the stylesheet never change, so they are plain tags here rather than
/// `leptos_meta` components in the app, which would put that crate in the browser's WASM.
/// `MetaTags` stays: it is where the server names the page's WASM chunk for preloading.
#[cfg(feature = "ssr")]
pub fn shell(options: LeptosOptions) -> impl IntoView {
    use leptos_meta::MetaTags;

    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <title>"cairn"</title>
                <link rel="stylesheet" href="/pkg/cairn.css"/>
                <link rel="icon" href="/favicon.ico"/>
                {viewer::current().map(|v| view! {
                    <meta name=viewer::WORKSPACE_META content=v.workspace/>
                    {v.label.map(|l| view! { <meta name=viewer::LABEL_META content=l/> })}
                })}
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

/// The whole application: the workspace layout around the page the path names.
#[component]
pub fn App() -> impl IntoView {
    time::provide_clock();
    workspace::Workspace::provide();
    let nav = nav::Nav::provide();

    view! {
        <layout::Workspace>{move || pages::view(nav.page())}</layout::Workspace>
    }
}

/// Browser entry point: take over the server-rendered HTML.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    wasm_bindgen_futures::spawn_local(async {
        // The page's view lives in a WASM chunk: fetch it first, so that hydration takes over
        // the server's HTML in one pass.
        let path = leptos::prelude::window()
            .location()
            .pathname()
            .unwrap_or_default();
        pages::preload(&nav::Page::from_path(&path)).await;
        leptos::mount::hydrate_body(App);
        pages::after_hydration();
    });
}
