use crate::helpers::spawn_app;

#[tokio::test]
async fn the_workspace_page_is_rendered_on_the_server_with_the_sidebar() {
    let app = spawn_app().await;
    let resp = app.get("/").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("Workflows"), "no sidebar in {html}");
    assert!(html.contains("Workspace"), "no main panel in {html}");
    // The spec checker's verdict is computed during server rendering too.
    assert!(html.contains("ship-login"), "no spec verdict in {html}");
    // The hydration scripts point at the bundle cargo-leptos builds.
    assert!(html.contains("/pkg/cairn"), "no bundle reference in {html}");
}

#[tokio::test]
async fn an_unknown_page_is_an_html_404() {
    let app = spawn_app().await;
    let resp = app.get("/no/such/page").await;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("Not found"));
}
