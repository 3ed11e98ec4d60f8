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
