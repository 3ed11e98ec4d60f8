//! The sign-in page: a form that takes a token. Rendered by the server alone (it has nothing
//! live, so no WASM): a token posted here is checked and kept in an HttpOnly cookie, which the
//! monitor's requests and streams then carry.

use leptos::prelude::*;

/// The sign-in page as HTML. `error` is why the last attempt failed, `next` where a sign-in
/// goes on to, `open` whether this server needs no token at all.
pub fn page(error: Option<&str>, next: &str, open: bool) -> String {
    let error = error.map(str::to_string);
    let next = next.to_string();
    let body = view! {
        <main class="sign-in">
            <h1><span class="brand-mark" aria-hidden="true">"◭"</span>" cairn"</h1>
            {if open {
                view! {
                    <p>"This server needs no token: it is open on this machine only."</p>
                    <p><a href="/">"Go to the workspace"</a></p>
                }
                    .into_any()
            } else {
                view! {
                    <form method="post" action="/sign-in">
                        <label for="token">"Token"</label>
                        <input id="token" name="token" type="password" autocomplete="current-password"
                            required=true autofocus=true placeholder="cairn_…"/>
                        <input type="hidden" name="next" value=next/>
                        {error.map(|e| view! { <p class="sign-in-error" role="alert">{e}</p> })}
                        <button type="submit">"Sign in"</button>
                    </form>
                    <p class="sign-in-help">
                        "Ask whoever runs this server for a token, or make one there with "
                        <code>"cairn token create --workspace NAME --label YOU"</code>
                    </p>
                }
                    .into_any()
            }}
        </main>
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <meta name=\"color-scheme\" content=\"light dark\"/><title>Sign in · cairn</title>\
         <link rel=\"stylesheet\" href=\"/pkg/cairn.css\"/></head><body>{}</body></html>",
        body.to_html()
    )
}
