//! Tokens and workspaces end to end: tokens made with the real `cairn token` binary on the
//! server's own database, then every route family asked without one, with the wrong one, with
//! too small a scope and from another workspace.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cairn(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("CAIRN_TOKEN")
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("running cairn");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn db_url(app: &TestApp) -> String {
    format!("sqlite://{}", app.db_path.display())
}

/// Makes a token with `cairn token create` on the app's database; returns it.
async fn token(app: &TestApp, workspace: &str, label: &str, scope: &str) -> String {
    token_with(app, workspace, label, scope, &[]).await
}

async fn token_with(
    app: &TestApp,
    workspace: &str,
    label: &str,
    scope: &str,
    extra: &[&str],
) -> String {
    let url = db_url(app);
    let mut args = vec![
        "token",
        "create",
        "--workspace",
        workspace,
        "--label",
        label,
        "--scope",
        scope,
        "--database-url",
        &url,
    ];
    args.extend_from_slice(extra);
    let ran = cairn(&args, &[]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "the token alone on stdout: {:?}",
        ran.stdout
    );
    assert!(lines[0].starts_with("cairn_"), "{}", lines[0]);
    assert!(ran.stderr.contains("shown once"), "{}", ran.stderr);
    lines[0].to_string()
}

/// Waits until the server has noticed that tokens exist (it looks again within a second).
async fn wait_closed(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/api/workflows").await.status() != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "the server never asked for a token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = no_redirects().request(method.clone(), format!("{}{path}", app.address));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == Method::POST {
        req = req.json(&json!({}));
    }
    req.send().await.unwrap()
}

async fn start_as(app: &TestApp, token: &str, spec: &Value) -> String {
    let resp = app
        .client
        .post(format!("{}/api/workflows", app.address))
        .bearer_auth(token)
        .json(spec)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn slow() -> Value {
    json!({ "name": "slow", "steps": [
        { "id": "design", "role": "architect", "task": "think", "params": { "duration_ms": 60000 } }
    ]})
}

fn quick(name: &str) -> Value {
    json!({ "name": name, "steps": [
        { "id": "design", "role": "architect", "task": "think", "params": { "duration_ms": 10 } }
    ]})
}

/// Every route, as a method and a path; `ID` stands for a workflow's id.
fn every_route() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/api/workflows"),
        (Method::POST, "/api/workflows"),
        (Method::GET, "/api/workflows/ID"),
        (Method::GET, "/api/workflows/ID/history"),
        (Method::GET, "/api/workflows/ID/steps/design/output"),
        (Method::POST, "/api/workflows/ID/resume"),
        (Method::POST, "/api/workflows/ID/cancel"),
        (Method::POST, "/api/workflows/ID/steps/design/retry"),
        (Method::POST, "/api/workflows/ID/steps/design/retry-now"),
        (Method::POST, "/api/workflows/ID/steps/design/skip"),
        (Method::GET, "/api/workflows/ID/events"),
        (Method::GET, "/api/events"),
        (Method::GET, "/api/roles"),
        (Method::GET, "/api/openapi.json"),
        (Method::GET, "/api/nowhere"),
        (Method::POST, "/api/invoke/async"),
        (Method::GET, "/api/invoke-status/status/ID"),
        (Method::POST, "/api/invoke-status/status/ID"),
        (Method::POST, "/api/v1/execute-dag"),
        (Method::GET, "/api/invoke/stream/ID"),
        (Method::GET, "/api/v1/dag-executions/ID/events"),
        (Method::POST, "/mcp"),
        (Method::GET, "/metrics"),
    ]
}

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

/// Reads SSE frames from a response until `until` accepts one's data, or the deadline.
async fn frames_until(
    resp: reqwest::Response,
    deadline: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<String> {
    use futures::StreamExt;
    let mut seen = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let chunk = tokio::time::timeout_at(end, body.next()).await;
        let Ok(Some(Ok(chunk))) = chunk else {
            return seen;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            let done = until(&data);
            seen.push(data);
            if done {
                return seen;
            }
        }
    }
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

#[tokio::test]
async fn the_command_line_and_mcp_clients_send_their_token() {
    use rmcp::{
        ServiceExt,
        model::CallToolRequestParams,
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
    let started = agent
        .call_tool(
            CallToolRequestParams::new("invoke_async").with_arguments(
                json!({ "workflow": { "role": "architect", "task": "t" } })
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    assert_ne!(started.is_error, Some(true), "{started:?}");
    let thread = started.structured_content.unwrap()["threadId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, wf) = get_as(&app, &run, &format!("/api/workflows/{thread}")).await;
    assert_eq!(status, 200);
    assert_eq!(wf["workspace"], "team-a");
    assert_eq!(wf["workspace"], "team-a");
    agent.cancel().await.unwrap();

    // A read token's agent may look but not start.
    let viewer = connect(read).await;
    let refused = viewer
        .call_tool(
            CallToolRequestParams::new("invoke_async").with_arguments(
                json!({ "workflow": { "role": "architect", "task": "t" } })
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let text = format!("{:?}", refused.content);
    assert!(text.contains("run scope"), "{text}");
    let status = viewer
        .call_tool(
            CallToolRequestParams::new("invoke_status")
                .with_arguments(json!({ "threadId": thread }).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_ne!(status.is_error, Some(true), "{status:?}");
    viewer.cancel().await.unwrap();

    // Another workspace's agent cannot see it, nor find it in its monitor.
    let stranger = connect(other).await;
    let call = |name: &'static str, args: Value| {
        stranger.call_tool(
            CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone()),
        )
    };
    let hidden = call("invoke_status", json!({ "threadId": thread }))
        .await
        .unwrap();
    assert_eq!(hidden.is_error, Some(true), "{hidden:?}");
    assert!(
        format!("{:?}", hidden.content).contains("no workflow"),
        "{hidden:?}"
    );
    let cancel = call("invoke_cancel", json!({ "threadId": thread }))
        .await
        .unwrap();
    assert_eq!(cancel.is_error, Some(true), "{cancel:?}");
    let monitor = call("workflow_monitor", json!({})).await.unwrap();
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
