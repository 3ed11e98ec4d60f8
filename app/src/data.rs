//! Where the monitor's data comes from.
//!
//! During server rendering the views read the store directly through [`WorkspaceData`],
//! which the server provides as context, so the first paint already shows real workflows.
//! In the browser the same functions call the JSON API. Either way the result is a
//! `cairn` type, and anything live is folded on top with `WorkflowState::apply`.

use cairn::{EventRecord, WorkflowState, WorkflowSummary};
use leptos::prelude::Resource;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The workspace list and the log position it reflects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WorkspaceSnapshot {
    /// Newest workflows first.
    pub workflows: Vec<WorkflowSummary>,
    /// Follow the live feed after this event id.
    pub last_event_id: i64,
}

/// Reads JSON text as a `T`, by way of a `serde_json::Value`.
///
/// Everything the browser reads goes through here: answers, stream frames and (through
/// [`JsonViaValue`]) the data a page was rendered with. Serde compiles a reader per type *and*
/// per source it reads from; with one source each type's reader is in the WASM once.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    T::deserialize(serde_json::from_str::<serde_json::Value>(text)?)
}

/// How a resource's value travels from the server to the browser with the page: JSON,
/// read back with [`decode`].
pub struct JsonViaValue;

impl<T: Serialize> codee::Encoder<T> for JsonViaValue {
    type Error = serde_json::Error;
    type Encoded = String;

    fn encode(value: &T) -> Result<String, serde_json::Error> {
        serde_json::to_string(value)
    }
}

impl<T: DeserializeOwned> codee::Decoder<T> for JsonViaValue {
    type Error = serde_json::Error;
    type Encoded = str;

    fn decode(text: &str) -> Result<T, serde_json::Error> {
        decode(text)
    }
}

/// A view's data, loaded once: on the server while rendering (and sent with the page), in the
/// browser when the view is created after the page is live.
pub fn load_once<T, Fut>(
    load: impl Fn() -> Fut + Send + Sync + 'static,
) -> Resource<T, JsonViaValue>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    Resource::new_with_options(|| (), move |()| load(), false)
}

/// What the server gives the views to read during server rendering.
#[cfg(feature = "ssr")]
pub trait WorkspaceData: Send + Sync + 'static {
    /// The newest workflows and the log position they reflect.
    fn workspace(&self) -> BoxFuture<Result<WorkspaceSnapshot, String>>;
    /// One workflow's state, `None` if unknown.
    fn workflow(&self, id: String) -> BoxFuture<Result<Option<WorkflowState>, String>>;
    /// The roles a spec may use.
    fn roles(&self) -> Vec<String>;
}

/// A boxed, sendable future (the server's store calls).
#[cfg(feature = "ssr")]
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The server's data source, as provided in context.
#[cfg(feature = "ssr")]
pub type DataSource = std::sync::Arc<dyn WorkspaceData>;

#[cfg(feature = "ssr")]
fn source() -> Result<DataSource, String> {
    leptos::prelude::use_context::<DataSource>().ok_or_else(|| "no data source".to_string())
}

/// The workspace list.
pub async fn load_workspace() -> Result<WorkspaceSnapshot, String> {
    #[cfg(feature = "ssr")]
    {
        source()?.workspace().await
    }
    #[cfg(not(feature = "ssr"))]
    {
        #[derive(Deserialize)]
        struct Page {
            workflows: Vec<WorkflowSummary>,
        }
        let page: Page = send(get_json("/api/workflows?limit=200")).await?;
        let last_event_id = page
            .workflows
            .iter()
            .map(|w| w.last_event_id)
            .max()
            .unwrap_or(0);
        Ok(WorkspaceSnapshot {
            workflows: page.workflows,
            last_event_id,
        })
    }
}

/// One workflow's state.
pub async fn load_workflow(id: String) -> Result<Option<WorkflowState>, String> {
    #[cfg(feature = "ssr")]
    {
        source()?.workflow(id).await
    }
    #[cfg(not(feature = "ssr"))]
    {
        match send(get_json::<WorkflowState>(&format!("/api/workflows/{id}"))).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.starts_with("404") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The roles a spec may use.
pub async fn load_roles() -> Result<Vec<String>, String> {
    #[cfg(feature = "ssr")]
    {
        Ok(source()?.roles())
    }
    #[cfg(not(feature = "ssr"))]
    {
        #[derive(Deserialize)]
        struct Roles {
            roles: Vec<String>,
        }
        Ok(send(get_json::<Roles>("/api/roles")).await?.roles)
    }
}

/// A workflow's full event log (the history view; browser only).
pub async fn load_history(id: String) -> Result<Vec<EventRecord>, String> {
    #[cfg(feature = "hydrate")]
    {
        #[derive(Deserialize)]
        struct History {
            events: Vec<EventRecord>,
        }
        Ok(get_json::<History>(&format!("/api/workflows/{id}/history"))
            .await?
            .events)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = id;
        Err("history is loaded in the browser".into())
    }
}

/// Browser futures are not `Send`; resources need them to be. They never leave the
/// browser's one thread, which `SendWrapper` checks.
#[cfg(feature = "hydrate")]
fn send<F: std::future::Future>(f: F) -> send_wrapper::SendWrapper<F> {
    send_wrapper::SendWrapper::new(f)
}

#[cfg(all(not(feature = "hydrate"), not(feature = "ssr")))]
fn send<F: std::future::Future>(f: F) -> F {
    f
}

/// A `GET` of JSON; errors read `"STATUS message"`.
#[cfg(feature = "hydrate")]
async fn get_json<T: for<'de> Deserialize<'de>>(url: &str) -> Result<T, String> {
    let resp = gloo_net::http::Request::get(url)
        .send()
        .await
        .map_err(|e| format!("network error: {e}"))?;
    if !resp.ok() {
        return Err(format!("{} {}", resp.status(), error_message(resp).await));
    }
    let text = resp
        .text()
        .await
        .map_err(|e| format!("network error: {e}"))?;
    decode(&text).map_err(|e| format!("bad answer: {e}"))
}

#[cfg(all(not(feature = "hydrate"), not(feature = "ssr")))]
async fn get_json<T: for<'de> Deserialize<'de>>(_url: &str) -> Result<T, String> {
    Err("no transport in this build".into())
}

/// The `message` of an API error body, or the status text.
#[cfg(feature = "hydrate")]
async fn error_message(resp: gloo_net::http::Response) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    let status = resp.status_text();
    match resp.text().await.map(|t| decode::<Body>(&t)) {
        Ok(Ok(body)) => body.error.message,
        _ => status,
    }
}

/// What a `POST` answered: the problems of a refused spec, or a message.
#[derive(Clone, Debug, PartialEq)]
pub enum PostError {
    /// 422: every problem with its path.
    Invalid(Vec<(String, String)>),
    /// Anything else, said in words.
    Other(String),
}

/// `POST`s JSON (or nothing) and returns the answer's JSON.
#[cfg(feature = "hydrate")]
pub async fn post_json(
    url: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<serde_json::Value, PostError> {
    let mut req = gloo_net::http::Request::post(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(b)
            .map_err(|e| PostError::Other(e.to_string()))?,
        None => req.build().map_err(|e| PostError::Other(e.to_string()))?,
    };
    let resp = req
        .send()
        .await
        .map_err(|e| PostError::Other(format!("network error: {e}")))?;
    let status = resp.status();
    let value: serde_json::Value = match resp.text().await {
        Ok(text) => decode(&text).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let err = &value["error"];
    if status == 422 {
        let details = err["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|x| {
                        (
                            x["path"].as_str().unwrap_or("").to_string(),
                            x["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Err(PostError::Invalid(details));
    }
    Err(PostError::Other(
        err["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered {status}")),
    ))
}
