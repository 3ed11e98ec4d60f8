//! One module per page, and the switch between them.

mod history;
mod home;
mod not_found;
mod step_card;
mod workflow;

use leptos::prelude::*;

pub use not_found::NotFound;

use crate::nav::Page;

/// The view of `page`. The two real pages are lazily loaded WASM chunks: rendering one waits
/// for its chunk (at once on the server, where nothing is split, and in a browser that has
/// fetched it already).
pub fn view(page: Page) -> AnyView {
    match page {
        Page::Home => later(home::home_view()),
        Page::Workflow(id) => later(workflow::workflow_page_view(id)),
        Page::NotFound => view! { <NotFound/> }.into_any(),
    }
}

/// A view that is ready when `fut` is: in place if it already is.
#[cfg(feature = "hydrate")]
fn later(fut: impl Future<Output = AnyView> + 'static) -> AnyView {
    // Browser futures are not `Send`; this one never leaves the browser's one thread.
    Suspend::new(send_wrapper::SendWrapper::new(fut)).into_any()
}

#[cfg(not(feature = "hydrate"))]
fn later(fut: impl Future<Output = AnyView> + Send + 'static) -> AnyView {
    Suspend::new(fut).into_any()
}

/// Fetches the WASM chunk `page` needs (browser only). Hydration waits for it, so the page's
/// server-rendered HTML is taken over at once, never replaced.
#[cfg(feature = "hydrate")]
pub async fn preload(page: &Page) {
    match page {
        Page::Home => home::__preload_home_view().await,
        Page::Workflow(_) => workflow::__preload_workflow_page_view().await,
        Page::NotFound => {}
    }
}

/// Browser only, once the page is hydrated: says so on the workspace element
/// (`data-hydrated="true"`, which tests wait for) and as the `cairn:hydrated` mark in the
/// Performance timeline, then fetches the other pages' views in the background (and the YAML
/// reader) so that nothing the page does later waits for a chunk, or misses one when the
/// server has been upgraded meanwhile.
#[cfg(feature = "hydrate")]
pub fn after_hydration() {
    if let Some(el) = document().query_selector(".workspace").ok().flatten() {
        let _ = el.set_attribute("data-hydrated", "true");
    }
    if let Some(p) = window().performance() {
        let _ = p.mark("cairn:hydrated");
    }
    leptos::task::spawn_local(async {
        workflow::__preload_workflow_page_view().await;
        home::__preload_home_view().await;
        crate::components::preload_yaml_reader();
    });
}
