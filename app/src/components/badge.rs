//! Status badges.

use leptos::prelude::*;

/// A coloured pill with a status word (`running`, `failed`, ...).
#[component]
pub fn Badge(#[prop(into)] status: Signal<&'static str>) -> impl IntoView {
    view! { <span class=move || format!("badge badge-{}", status.get())>{move || status.get()}</span> }
}
