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

#[tokio::test]
async fn the_browser_bundle_is_sent_precompressed_when_the_browser_accepts_it() {
    let app = spawn_app().await;
    let pkg = app.db_path.parent().unwrap().join("site").join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("cairn.wasm"), b"plain wasm").unwrap();
    std::fs::write(pkg.join("cairn.wasm.br"), b"brotli wasm").unwrap();
    std::fs::write(pkg.join("cairn.wasm.gz"), b"gzip wasm").unwrap();

    let fetch = |encoding: &'static str| {
        let req = app.client.get(format!("{}/pkg/cairn.wasm", app.address));
        let req = if encoding.is_empty() {
            req
        } else {
            req.header("accept-encoding", encoding)
        };
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let enc = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            let ty = r.headers()["content-type"].to_str().unwrap().to_string();
            (enc, ty, r.text().await.unwrap())
        }
    };
    let (enc, ty, body) = fetch("gzip, deflate, br").await;
    assert_eq!(enc.as_deref(), Some("br"));
    assert_eq!(
        ty, "application/wasm",
        "the type is the file's, not the encoding's"
    );
    assert_eq!(body, "brotli wasm");
    assert_eq!(fetch("gzip").await.2, "gzip wasm");
    let (enc, _, body) = fetch("").await;
    assert_eq!((enc, body.as_str()), (None, "plain wasm"));

    // A file that is not there is a 404, not the page shell.
    let r = app.get("/pkg/nothing.js").await;
    assert_eq!(r.status(), 404);
}
