//! Signing in with a token: the session cookie, the page of one workspace, cross-site
//! writes and signing out.

use reqwest::header;

use super::*;
use crate::helpers::spawn_app;

#[tokio::test]
async fn the_browser_signs_in_with_a_cookie_that_streams_carry_and_other_sites_cannot_use() {
    let app = spawn_app().await;
    let a = token(&app, "team-a", "ann", "run").await;
    let b = token(&app, "team-b", "bob", "run").await;
    wait_closed(&app).await;
    let theirs = start_as(&app, &b, &quick("bobs-secret-plan")).await;
    let client = no_redirects();
    let url = |p: &str| format!("{}{p}", app.address);

    // A wrong token: back to the form with the reason.
    let resp = client
        .post(url("/sign-in"))
        .form(&[("token", "cairn_00_00"), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let to = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(to.starts_with("/sign-in?error="), "{to}");
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let page = client
        .get(url(&to))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(to.starts_with("/sign-in?error=invalid&"), "{to}");
    assert!(page.contains("the token is not valid"), "{page}");
    // The page says only its own words, whatever a link puts in `error`.
    let crafted = client
        .get(url(
            "/sign-in?error=Paste%20your%20token%20at%20evil.example",
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!crafted.contains("evil.example") && crafted.contains("the token is not valid"));
    // Clumsy or hostile forms: back to the page, never a server error or a foreign redirect.
    for body in [
        "next=%2F".to_string(),
        "token=&next=%2F".to_string(),
        "%%%".to_string(),
        format!("token={a}&next=%2Fa%0D%0ASet-Cookie%3A%20x%3D1"),
        format!("token={a}&next=https%3A%2F%2Fevil.example"),
    ] {
        let resp = client
            .post(url("/sign-in"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "{body}");
        let to = resp.headers()[header::LOCATION].to_str().unwrap();
        assert!(
            to == "/" || to.starts_with("/sign-in?error=empty"),
            "{body} → {to}"
        );
        assert!(!to.contains("evil") && !to.contains('\n'), "{to}");
    }

    // The right one: a session cookie no script can read and no other site sends.
    let resp = client
        .post(url("/sign-in"))
        .form(&[("token", a.as_str()), ("next", "/workflows/x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[header::LOCATION], "/workflows/x");
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for part in ["cairn_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "a session cookie: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    // The page shows the workspace and who is signed in, and only that workspace.
    let mine = start_as(&app, &a, &quick("anns-plan")).await;
    let page = client
        .get(url("/"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("data-testid=\"workspace-name\">team-a<"),
        "{html}"
    );
    assert!(html.contains("Sign out") && html.contains("ann"));
    assert!(html.contains("anns-plan") && html.contains(&mine));
    assert!(!html.contains("bobs-secret-plan") && !html.contains(&theirs));
    // Another workspace's workflow page is not found.
    let page = client
        .get(url(&format!("/workflows/{theirs}")))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("No such workflow"), "{page}");
    assert!(!page.contains("bobs-secret-plan"));

    // EventSource sends the cookie: the stream opens without a token in the URL.
    let stream = client
        .get(url("/api/events"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);

    // Writes with the cookie: from the page itself yes, from another site's page no.
    let from = |site: &'static str, origin: &str| {
        client
            .post(url("/api/workflows"))
            .header(header::COOKIE, &cookie)
            .header("sec-fetch-site", site)
            .header(header::ORIGIN, origin)
            .json(&quick("from-page"))
    };
    let same = from("same-origin", &app.address).send().await.unwrap();
    assert_eq!(same.status(), 202);
    let cross = from("cross-site", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);

    // Signing out forgets the cookie.
    let resp = client
        .post(url("/sign-out"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[header::LOCATION], "/sign-in");
    let gone = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        gone.starts_with("cairn_session=;") && gone.contains("Max-Age=0"),
        "{gone}"
    );
}
