//! Markup written as text, for the parts of the page that only display data.
//!
//! A Leptos view compiles into WASM code for every element it can build and hydrate. Parts
//! that show data and take no input (the graph, for one) are cheaper as a function from data
//! to markup, set with `inner_html`: the server renders the same text into the page, and the
//! browser replaces it when the data changes. Everything that goes into such markup passes
//! through [`escape`].

use std::fmt::Write;

/// `text` with `&`, `<`, `>`, `"` and `'` replaced by entities: safe inside an element or a
/// quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

/// Appends `text` to `out`, escaped as [`escape`] does.
pub fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Appends formatted text to `out` (writing to a `String` cannot fail).
pub fn push_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

/// Keeps an element's markup current: whenever `html` changes, the element `el` returns gets
/// it as its content. Keyboard focus inside survives the redraw: the element that had it is
/// found again by its `key` attribute (a link's `href`, a button's `data-event`) and focused.
/// Browser only; the server renders the first text with `inner_html`.
pub fn follow(
    el: impl Fn() -> Option<leptos::web_sys::Element> + 'static,
    html: impl Fn() -> String + 'static,
    key: &'static str,
) {
    #[cfg(feature = "hydrate")]
    leptos::prelude::Effect::new(move |shown: Option<String>| {
        let text = html();
        // The first run is hydration: the server's text is already there.
        if shown.is_some_and(|s| s != text)
            && let Some(el) = el()
        {
            replace_keeping_focus(&el, &text, key);
        }
        text
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = (el, html, key);
}

/// Sets `el`'s content to `html`, and focuses again the element with the same `key` attribute
/// as the one inside that had the focus.
#[cfg(feature = "hydrate")]
fn replace_keeping_focus(el: &web_sys::Element, html: &str, key: &str) {
    use wasm_bindgen::JsCast;
    let focused = leptos::prelude::document()
        .active_element()
        .filter(|f| el.contains(Some(f)))
        .and_then(|f| f.get_attribute(key));
    el.set_inner_html(html);
    let Some(value) = focused else { return };
    let found = el
        .query_selector_all(&format!("[{key}]"))
        .ok()
        .and_then(|all| {
            (0..all.length())
                .filter_map(|i| all.item(i)?.dyn_into::<web_sys::HtmlElement>().ok())
                .find(|e| e.get_attribute(key).as_deref() == Some(value.as_str()))
        });
    if let Some(e) = found {
        let _ = e.focus();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_become_entities() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("plain · text ✓"), "plain · text ✓");
    }
}
