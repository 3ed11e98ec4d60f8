//! Which page the monitor shows, and moving between pages without a reload.
//!
//! The monitor has two pages and a not-found. A general router (leptos_router) cost the
//! browser 65 KB of gzipped WASM on every page, a quarter of the page budget, for that much,
//! so the path is read into a [`Page`] here instead: on the server from the request, in the
//! browser from `location`. A click on a link inside the workspace changes the page with
//! `history.pushState`, so the live sidebar, its stream and its scroll position stay; the
//! back and forward buttons work through `popstate`. Anything that is not one of the pages
//! (`/api/...`, a file, another site) is left to the browser.

use leptos::prelude::*;

/// A page of the monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    /// `/`: the workspace's landing page with the start form.
    Home,
    /// `/workflows/{id}`: one workflow, live.
    Workflow(String),
    /// Any other path.
    NotFound,
}

impl Page {
    /// The page a path (without query or fragment) shows. A trailing slash is allowed.
    pub fn from_path(path: &str) -> Page {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.is_empty() {
            return Page::Home;
        }
        match path.strip_prefix("/workflows/") {
            Some(id) if !id.is_empty() && !id.contains('/') => Page::Workflow(id.to_string()),
            _ => Page::NotFound,
        }
    }

    /// The page an `href` inside the workspace leads to, if it is one of ours: same origin
    /// (a path starting with one `/`), query and fragment ignored.
    pub fn from_href(href: &str) -> Option<Page> {
        if !href.starts_with('/') || href.starts_with("//") {
            return None;
        }
        let path = href.split(['?', '#']).next().unwrap_or(href);
        match Page::from_path(path) {
            Page::NotFound => None,
            page => Some(page),
        }
    }
}

/// The current page, in context.
#[derive(Clone, Copy)]
pub struct Nav {
    page: RwSignal<Page>,
}

impl Nav {
    /// Reads the current page from the request (server) or `location` (browser) and provides
    /// it; in the browser it also follows the back and forward buttons.
    pub fn provide() -> Nav {
        let nav = Nav {
            page: RwSignal::new(Page::from_path(&current_path())),
        };
        #[cfg(feature = "hydrate")]
        {
            let handle = window_event_listener(leptos::ev::popstate, move |_| {
                nav.page.set(Page::from_path(&current_path()));
            });
            on_cleanup(move || handle.remove());
        }
        provide_context(nav);
        nav
    }

    /// The page shown (tracked).
    pub fn page(&self) -> Page {
        self.page.get()
    }

    /// Whether `page` is the one shown (tracked).
    pub fn is(&self, page: &Page) -> bool {
        self.page.with(|p| p == page)
    }

    /// Shows the page at `href` and adds it to the browser's history. An `href` that is not
    /// one of the pages is loaded by the browser instead.
    pub fn go(&self, href: &str) {
        #[cfg(feature = "hydrate")]
        {
            let Some(page) = Page::from_href(href) else {
                let _ = window().location().assign(href);
                return;
            };
            if let Ok(history) = window().history() {
                let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(href));
            }
            if self.page.get_untracked() != page {
                self.page.set(page);
            }
            window().scroll_to_with_x_and_y(0.0, 0.0);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = href;
    }

    /// Takes over a click on a link to one of the pages (a plain left click, no modifier
    /// keys, no `target` or `download`): the page changes without a reload.
    #[cfg(feature = "hydrate")]
    pub fn follow_link(&self, ev: &leptos::ev::MouseEvent) {
        use wasm_bindgen::JsCast;

        if ev.default_prevented()
            || ev.button() != 0
            || ev.meta_key()
            || ev.ctrl_key()
            || ev.shift_key()
            || ev.alt_key()
        {
            return;
        }
        let Some(link) = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|el| el.closest("a[href]").ok().flatten())
        else {
            return;
        };
        if link.has_attribute("target") || link.has_attribute("download") {
            return;
        }
        let href = link.get_attribute("href").unwrap_or_default();
        if Page::from_href(&href).is_some() {
            ev.prevent_default();
            self.go(&href);
        }
    }
}

/// The page in context.
pub fn use_nav() -> Nav {
    use_context::<Nav>().unwrap_or_else(Nav::provide)
}

/// The path being shown: the request's on the server, `location.pathname` in the browser.
fn current_path() -> String {
    #[cfg(feature = "hydrate")]
    {
        window().location().pathname().unwrap_or_default()
    }
    #[cfg(all(not(feature = "hydrate"), feature = "ssr"))]
    {
        use_context::<http::request::Parts>()
            .map(|parts| parts.uri.path().to_string())
            .unwrap_or_default()
    }
    #[cfg(all(not(feature = "hydrate"), not(feature = "ssr")))]
    {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_pages() {
        assert_eq!(Page::from_path("/"), Page::Home);
        assert_eq!(Page::from_path(""), Page::Home);
        assert_eq!(
            Page::from_path("/workflows/wf_1"),
            Page::Workflow("wf_1".into())
        );
        assert_eq!(
            Page::from_path("/workflows/wf_1/"),
            Page::Workflow("wf_1".into())
        );
        assert_eq!(Page::from_path("/workflows/"), Page::NotFound);
        assert_eq!(Page::from_path("/workflows"), Page::NotFound);
        assert_eq!(Page::from_path("/workflows/a/b"), Page::NotFound);
        assert_eq!(Page::from_path("/no/such/page"), Page::NotFound);
    }

    #[test]
    fn only_links_to_our_pages_are_taken_over() {
        assert_eq!(Page::from_href("/"), Some(Page::Home));
        assert_eq!(
            Page::from_href("/workflows/wf_2?x=1#step-a"),
            Some(Page::Workflow("wf_2".into()))
        );
        assert_eq!(Page::from_href("/api/workflows"), None);
        assert_eq!(Page::from_href("/pkg/cairn.wasm"), None);
        assert_eq!(Page::from_href("//example.com/"), None);
        assert_eq!(Page::from_href("https://example.com/"), None);
        assert_eq!(Page::from_href("#step-a"), None);
    }
}
