//! Who is looking at the page: the workspace it shows and, on a server with tokens, the
//! token's label and a way to sign out.
//!
//! The server knows it from the request and writes it into the page's `<head>` (see
//! [`crate::shell`]); the browser reads it back from there, so both halves render the same
//! top bar.

use leptos::prelude::*;

/// The signed-in viewer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Viewer {
    /// The workspace every list and stream on the page is of.
    pub workspace: String,
    /// The token's label; `None` on a server without tokens (nobody signs in there).
    pub label: Option<String>,
}

/// The `<meta>` names the viewer travels in.
pub(crate) const WORKSPACE_META: &str = "cairn-workspace";
pub(crate) const LABEL_META: &str = "cairn-signed-in-as";

/// The viewer of this page, if the server named one.
pub fn current() -> Option<Viewer> {
    #[cfg(feature = "hydrate")]
    {
        let meta = |name: &str| {
            document()
                .query_selector(&format!("meta[name=\"{name}\"]"))
                .ok()
                .flatten()
                .and_then(|m| m.get_attribute("content"))
        };
        meta(WORKSPACE_META).map(|workspace| Viewer {
            workspace,
            label: meta(LABEL_META),
        })
    }
    #[cfg(not(feature = "hydrate"))]
    {
        use_context::<Viewer>()
    }
}

/// The workspace's name in the top bar, and who is signed in with a sign-out button.
#[component]
pub fn ViewerBadge() -> impl IntoView {
    current().map(|v| {
        let workspace = v.workspace;
        view! {
            <span class="topbar-workspace" title="This page shows this workspace's workflows only">
                "workspace " <strong data-testid="workspace-name">{workspace}</strong>
            </span>
            {v.label.map(|label| view! {
                <form class="topbar-signout" method="post" action="/sign-out">
                    <span class="topbar-who">{label}</span>
                    <button type="submit">"Sign out"</button>
                </form>
            })}
        }
    })
}
