//! Every route family with no token, a bad one, too small a scope, another workspace's, and
//! the write limit per token.

use std::time::Duration;

use reqwest::{Method, header};
use serde_json::{Value, json};

use super::*;
use crate::helpers::{cairn, spawn_app, spawn_app_with};

#[tokio::test]
async fn once_a_token_exists_every_route_family_needs_one() {
    let app = spawn_app().await;
    // Open at first (a fresh checkout), in workspace `default`.
    let id = app.start(slow()).await;
    let wf: Value = app
        .get(&format!("/api/workflows/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(wf["workspace"], "default");

    let admin = token(&app, "team-a", "ops", "admin").await;
    wait_closed(&app).await;

    for (method, path) in every_route() {
        let path = path.replace("ID", &id);
        for bad in [None, Some("cairn_00_11"), Some("not-a-token")] {
            let resp = send(&app, method.clone(), &path, bad).await;
            assert_eq!(resp.status(), 401, "{method} {path} with {bad:?}");
            let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"cairn\""),
                "{challenge}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(
                body["error"]["code"], "unauthorized",
                "{method} {path}: {body}"
            );
        }
        // A token that is almost right is refused as well: compared whole.
        let mut forged = admin.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        let resp = send(&app, method.clone(), &path, Some(&forged)).await;
        assert_eq!(resp.status(), 401, "{method} {path} with a forged token");
    }
    // A header that is not `Bearer …`.
    let resp = app
        .client
        .get(format!("{}/api/workflows", app.address))
        .header(header::AUTHORIZATION, format!("Basic {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Probes still get the health check, and it gives nothing away.
    let health = app.get("/api/health").await;
    assert_eq!(health.status(), 200);
    let text = health.text().await.unwrap();
    for secret in [admin.as_str(), app.db_path.to_str().unwrap(), "team-a"] {
        assert!(!text.contains(secret), "{text}");
    }

    // The pages send a browser to sign in, and remember where it was going.
    for path in ["/", "/workflows/x", "/no-such-page"] {
        let resp = no_redirects()
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "{path}");
        let to = resp.headers()[header::LOCATION].to_str().unwrap();
        assert!(to.starts_with("/sign-in?next="), "{to}");
    }
    // The sign-in page itself and the assets it uses are open.
    assert_eq!(app.get("/sign-in").await.status(), 200);

    // With the token, the same routes answer.
    let (status, list) = get_as(&app, &admin, "/api/workflows").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["workflows"],
        json!([]),
        "team-a sees none of default's"
    );
    let resp = send(&app, Method::GET, "/metrics", Some(&admin)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn scopes_limit_what_a_token_does_and_expired_or_revoked_tokens_stop_working() {
    let app = spawn_app().await;
    let read = token(&app, "team-a", "dashboard", "read").await;
    let run = token(&app, "team-a", "ci", "run").await;
    let admin = token(&app, "team-a", "ops", "admin").await;
    wait_closed(&app).await;

    let id = start_as(&app, &run, &quick("by-ci")).await;
    // read: reads, follows, but does not start or control.
    let (status, _) = get_as(&app, &read, &format!("/api/workflows/{id}")).await;
    assert_eq!(status, 200);
    for (method, path) in [
        (Method::POST, "/api/workflows".to_string()),
        (Method::POST, format!("/api/workflows/{id}/cancel")),
        (Method::POST, "/api/invoke/async".to_string()),
        (Method::GET, "/metrics".to_string()),
    ] {
        let resp = send(&app, method.clone(), &path, Some(&read)).await;
        assert_eq!(resp.status(), 403, "{method} {path}");
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "insufficient_scope");
    }
    // The old status route answers POST as a read.
    let resp = send(
        &app,
        Method::POST,
        &format!("/api/invoke-status/status/{id}"),
        Some(&read),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // run: no metrics; admin: metrics.
    assert_eq!(
        send(&app, Method::GET, "/metrics", Some(&run))
            .await
            .status(),
        403
    );
    assert_eq!(
        send(&app, Method::GET, "/metrics", Some(&admin))
            .await
            .status(),
        200
    );

    // An expired token.
    let brief = token_with(&app, "team-a", "brief", "run", &["--expires", "1s"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = send(&app, Method::GET, "/api/workflows", Some(&brief)).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // A revoked token: refused from its next request on.
    let url = db_url(&app);
    let listed = cairn(&["token", "list", "--json", "--database-url", &url], &[]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for t in [&read, &run, &admin, &brief] {
        assert!(
            !listed.stdout.contains(t.as_str()),
            "list never shows a token"
        );
    }
    let list: Value = serde_json::from_str(&listed.stdout).unwrap();
    let ci = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "ci")
        .unwrap();
    assert_eq!(ci["state"], "active");
    assert_eq!(ci["scope"], "run");
    let brief_row = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "brief");
    assert_eq!(brief_row.unwrap()["state"], "expired");
    let ci_id = ci["id"].as_str().unwrap();
    let revoked = cairn(&["token", "revoke", ci_id, "--database-url", &url], &[]).await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let resp = send(&app, Method::GET, "/api/workflows", Some(&run)).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let unknown = cairn(&["token", "revoke", "nope", "--database-url", &url], &[]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no token"), "{}", unknown.stderr);
    // The table says so too.
    let table = cairn(&["token", "list", "--database-url", &url], &[]).await;
    assert!(table.stdout.contains("revoked"), "{}", table.stdout);
}

#[tokio::test]
async fn another_workspace_gets_404_everywhere_and_never_sees_the_workflow() {
    let app = spawn_app().await;
    let a = token(&app, "team-a", "ann", "run").await;
    let b = token(&app, "team-b", "bob", "run").await;
    wait_closed(&app).await;

    let w = start_as(&app, &a, &slow()).await;
    // Every route that names a workflow answers B exactly as for one that does not exist.
    for (method, path) in every_route() {
        if !path.contains("ID") {
            continue;
        }
        let theirs = send(&app, method.clone(), &path.replace("ID", &w), Some(&b)).await;
        let none = send(
            &app,
            method.clone(),
            &path.replace("ID", "wf_none"),
            Some(&b),
        )
        .await;
        assert_eq!(theirs.status(), 404, "{method} {path}");
        assert_eq!(none.status(), 404, "{method} {path}");
        let theirs: Value = theirs.json().await.unwrap();
        let none: Value = none.json().await.unwrap();
        assert_eq!(
            theirs.to_string().replace(&w, "wf_none"),
            none.to_string(),
            "{method} {path}: indistinguishable"
        );
    }
    // A sees it; B's list and workspace snapshot do not.
    let (_, mine) = get_as(&app, &a, "/api/workflows").await;
    assert_eq!(mine["workflows"][0]["id"], w.as_str());
    let (_, theirs) = get_as(&app, &b, "/api/workflows").await;
    assert_eq!(theirs["workflows"], json!([]));

    // B's live stream: the snapshot is B's, and of the two workflows started while it is
    // open only B's arrives.
    let stream = app
        .client
        .get(format!("{}/api/events", app.address))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let x = start_as(&app, &a, &quick("a-again")).await;
    let y = start_as(&app, &b, &quick("b-own")).await;
    let frames = frames_until(stream, Duration::from_secs(15), |data| {
        data.contains(&y) && data.contains("workflow.completed")
    })
    .await;
    let all = frames.join("\n");
    assert!(all.contains(&y), "B's own workflow arrives: {all}");
    assert!(
        !all.contains(&w) && !all.contains(&x),
        "nothing of A's: {all}"
    );
    assert!(!all.contains("a-again"), "{all}");

    // Controls record who asked: the token's label.
    let resp = app
        .client
        .post(format!("{}/api/workflows/{w}/cancel", app.address))
        .bearer_auth(&a)
        .json(&json!({ "reason": "enough" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, history) = get_as(&app, &a, &format!("/api/workflows/{w}/history")).await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "workflow.created");
    assert_eq!(events[0]["by"], "ann");
    assert_eq!(events[0]["workspace"], "team-a");
    let cancelled = events
        .iter()
        .find(|e| e["type"] == "workflow.cancelled")
        .unwrap();
    assert_eq!(cancelled["by"], "ann");

    // The same Idempotency-Key in two workspaces names two workflows.
    let mut ids = Vec::new();
    for t in [&a, &b] {
        let resp = app
            .client
            .post(format!("{}/api/workflows", app.address))
            .bearer_auth(t)
            .header("idempotency-key", "nightly-1")
            .json(&quick("nightly"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1]);

    // The compatible start puts the workflow in the caller's workspace too.
    let resp = app
        .client
        .post(format!("{}/api/invoke/async", app.address))
        .bearer_auth(&b)
        .json(&json!({ "workflow": { "role": "architect", "task": "t" } }))
        .send()
        .await
        .unwrap();
    let thread: Value = resp.json().await.unwrap();
    let thread = thread["threadId"].as_str().unwrap();
    let (status, _) = get_as(&app, &a, &format!("/api/workflows/{thread}")).await;
    assert_eq!(status, 404);
    let (status, wf) = get_as(&app, &b, &format!("/api/workflows/{thread}")).await;
    assert_eq!(status, 200);
    assert_eq!(wf["workspace"], "team-b");
}

#[tokio::test]
async fn writes_are_limited_per_token_whatever_address_they_come_from() {
    let app = spawn_app_with("[http]\nwrites_per_second = 1\nwrite_burst = 2\n").await;
    let ann = token(&app, "team-a", "ann", "run").await;
    let bob = token(&app, "team-a", "bob", "run").await;
    wait_closed(&app).await;
    // Each request from a loopback address of its choosing.
    let post = |t: &str, from: [u8; 4]| {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(from))
            .build()
            .unwrap();
        client
            .post(format!("{}/api/workflows", app.address))
            .bearer_auth(t)
            .json(&quick("q"))
            .send()
    };
    let refusal = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
        let body: Value = resp.json().await.unwrap();
        body["error"]["message"].as_str().unwrap().to_string()
    };
    assert_eq!(post(&ann, [127, 0, 0, 1]).await.unwrap().status(), 202);
    assert_eq!(post(&ann, [127, 0, 0, 1]).await.unwrap().status(), 202);
    let third = refusal(post(&ann, [127, 0, 0, 1]).await.unwrap()).await;
    assert!(third.contains("this token"), "{third}");
    // The token's limit follows it to another address.
    let moved = refusal(post(&ann, [127, 0, 0, 2]).await.unwrap()).await;
    assert!(moved.contains("this token"), "{moved}");
    // Another token from a fresh address writes; from the busy address it is held back.
    assert_eq!(post(&bob, [127, 0, 0, 3]).await.unwrap().status(), 202);
    let busy = refusal(post(&bob, [127, 0, 0, 1]).await.unwrap()).await;
    assert!(busy.contains("this address"), "{busy}");
}

#[tokio::test]
async fn an_open_stream_ends_when_its_token_is_revoked() {
    use futures::StreamExt;
    let app = spawn_app_with("[sse]\nheartbeat_ms = 200\n").await;
    let t = token(&app, "team-a", "wall-screen", "read").await;
    let keep = token(&app, "team-a", "other", "read").await;
    wait_closed(&app).await;
    let open = |t: String| {
        app.client
            .get(format!("{}/api/events", app.address))
            .bearer_auth(t)
            .send()
    };
    let doomed = open(t.clone()).await.unwrap();
    let kept = open(keep).await.unwrap();
    assert_eq!(doomed.status(), 200);
    let url = db_url(&app);
    let listed = cairn(&["token", "list", "--json", "--database-url", &url], &[]).await;
    let list: Value = serde_json::from_str(&listed.stdout).unwrap();
    let id = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == "wall-screen")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cairn(&["token", "revoke", &id, "--database-url", &url], &[])
            .await
            .code,
        0
    );
    // The revoked token's stream ends (its body runs out) within a few heartbeats.
    let mut body = doomed.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a revoked token kept going");
    // The other token's stream is still open: it still gets heartbeats.
    let mut other = kept.bytes_stream();
    let beat = tokio::time::timeout(Duration::from_secs(5), other.next()).await;
    assert!(matches!(beat, Ok(Some(Ok(_)))), "{beat:?}");
}
