//! What carries a token besides the browser: `serve` off loopback, the command line, MCP
//! clients, and the token commands themselves on Postgres.

use std::time::Duration;

use reqwest::{Method, header};
use serde_json::{Value, json};

use super::*;
use crate::helpers::{cairn, spawn_app};

#[tokio::test]
async fn serving_off_loopback_needs_a_token_first() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let serve = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--addr", "0.0.0.0:0", "--database-url", &url])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = serve().wait_with_output().unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("refusing to serve on 0.0.0.0"), "{said}");
    assert!(said.contains("cairn token create"), "{said}");

    let made = cairn(
        &[
            "token",
            "create",
            "--workspace",
            "ops",
            "--database-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let mut child = serve();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let checks = async {
        let line = line.expect("with a token it serves");
        let port = line.rsplit(':').next().unwrap().trim();
        let port: String = port.chars().take_while(char::is_ascii_digit).collect();
        let base = format!("http://127.0.0.1:{port}");
        let token = made.stdout.trim();
        // Off loopback the Host check is off; the cookie's cross-site check is what keeps
        // other sites' pages from writing with a signed-in browser.
        let client = no_redirects();
        let signed_in = client
            .post(format!("{base}/sign-in"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303);
        let cookie = signed_in.headers()[header::SET_COOKIE].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let write = |site: &'static str| {
            client
                .post(format!("{base}/api/workflows"))
                .header(header::COOKIE, &cookie)
                .header("sec-fetch-site", site)
                .json(&quick("from-a-page"))
                .send()
        };
        assert_eq!(write("cross-site").await.unwrap().status(), 403);
        assert_eq!(write("same-site").await.unwrap().status(), 403);
        assert_eq!(write("same-origin").await.unwrap().status(), 202);
        // A client that is not a browser, with its token in the header, is not affected.
        let resp = client
            .post(format!("{base}/api/workflows"))
            .bearer_auth(token)
            .header(header::ORIGIN, "http://elsewhere.example")
            .json(&quick("from-a-script"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), checks).await;
    child.kill().unwrap();
    child.wait().unwrap();
    outcome.expect("the checks finished");
}

/// Calls an MCP tool and waits for its answer (a tool error is an answer too).
async fn tool(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &'static str,
    args: Value,
) -> rmcp::model::CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    client
        .call_tool(rmcp::model::CallToolRequestParams::new(name).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{name} failed at the protocol level: {e}"))
}

#[tokio::test]
async fn the_command_line_and_mcp_clients_send_their_token() {
    use rmcp::{
        ServiceExt,
        transport::{
            StreamableHttpClientTransport,
            streamable_http_client::StreamableHttpClientTransportConfig,
        },
    };
    let app = spawn_app().await;
    let run = token(&app, "team-a", "agent", "run").await;
    let read = token(&app, "team-a", "viewer", "read").await;
    let other = token(&app, "team-b", "stranger", "run").await;
    wait_closed(&app).await;
    let server = [("CAIRN_SERVER", app.address.as_str())];

    let without = cairn(&["ls"], &server).await;
    assert_eq!(without.code, 1, "{}", without.stderr);
    assert!(without.stderr.contains("CAIRN_TOKEN"), "{}", without.stderr);
    let spec = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(spec.path(), quick("from-cli").to_string()).unwrap();
    let path = spec.path().to_str().unwrap();
    let with = [server[0], ("CAIRN_TOKEN", run.as_str())];
    let ran = cairn(&["run", path, "--follow"], &with).await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let listed = cairn(&["ls", "--json"], &with).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("from-cli"), "{}", listed.stdout);

    // MCP: the agent's token travels with each tool's API call.
    let connect = |t: String| {
        let uri = format!("{}/mcp", app.address);
        async move {
            ().serve(StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(uri).auth_header(t),
            ))
            .await
            .expect("MCP connects with a token")
        }
    };
    let agent = connect(run.clone()).await;
    let started = tool(
        &agent,
        "invoke_async",
        json!({ "workflow": { "role": "architect", "task": "t" } }),
    )
    .await;
    assert_ne!(started.is_error, Some(true), "{started:?}");
    let thread = started.structured_content.unwrap()["threadId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, wf) = get_as(&app, &run, &format!("/api/workflows/{thread}")).await;
    assert_eq!(status, 200);
    assert_eq!(wf["workspace"], "team-a");
    agent.cancel().await.unwrap();

    // A read token's agent may look but not start.
    let viewer = connect(read).await;
    let refused = tool(
        &viewer,
        "invoke_async",
        json!({ "workflow": { "role": "architect", "task": "t" } }),
    )
    .await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let text = format!("{:?}", refused.content);
    assert!(text.contains("run scope"), "{text}");
    let status = tool(&viewer, "invoke_status", json!({ "threadId": thread })).await;
    assert_ne!(status.is_error, Some(true), "{status:?}");
    viewer.cancel().await.unwrap();

    // Another workspace's agent cannot see it, nor find it in its monitor.
    let stranger = connect(other).await;
    let hidden = tool(&stranger, "invoke_status", json!({ "threadId": thread })).await;
    assert_eq!(hidden.is_error, Some(true), "{hidden:?}");
    assert!(
        format!("{:?}", hidden.content).contains("no workflow"),
        "{hidden:?}"
    );
    let cancel = tool(&stranger, "invoke_cancel", json!({ "threadId": thread })).await;
    assert_eq!(cancel.is_error, Some(true), "{cancel:?}");
    let monitor = tool(&stranger, "workflow_monitor", json!({})).await;
    assert!(
        !monitor
            .structured_content
            .unwrap()
            .to_string()
            .contains(&thread)
    );
    stranger.cancel().await.unwrap();

    // Without a token the MCP endpoint itself refuses.
    let resp = send(&app, Method::POST, "/mcp", None).await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn token_commands_work_on_postgres_too() {
    let db = crate::pg::TestDb::new().await;
    let url = db.url.clone();
    let made = cairn(
        &[
            "token",
            "create",
            "--workspace",
            "ops",
            "--label",
            "pg",
            "--scope",
            "admin",
            "--database-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let token = made.stdout.trim().to_string();
    let listed = cairn(&["token", "list", "--json", "--database-url", &url], &[]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let list: Value = serde_json::from_str(&listed.stdout).unwrap();
    let row = &list["tokens"][0];
    assert_eq!(
        (row["label"].as_str(), row["scope"].as_str()),
        (Some("pg"), Some("admin"))
    );
    assert!(!listed.stdout.contains(&token));
    let id = row["id"].as_str().unwrap();
    let revoked = cairn(&["token", "revoke", id, "--database-url", &url], &[]).await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let listed = cairn(&["token", "list", "--json", "--database-url", &url], &[]).await;
    assert!(listed.stdout.contains("\"revoked\""), "{}", listed.stdout);
    // Bad input is a message, not a stored row.
    for bad in [
        vec![
            "token",
            "create",
            "--workspace",
            "Not A Name",
            "--database-url",
            &url,
        ],
        vec![
            "token",
            "create",
            "--workspace",
            "ok",
            "--scope",
            "root",
            "--database-url",
            &url,
        ],
        vec![
            "token",
            "create",
            "--workspace",
            "ok",
            "--expires",
            "soon",
            "--database-url",
            &url,
        ],
    ] {
        let ran = cairn(&bad, &[]).await;
        assert_ne!(ran.code, 0, "{bad:?}");
        assert!(ran.stdout.is_empty(), "no token printed: {}", ran.stdout);
        assert!(!ran.stderr.is_empty());
    }
    let listed = cairn(&["token", "list", "--json", "--database-url", &url], &[]).await;
    let list: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 1);
}
