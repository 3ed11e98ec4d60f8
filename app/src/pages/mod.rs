//! One module per page.

mod home;
mod not_found;
mod workflow;

pub use home::Home;
pub use not_found::NotFound;
pub use workflow::WorkflowPage;

/// Browser only, once the page (with its lazily loaded view) is hydrated: says so on the
/// workspace element (`data-hydrated="true"`, which tests wait for) and as the
/// `cairn:hydrated` mark in the Performance timeline, then fetches the other pages' views in
/// the background (and the YAML reader) so that nothing the page does later waits for a chunk,
/// or misses one when the server has been upgraded meanwhile.
#[cfg(feature = "hydrate")]
pub fn after_hydration() {
    use leptos_router::LazyRoute;

    if let Some(el) = leptos::prelude::document()
        .query_selector(".workspace")
        .ok()
        .flatten()
    {
        let _ = el.set_attribute("data-hydrated", "true");
    }
    if let Some(p) = web_sys::window().and_then(|w| w.performance()) {
        let _ = p.mark("cairn:hydrated");
    }
    leptos::task::spawn_local(async {
        <WorkflowPage as LazyRoute>::preload().await;
        <Home as LazyRoute>::preload().await;
        crate::components::preload_yaml_reader();
    });
}
