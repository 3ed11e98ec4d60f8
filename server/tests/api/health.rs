use sqlx::{Connection, SqliteConnection};

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_reports_ok_with_the_sqlite_store_version_and_instance() {
    let app = spawn_app().await;
    let resp = app.get("/api/health").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], "sqlite");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        body["instance"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn two_servers_report_different_instance_ids() {
    let (a, b) = (spawn_app().await, spawn_app().await);
    let ia: serde_json::Value = a.get("/api/health").await.json().await.unwrap();
    let ib: serde_json::Value = b.get("/api/health").await.json().await.unwrap();
    assert_ne!(ia["instance"], ib["instance"]);
}

#[tokio::test]
async fn starting_creates_and_migrates_the_database_file() {
    let app = spawn_app().await;
    assert!(app.db_path.exists());
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", app.db_path.display()))
        .await
        .unwrap();
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let names: Vec<_> = tables.into_iter().map(|(n,)| n).collect();
    for t in ["events", "idempotency_keys", "leases", "steps", "workflows"] {
        assert!(
            names.iter().any(|n| n == t),
            "missing table {t} in {names:?}"
        );
    }
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn an_unknown_api_route_is_a_json_404() {
    let app = spawn_app().await;
    let resp = app.get("/api/workflowz").await;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_graceful_stop_returns_cleanly_and_frees_the_port() {
    let app = spawn_app().await;
    let address = app.address.clone();
    app.stop().await.expect("clean stop");
    let err = reqwest::get(format!("{address}/api/health")).await;
    assert!(err.is_err(), "server still answering after stop");
}

#[tokio::test]
async fn the_openapi_document_describes_the_json_api() {
    let app = crate::helpers::spawn_app().await;
    let resp = app.get("/api/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/workflows",
        "/api/workflows/{id}",
        "/api/workflows/{id}/history",
        "/api/workflows/{id}/events",
        "/api/workflows/{id}/cancel",
        "/api/workflows/{id}/steps/{step}/skip",
        "/api/events",
        "/api/invoke/async",
        "/api/v1/execute-dag",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    let start = &paths["/api/workflows"]["post"];
    assert!(start["responses"]["422"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    // Clients generated from it send a bearer token; the health check needs none.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    assert_eq!(
        paths["/api/health"]["get"]["security"],
        serde_json::json!([{}])
    );
}
