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
/// as the one inside that had the focus. If it is gone or disabled (a control that did its
/// work), the focus goes to the region around it instead (see [`focus_home`]).
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
    if let Some(e) = &found {
        let _ = e.focus();
    }
    let kept = leptos::prelude::document()
        .active_element()
        .zip(found)
        .is_some_and(|(a, f)| a.is_same_node(Some(&f)));
    if !kept {
        focus_home(el);
    }
}

/// Focuses the nearest region around `el` that takes the focus from script
/// (`tabindex="-1"`: a step card, the workflow's header), so that the keyboard focus stays
/// where the person was rather than falling back to the start of the page.
#[cfg(feature = "hydrate")]
fn focus_home(el: &web_sys::Element) {
    use wasm_bindgen::JsCast;
    if let Some(home) = el
        .closest(r#"[tabindex="-1"]"#)
        .ok()
        .flatten()
        .and_then(|h| h.dyn_into::<web_sys::HtmlElement>().ok())
    {
        let _ = home.focus();
    }
}

/// Markup with parts that change on their own: an element's content, an attribute's value,
/// or whether a boolean attribute is there. Everything else is the shell, which changes only
/// when the page's structure does (another list of steps, say).
///
/// [`follow_markup`] redraws the whole element when the shell changes and otherwise patches
/// only the parts that did: a step's running timer ticking every second touches that one
/// text, not the log someone is reading or the skip form someone is typing in.
#[derive(Clone, Debug, PartialEq)]
pub struct Markup {
    /// The text between the parts: `shell[i]` comes before `parts[i]`, one more at the end.
    shell: Vec<String>,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    /// The content of the element whose open tag the part ends.
    Content(String),
    /// The value of an attribute (unescaped; escaped when written into markup).
    Attr(&'static str, String),
    /// A boolean attribute (`hidden`, `open`, `disabled`), there or not.
    Flag(&'static str, bool),
}

impl Default for Markup {
    fn default() -> Self {
        Self::new()
    }
}

impl Markup {
    /// Empty markup.
    pub fn new() -> Self {
        Self {
            shell: vec![String::new()],
            parts: vec![],
        }
    }

    /// The shell text being written, to append fixed markup or escaped values to.
    pub fn text(&mut self) -> &mut String {
        self.shell
            .last_mut()
            .expect("a shell segment is always open")
    }

    /// Appends fixed markup to the shell.
    pub fn push(&mut self, markup: &str) {
        self.text().push_str(markup);
    }

    /// Ends the open tag being written (`<div class="x"`) with `>` and `html` as its content,
    /// a part of its own. The caller closes the element.
    pub fn content(&mut self, html: String) {
        self.mark(">");
        self.parts.push(Part::Content(html));
    }

    /// Adds attribute `name="value"` to the open tag being written, a part of its own.
    pub fn attr(&mut self, name: &'static str, value: String) {
        self.mark("");
        push_fmt(self.text(), format_args!(" {name}=\""));
        self.parts.push(Part::Attr(name, value));
        self.shell.push("\"".into());
    }

    /// Adds boolean attribute `name` to the open tag being written when `on`, a part of its own.
    pub fn flag(&mut self, name: &'static str, on: bool) {
        self.mark("");
        self.parts.push(Part::Flag(name, on));
        self.shell.push(String::new());
    }

    /// Marks the open tag with the next part's number (`data-p3`), ends the segment with
    /// `end`, and opens the next one (for content parts).
    fn mark(&mut self, end: &str) {
        let i = self.parts.len();
        push_fmt(self.text(), format_args!(" data-p{i}{end}"));
        if !end.is_empty() {
            self.shell.push(String::new());
        }
    }

    /// The numbers of the parts that differ from `shown`'s, or `None` when the shells
    /// differ (then everything is to be redrawn).
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    pub fn changes_from(&self, shown: &Markup) -> Option<Vec<usize>> {
        (self.shell == shown.shell).then(|| {
            (0..self.parts.len())
                .filter(|&i| self.parts[i] != shown.parts[i])
                .collect()
        })
    }

    /// The whole markup.
    pub fn html(&self) -> String {
        let mut out = String::with_capacity(self.shell.iter().map(String::len).sum::<usize>() * 2);
        for (i, shell) in self.shell.iter().enumerate() {
            out.push_str(shell);
            match self.parts.get(i) {
                Some(Part::Content(html)) => out.push_str(html),
                Some(Part::Attr(_, value)) => push_escaped(&mut out, value),
                Some(Part::Flag(name, true)) => push_fmt(&mut out, format_args!(" {name}")),
                Some(Part::Flag(_, false)) | None => {}
            }
        }
        out
    }
}

/// Keeps an element's markup current, as [`follow`] does, but by parts: when only parts of
/// `markup` changed, only those are written into the page (see [`Markup`]). Keyboard focus
/// inside a redrawn part or element is kept as [`follow`] keeps it, by the `key` attribute.
/// Browser only; the server renders the first markup with `inner_html`.
pub fn follow_markup(
    el: impl Fn() -> Option<leptos::web_sys::Element> + 'static,
    markup: impl Fn() -> Markup + 'static,
    key: &'static str,
) {
    #[cfg(feature = "hydrate")]
    leptos::prelude::Effect::new(move |shown: Option<Markup>| {
        let next = markup();
        // The first run is hydration: the server's markup is already there.
        if let Some(shown) = shown
            && shown != next
            && let Some(el) = el()
        {
            patch(&el, &shown, &next, key);
        }
        next
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = (el, markup, key);
}

/// Brings `el`, showing `shown`, to `next`: the parts that differ, or everything if the shell does.
#[cfg(feature = "hydrate")]
fn patch(el: &web_sys::Element, shown: &Markup, next: &Markup, key: &str) {
    let Some(changed) = next.changes_from(shown) else {
        replace_keeping_focus(el, &next.html(), key);
        return;
    };
    for i in changed {
        let Ok(Some(target)) = el.query_selector(&format!("[data-p{i}]")) else {
            continue;
        };
        match &next.parts[i] {
            Part::Content(html) => replace_keeping_focus(&target, html, key),
            Part::Attr(name, value) => {
                let _ = target.set_attribute(name, value);
            }
            Part::Flag(name, on) => {
                let focused = leptos::prelude::document()
                    .active_element()
                    .is_some_and(|f| f.is_same_node(Some(&target)));
                let _ = target.toggle_attribute_with_force(name, *on);
                // A button disabled under the keyboard focus loses it: keep it nearby.
                if focused && *name == "disabled" && *on {
                    focus_home(&target);
                }
            }
        }
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

    fn card(status: &str, open: bool, body: &str) -> Markup {
        let mut m = Markup::new();
        m.push(r#"<article class="step""#);
        m.attr("data-status", status.into());
        m.push("><details");
        m.flag("open", open);
        m.content(body.into());
        m.push("</details></article>");
        m
    }

    #[test]
    fn markup_numbers_its_parts_and_escapes_attribute_values() {
        assert_eq!(
            card("a\"b", true, "<pre>x</pre>").html(),
            r#"<article class="step" data-p0 data-status="a&quot;b"><details data-p1 open data-p2><pre>x</pre></details></article>"#
        );
        assert_eq!(
            card("done", false, "").html(),
            r#"<article class="step" data-p0 data-status="done"><details data-p1 data-p2></details></article>"#
        );
    }

    #[test]
    fn default_markup_is_empty_and_can_be_written_to() {
        let mut m = Markup::default();
        assert_eq!(m.html(), "");
        m.push("<p");
        m.content("x".into());
        assert_eq!(m.html(), "<p data-p0>x");
    }

    #[test]
    fn a_change_of_parts_keeps_the_shell() {
        let a = card("running", false, "1");
        assert_eq!(
            card("completed", false, "1").changes_from(&a),
            Some(vec![0])
        );
        assert_eq!(
            card("running", true, "2").changes_from(&a),
            Some(vec![1, 2])
        );
        assert_eq!(a.changes_from(&a), Some(vec![]));
        let mut c = card("running", false, "1");
        c.push("<p></p>");
        assert_eq!(c.changes_from(&a), None);
    }
}
