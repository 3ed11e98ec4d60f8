//! The page for an unknown path.

use leptos::prelude::*;

/// Shown for any path no route matches.
#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    {
        // Tell crawlers and scripts the truth, not a 200 with an error page.
        if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
            resp.set_status(http::StatusCode::NOT_FOUND);
        }
    }
    view! {
        <section class="panel">
            <h1>"Not found"</h1>
            <p>"There is no page here. " <a href="/">"Back to the workspace"</a></p>
        </section>
    }
}
